"""The defreeze's bookkeeping (the cloud side; the real thaw through a storage node is in
tests/system/test_defreeze.py): a cancel wins over a thaw that finishes at the same time, and
a defreeze that never finishes fails the restore with an alert instead of waiting forever."""

from __future__ import annotations

from datetime import timedelta

from rekindle.cloud.services import DEFREEZE_TIMEOUT
from tests.cloud.conftest import Cloud


class _Node:
    """What a storage node's archive tier answers to thaw requests."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.days = 0  # how long the last thaw asked the copies to stay

    def thaw(self, _url: str, _org: int, packs: list[str], days: int) -> dict[str, str]:
        self.days = days
        return dict.fromkeys(packs, self.state)


def _defreezing(cloud: Cloud) -> int:
    return cloud.defreezing_restore(cloud.enroll("cold"), thaw_estimate_s=3600)


def test_the_restore_is_queued_once_everything_is_back(cloud: Cloud) -> None:
    job_id = _defreezing(cloud)
    node = _Node("thawing")
    cloud.svc.catalog = node  # type: ignore[assignment]
    cloud.svc.defreeze_days = 3  # REKINDLE_CLOUD_DEFREEZE_DAYS
    assert cloud.svc.advance_defreezes() == 0
    assert node.days == 3
    row, _ = cloud.svc.get_job(cloud.admin, job_id)
    assert row.state == "defreezing" and row.progress == {"thawed": 0, "to_thaw": 2}
    node.state = "thawed"
    assert cloud.svc.advance_defreezes() == 1
    row, _ = cloud.svc.get_job(cloud.admin, job_id)
    assert row.state == "queued" and row.progress == {"thawed": 2, "to_thaw": 2}
    assert cloud.svc.advance_defreezes() == 0  # not watched any more
    (ready,) = [e for e in cloud.svc.list_events(cloud.admin) if e.kind == "defreeze.ready"]
    assert "the thawed copy stays 3 days" in ready.message


def test_a_cancelled_defreeze_is_not_queued(cloud: Cloud) -> None:
    job_id = _defreezing(cloud)
    cloud.svc.catalog = _Node("thawed")  # type: ignore[assignment]
    cloud.svc.cancel_job(cloud.admin, job_id)
    assert cloud.svc.advance_defreezes() == 0
    row, _ = cloud.svc.get_job(cloud.admin, job_id)
    assert row.state == "cancelled"


def test_a_defreeze_that_never_finishes_fails_with_an_alert(cloud: Cloud) -> None:
    job_id = _defreezing(cloud)
    cloud.svc.catalog = _Node("thawing")  # type: ignore[assignment]
    cloud.clock.advance((DEFREEZE_TIMEOUT - timedelta(minutes=1)).total_seconds())
    cloud.svc.advance_defreezes()
    assert cloud.svc.get_job(cloud.admin, job_id)[0].state == "defreezing"
    cloud.clock.advance(120)
    cloud.svc.advance_defreezes()
    row, _ = cloud.svc.get_job(cloud.admin, job_id)
    assert row.state == "failed" and "did not finish in time: 0 of 2 packs" in (row.error or "")
    (alert,) = cloud.svc.list_events(cloud.admin, alerts=True)
    assert alert.kind == "defreeze.failed" and "start the restore again" in alert.message
