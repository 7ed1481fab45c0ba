"""Invariants of the key manager over arbitrary sequences of observations, refreshes, uses and
verifications, with real keys (gpg-made expiry versions, sq, pgpy)."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.audit import AuditLog
from refreshd.config import Config, DaemonConfig
from refreshd.core.levels import Level, Way
from refreshd.core.rules import UseEvent
from refreshd.keymanager import Found, KeyManager
from refreshd.openpgp.keyview import read_key
from refreshd.store import Store
from tests.keyfactory import Workshop, pgpy_key

BOB = "bob@example.org"
FOUND = [
    Found(Way.WKD, Level.PROVIDER_TRUST, True),
    Found(Way.HKP, Level.WEAK_CHAIN, False),
    Found(Way.AUTOCRYPT, Level.WEAK_CHAIN, True),
    Found(Way.NICKNYM, Level.PROVIDER_ENDORSEMENT, True),
]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, bytes]:
    """Keys for one address: three successive versions of one gpg key (1y, then extended to 3y,
    then genuinely shortened to 200d by a newer self-signature), a transition key certified by
    it, unrelated keys, and a key without expiry."""
    ws = Workshop(tmp_path_factory.mktemp("pool"))
    try:
        g = ws.gpg
        fpr = g.generate(f"Bob <{BOB}>", expire="1y", at=NOW - timedelta(days=3))
        v1 = g.export(fpr)
        g.set_expire(fpr, "3y", at=NOW - timedelta(days=2))
        v2 = g.export(fpr)
        g.set_expire(fpr, "200d", at=NOW - timedelta(days=1))
        v3 = g.export(fpr)
        t_fpr = g.generate(f"Bob new <{BOB}>", expire="2y")
        g.certify(fpr, t_fpr, f"Bob new <{BOB}>")
        never = g.generate(f"Bob never <{BOB}>", expire="never")
        return {
            "v1": v1,
            "v2": v2,
            "v3": v3,
            "transition": g.export(t_fpr),
            "never": g.export(never),
            "pgpy": pgpy_key(f"P <{BOB}>", expires=timedelta(days=900)),
            "other": pgpy_key("Mallory <mallory@example.net>"),
        }
    finally:
        ws.close()


def test_replayed_older_copy_is_refused_and_newer_shorter_is_taken(tmp_path, pool):
    km = manager(tmp_path)
    km.consider(BOB, pool["v2"], FOUND[0])
    fpr = read_key(pool["v2"], datetime.now(UTC)).fingerprint
    assert km.store.described(BOB).facts.fingerprint == fpr
    long_expiry = km.store.described(BOB).facts.expires
    km.consider(BOB, pool["v1"], FOUND[0])  # replay: older self-signature, earlier expiry
    assert km.store.described(BOB).facts.expires == long_expiry
    lines = [json.loads(x) for x in km.audit.path.read_text().splitlines()]
    assert "key.expiry_refused" in [x["event"] for x in lines]
    km.consider(BOB, pool["v3"], FOUND[0])  # newer self-signature with a shorter expiry
    assert km.store.described(BOB).facts.expires < long_expiry
    assert (
        km.store.described(BOB).facts.expires
        == read_key(pool["v3"], datetime.now(UTC)).primary.expires
    )
    km.store.close()
    km.audit.close()


def manager(root: Path) -> KeyManager:
    cfg = Config(daemon=DaemonConfig(state_dir=root, socket=root / "s"))
    clock = Clock()
    return KeyManager(Store(cfg.database), AuditLog(cfg.audit_file), cfg, clock)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


op = st.one_of(
    st.tuples(
        st.just("observe"),
        st.sampled_from(["v1", "v2", "v3", "transition", "never", "pgpy", "other"]),
        st.integers(0, len(FOUND) - 1),
    ),
    st.tuples(st.just("use"), st.sampled_from([UseEvent.SENT_ENCRYPTED, UseEvent.RECEIVED_SIGNED])),
    st.tuples(st.just("verify"), st.sampled_from(["v1", "pgpy", "transition"])),
    st.tuples(st.just("time"), st.integers(1, 500)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(op, min_size=1, max_size=14))
def test_invariants_over_sequences(pool, ops):
    with tempfile.TemporaryDirectory(prefix="km-prop-") as root:
        run_sequence(pool, ops, Path(root))


def run_sequence(pool: dict[str, bytes], ops: list[tuple], root: Path) -> None:
    km = manager(root)
    try:
        newest_sig: dict[str, datetime] = {}
        for name, data in pool.items():
            newest_sig[read_key(data, datetime.now(UTC)).fingerprint + name] = read_key(
                data, datetime.now(UTC)
            ).newest_self_signature
        before = km.store.registration(BOB)
        for step in ops:
            if step[0] == "observe":
                km.consider(BOB, pool[step[1]], FOUND[step[2]])
            elif step[0] == "use" and before is not None:
                km.used(BOB, before.fingerprint, step[1])
            elif step[0] == "verify":
                km.verify(BOB, read_key(pool[step[1]], datetime.now(UTC)).fingerprint)
            elif step[0] == "time":
                km.clock.now += timedelta(days=step[1])
            after = km.store.registration(BOB)
            history = km.store.history(BOB)
            # at most one registered key per address
            assert sum(1 for k in history if k["status"] == "registered") <= (1 if after else 0)
            if after is not None and before is not None and after.fingerprint != before.fingerprint:
                last = [d for d in km.store.decisions(BOB) if d["decision"] != "rejected"][-1]
                assert last["decision"] == "replaced" and last["rule"] in {
                    "3.1",
                    "3.2",
                    "3.3",
                    "3.4",
                    "3.5",
                }
            same = (
                after is not None and before is not None and after.fingerprint == before.fingerprint
            )
            never = datetime.max.replace(tzinfo=UTC)
            if same and before.expires is not None and (after.expires or never) < before.expires:
                # only a strictly newer self-signature may shorten it: v3 is the only such copy
                stored = read_key(km.store.get_key(after.fingerprint), datetime.now(UTC))
                assert (
                    stored.newest_self_signature
                    >= read_key(pool["v3"], datetime.now(UTC)).newest_self_signature
                )
            # retired keys are never returned for sending
            answer = km.describe(BOB)
            retired = {k["fingerprint"] for k in history if k["status"] == "retired"}
            assert answer["fingerprint"] not in retired
            before = after
    finally:
        km.store.close()
        km.audit.close()
