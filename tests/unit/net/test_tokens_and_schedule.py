"""Storage tokens, token scopes and schedule arithmetic."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from rekindle.cloud import schedule
from rekindle.core.errors import UsageError
from rekindle.net import tokens
from rekindle.net.tokens import StorageClaims, TokenError
from rekindle.storagenode.scope import allowed

KEY = Ed25519PrivateKey.generate()


def _claims(**over: object) -> StorageClaims:
    base = {
        "org": 1,
        "server": 2,
        "job": 3,
        "access": "backup",
        "snapshot": "",
        "iat": 1000,
        "exp": 2000,
    }
    return StorageClaims(**{**base, **over})  # type: ignore[arg-type]


@given(org=st.integers(0, 2**40), job=st.integers(0, 2**40), snap=st.text(max_size=70))
def test_token_round_trip(org: int, job: int, snap: str) -> None:
    c = _claims(org=org, job=job, access="restore", snapshot=snap)
    assert tokens.verify(KEY.public_key(), tokens.sign(KEY, c), now=1500) == c


def _flip_first_byte(b64: str) -> str:
    # Flip decoded bits: editing the last base64 characters may only touch padding bits.
    raw = bytearray(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
    raw[0] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_every_tampered_token_is_refused() -> None:
    tok = tokens.sign(KEY, _claims())
    head, body, sig = tok.split(".")
    forged_body = tokens.sign(KEY, _claims(org=9)).split(".")[1]
    for bad in (
        f"{head}.{forged_body}.{sig}",
        f"{head}.{body}.{_flip_first_byte(sig)}",
        f"rkt2.{body}.{sig}",
        "",
        "a.b",
        tok + ".x",
    ):
        with pytest.raises(TokenError):
            tokens.verify(KEY.public_key(), bad, now=1500)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(KEY.public_key(), tok, now=2000 + tokens.LEEWAY_S + 1)
    with pytest.raises(TokenError, match="not valid yet"):
        tokens.verify(KEY.public_key(), tok, now=1000 - tokens.LEEWAY_S - 1)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(TokenError, match="signature"):
        tokens.verify(other.public_key(), tok, now=1500)


def test_scopes() -> None:
    b = _claims(access="backup")
    r = _claims(access="restore", snapshot="ab" * 32)
    assert allowed(b, "write", "data/00/" + "00" * 32)
    assert not allowed(b, "read", "data/00/" + "00" * 32)
    assert not allowed(b, "list", "data/")
    assert not allowed(b, "delete", "snapshots/x")
    assert allowed(b, "read", "index/x") and allowed(b, "list", "index/")
    granted = "tree/00/" + "00" * 32
    assert allowed(r, "read", granted, lambda name: name == granted)
    assert not allowed(r, "read", "tree/11/" + "11" * 32, lambda name: name == granted)
    assert not allowed(r, "read", granted)  # no grant, no packs
    assert not allowed(r, "list", "data/", lambda _name: True)
    assert allowed(r, "read", "snapshots/" + "ab" * 32)
    assert not allowed(r, "read", "snapshots/" + "cd" * 32)
    assert not allowed(r, "write", "data/00/x") and not allowed(r, "delete", "data/00/x")
    c = _claims(access="catalog")
    assert allowed(c, "read", granted) and allowed(c, "list", "snapshots/")
    assert not allowed(c, "write", "data/00/" + "00" * 32) and not allowed(c, "delete", "locks/x")
    # tier records: every reader needs them (which packs are cold); only maintenance writes
    for reader in (b, r, c):
        assert allowed(reader, "read", "tier/x") and allowed(reader, "list", "tier/")
        for op in ("write", "replace", "delete"):
            assert not allowed(reader, op, "tier/x"), (reader.access, op)
    m = _claims(access="maintenance")
    for name in (granted, "index/x", "garbage/x", "tier/x", "locks/x"):
        assert allowed(m, "write", name) and allowed(m, "delete", name), name
    assert allowed(m, "delete", "snapshots/x") and not allowed(m, "write", "snapshots/x")
    assert allowed(m, "read", "snapshots/x") and allowed(m, "list", "data/")
    for name in ("config", "keys/x"):
        assert not allowed(m, "write", name) and not allowed(m, "delete", name)
        assert not allowed(m, "replace", name)
    assert not allowed(m, "replace", granted) and allowed(m, "replace", "locks/x")


def test_schedule_days_and_next_fire() -> None:
    assert schedule.parse_days("mon-fri") == [0, 1, 2, 3, 4]
    assert schedule.parse_days("sat-mon") == [0, 5, 6]
    assert schedule.parse_days("daily") == list(range(7))
    with pytest.raises(UsageError):
        schedule.parse_days("someday")
    with pytest.raises(UsageError):
        schedule.parse_time("7pm")
    fri_evening = datetime(2026, 3, 6, 23, 0, tzinfo=UTC)  # a Friday
    assert schedule.next_fire("mon-fri", "22:00", fri_evening) == datetime(
        2026, 3, 9, 22, 0, tzinfo=UTC
    )
    exactly = datetime(2026, 3, 9, 22, 0, tzinfo=UTC)
    assert schedule.next_fire("mon", "22:00", exactly) == datetime(2026, 3, 16, 22, 0, tzinfo=UTC)
    assert schedule.window_end(exactly, 0) is None
    assert schedule.window_end(exactly, 8) == datetime(2026, 3, 10, 6, 0, tzinfo=UTC)
