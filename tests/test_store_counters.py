"""The store keeps what the refresh loop and `status` read per step as the rows change.

The counters, the registered-key ids and the change log are kept by triggers; whatever
sequence of registrations and replacements happens, they agree with a full recount, and
replaying the change log from the start gives the registered set. A store made by the first
schema version is migrated with the same answers.
"""

from __future__ import annotations

import sqlite3
from array import array
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.core.levels import Level, Way
from refreshd.core.rules import Decision, DecisionKind, Rule
from refreshd.store import MIGRATIONS, KeyFacts, Store, _statements

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FPRS = [c * 40 for c in "ABCDEF"]
ADDRS = [f"user{i}@example.org" for i in range(5)]


def recount(store: Store) -> dict[str, int]:
    db = store.db
    return {
        "keys": db.execute("SELECT count(DISTINCT fingerprint) FROM addresses").fetchone()[0],
        "addresses": db.execute("SELECT count(*) FROM addresses").fetchone()[0],
        "stored_keys": db.execute("SELECT count(*) FROM keys").fetchone()[0],
    }


def registered(store: Store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT DISTINCT fingerprint FROM addresses")}


def register(store: Store, address: str, fingerprint: str) -> None:
    with store.transaction():
        store.put_key(KeyFacts(fingerprint, None, False, True, None), b"key", NOW)
        kind = DecisionKind.REPLACED if store.registration(address) else DecisionKind.REGISTERED
        store.apply(
            address,
            Decision(kind, fingerprint, Level.WEAK_CHAIN, Way.VKS, False, Rule.FIRST_CONTACT, "r"),
            NOW,
        )


@settings(deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from(FPRS)), max_size=25))
def test_counters_ids_and_change_log_agree_with_a_recount(
    tmp_path_factory: object, moves: list[tuple[str, str]]
) -> None:
    store = Store(tmp_path_factory.mktemp("store") / "refreshd.sqlite3")  # type: ignore[attr-defined]
    try:
        replayed: set[int] = set()
        seq = 0
        for address, fingerprint in moves:
            register(store, address, fingerprint)
            assert store.counts() == recount(store)
            seq, added, removed = store.refresh_changes(seq)
            replayed = (replayed - removed) | added
            names = {store.refresh_fingerprint(i) for i in replayed}
            assert names == registered(store)
            ids = store.refresh_ids()
            # packed (no object per key) and ascending: a first cycle shuffles it as it is
            assert isinstance(ids, array) and ids.typecode == "q"
            assert list(ids) == sorted(set(ids))
            assert {store.refresh_fingerprint(i) for i in ids} == names
            assert set(store.registered_fingerprints()) == names
            for f in FPRS:
                assert store.is_registered(f) == (f in names)
                assert (store.refresh_id(f) is not None) == (f in names)
    finally:
        store.close()


def test_a_first_version_store_is_migrated_with_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "refreshd.sqlite3"
    db = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[1]):
        db.execute(statement)
    for i, fpr in enumerate(FPRS[:3]):
        db.execute("INSERT INTO keys VALUES (?, x'00', NULL, 0, NULL, 1, '2026-01-01')", (fpr,))
        for address in ADDRS[i : i + 2]:
            db.execute(
                "INSERT OR REPLACE INTO addresses VALUES (?, ?, 'weak-chain', 'vks', 0, 'x')",
                (address, fpr),
            )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.counts() == recount(store) == {"keys": 3, "addresses": 4, "stored_keys": 3}
        assert set(store.registered_fingerprints()) == registered(store)
        register(store, ADDRS[0], FPRS[5])
        assert store.counts() == recount(store)
        # user0 was FPRS[0]'s only address (user1 went to FPRS[1]): that key leaves
        _, added, removed = store.refresh_changes(0)
        assert {store.refresh_fingerprint(i) for i in added} == {FPRS[5]}
        assert {store.refresh_fingerprint(i) for i in removed} == {FPRS[0]}
    finally:
        store.close()
