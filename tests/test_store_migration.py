"""Schema migrations on stores an older refreshd wrote: the columns nothing ever wrote
(`sources.next_retry`, `own_keys.expires`, `own_keys.next_extension_at`) are dropped by
migration 8, and every row around them stays."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from refreshd.core.levels import Way
from refreshd.store import MIGRATIONS, Source, Store, _statements

DATA = Path(__file__).parent / "data"
DEAD = {"sources": {"next_retry"}, "own_keys": {"expires", "next_extension_at"}}
FPR = "C" * 40


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def schema_7(path: Path) -> None:
    """A store as refreshd wrote it at schema 7, with a source and an own key in it."""
    db = sqlite3.connect(path)
    for version in range(1, 8):
        for statement in _statements(MIGRATIONS[version]):
            db.execute(statement)
    db.execute(
        "INSERT INTO sources(url, kind, address, fingerprint, etag, last_fetch, last_status, "
        "failures, next_retry) VALUES ('https://example.org/k', 'wkd', 'a@example.org', ?, "
        "'\"e1\"', '2026-01-01T00:00:00+00:00', '200', 2, NULL)",
        (FPR,),
    )
    db.execute(
        "INSERT INTO own_keys(fingerprint, address, expires, next_extension_at, last_upload, seed) "
        "VALUES (?, 'me@example.org', NULL, NULL, '2026-01-02T00:00:00+00:00', 42)",
        (FPR,),
    )
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()


def test_a_schema_7_store_loses_the_dead_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "refreshd.sqlite3"
    schema_7(path)
    store = Store(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == 8
        for table, dead in DEAD.items():
            assert not columns(store.db, table) & dead, table
        (source,) = store.sources_of(FPR)
        assert (source.url, source.kind, source.etag, source.failures) == (
            "https://example.org/k",
            "wkd",
            '"e1"',
            2,
        )
        own = store.own_key(FPR)
        assert own is not None
        assert (own["address"], own["seed"], own["last_upload"]) == (
            "me@example.org",
            42,
            "2026-01-02T00:00:00+00:00",
        )
        store.put_source(Source("https://example.org/k2", Way.VKS, None, FPR))
        assert len(store.sources_of(FPR)) == 2
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()


def test_the_first_version_store_in_tests_data_reaches_the_current_schema(tmp_path: Path) -> None:
    """tests/data/store-v1-consensus.sqlite3 was written at schema 1 (see
    tests/test_validation_ladder.py); every migration runs on it in turn."""
    path = tmp_path / "refreshd.sqlite3"
    shutil.copy(DATA / "store-v1-consensus.sqlite3", path)
    before = sqlite3.connect(path)
    registered = before.execute("SELECT address, fingerprint FROM addresses").fetchall()
    before.close()
    store = Store(path)
    try:
        for table, dead in DEAD.items():
            assert not columns(store.db, table) & dead, table
        after = store.db.execute("SELECT address, fingerprint FROM addresses").fetchall()
        assert [tuple(r) for r in after] == registered and registered
    finally:
        store.close()


def test_a_new_store_has_no_dead_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "refreshd.sqlite3")
    try:
        for table, dead in DEAD.items():
            assert columns(store.db, table), table
            assert not columns(store.db, table) & dead, table
    finally:
        store.close()
