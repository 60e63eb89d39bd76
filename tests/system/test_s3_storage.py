"""A storage node that keeps the repositories on S3 (moto in server mode on loopback): an
agent backs up through it and restores byte for byte, and the data is in the bucket."""

from __future__ import annotations

import os
from pathlib import Path

import boto3

from tests.conftest import _AWS_ENV
from tests.helpers import tree_differences
from tests.system.conftest import installation


def test_an_agent_backs_up_and_restores_through_a_node_on_s3(
    s3_endpoint: str, tmp_path: Path
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="node-bucket")
    env = {**_AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    with installation(("--backend", "s3://node-bucket/site-a"), env) as product:
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "big.bin").write_bytes(os.urandom(3_000_000))
        (src / "small.txt").write_text("on s3\n")
        (src / "link").symlink_to("sub/big.bin")
        sid = product.add_agent("s3host", src)
        job = product.backup_now("s3host")
        assert job["state"] == "succeeded", job

        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="node-bucket")
            for o in page.get("Contents", [])
        ]
        assert any(k.startswith("site-a/orgs/1/data/") for k in keys), keys
        assert any(k.startswith("site-a/orgs/1/snapshots/") for k in keys), keys
        assert not (product.root / "storage" / "orgs").exists()  # nothing on the node's disk

        rp = product.admin_json("restore-points", "--server", str(sid))[0]
        dest = tmp_path / "restored"
        restore = product.admin_json("restore", str(rp["id"]), "--to-path", str(dest))
        done = product.wait_job(restore["id"])
        assert done["state"] == "succeeded", done
        assert tree_differences(src, dest / str(src).lstrip("/")) == []
