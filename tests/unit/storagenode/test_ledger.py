"""The storage node's ledger: grants are checked before they are kept, and both grants and
lock owners outlive the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from rekindle.core.errors import UsageError
from rekindle.storagenode.ledger import NodeLedger, grant_digest

A = "data/aa/" + "aa" * 32
B = "tree/bb/" + "bb" * 32


def test_a_grant_is_kept_under_its_digest_and_survives_a_restart(tmp_path: Path) -> None:
    body = f"{A}\n{B}".encode()
    ledger = NodeLedger(tmp_path / "ledger.sqlite")
    ledger.add_grant(1, grant_digest(body), body)
    ledger.add_grant(1, grant_digest(body), body)  # registering again is harmless
    assert ledger.grant(1, grant_digest(body)) == {A, B}
    assert ledger.grant(2, grant_digest(body)) is None  # grants are per organization
    ledger.set_lock_owner(1, "locks/x", 7)
    again = NodeLedger(tmp_path / "ledger.sqlite")
    assert again.grant(1, grant_digest(body)) == {A, B}
    assert again.lock_owner(1, "locks/x") == 7
    again.forget_lock(1, "locks/x")
    assert again.lock_owner(1, "locks/x") is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"config", "not a pack name"),
        (b"data/aa/../../config", "not a pack name"),
        (f"{B}\n{A}".encode(), "sorted"),
        (f"{A}\n{A}".encode(), "sorted"),
        ("data/ää".encode(), "ASCII"),
    ],
)
def test_a_malformed_grant_is_refused(body: bytes, why: str) -> None:
    ledger = NodeLedger(None)
    with pytest.raises(UsageError, match=why):
        ledger.add_grant(1, grant_digest(body), body)


def test_a_grant_must_match_its_digest() -> None:
    ledger = NodeLedger(None)
    with pytest.raises(UsageError, match="digest"):
        ledger.add_grant(1, "00" * 32, A.encode())
    assert ledger.grant(1, "00" * 32) is None


def test_a_grant_is_forgotten_after_its_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    from rekindle.storagenode import ledger as mod

    now = [1_000_000.0]
    monkeypatch.setattr(mod.time, "time", lambda: now[0])
    ledger = NodeLedger(None)
    old, new = A.encode(), B.encode()
    ledger.add_grant(1, grant_digest(old), old)
    now[0] += mod.GRANT_LIFETIME_S + 1
    ledger.add_grant(1, grant_digest(new), new)  # registering sweeps the expired ones
    assert ledger.grant(1, grant_digest(new)) == {B}
    assert ledger.grant(1, grant_digest(old)) is None
