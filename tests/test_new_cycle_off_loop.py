"""A new cycle's O(N) work (the shuffle, packing and writing the order) runs in a worker thread;
the loop only makes the drawn state current, and a key refreshed out of turn is moved without
changing the other keys' order. In process, on a real store with registered keys."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from refreshd import refresher as refresher_module
from refreshd.audit import AuditLog
from refreshd.config import Config, DaemonConfig
from refreshd.core import schedule
from refreshd.keymanager import KeyManager
from refreshd.refresher import Refresher, pack
from refreshd.store import Store
from tests.test_store_counters import register

KEYS = 300


@pytest.fixture
def refresher(tmp_path: Path) -> Iterator[Refresher]:
    cfg = Config(daemon=DaemonConfig(state_dir=tmp_path, socket=tmp_path / "s"))
    store = Store(cfg.database)
    for i in range(KEYS):
        register(store, f"user{i}@example.org", f"{i:040X}")
    audit = AuditLog(cfg.audit_file)
    made = Refresher(KeyManager(store, audit, cfg), None, cfg, audit, rng=random.Random(5))  # type: ignore[arg-type]
    yield made
    store.close()
    audit.close()


def test_the_new_cycle_is_drawn_and_saved_off_the_loop(refresher, monkeypatch) -> None:
    where: dict[str, int] = {}
    draw, aside = schedule.next_cycle, refresher.store.put_refresh_order_aside

    def next_cycle(*args, **kwargs):
        where["draw"] = threading.get_ident()
        return draw(*args, **kwargs)

    def put_aside(cycle: int, packed: bytes) -> None:
        where["save"] = threading.get_ident()
        aside(cycle, packed)

    monkeypatch.setattr(refresher_module.schedule, "next_cycle", next_cycle)
    monkeypatch.setattr(refresher.store, "put_refresh_order_aside", put_aside)
    before = refresher.state
    refresher.state = replace(before, position=len(before.order))
    loop = threading.get_ident()
    trio.run(refresher._new_cycle)
    after = refresher.state
    assert where["draw"] != loop and where["save"] != loop
    assert after.cycle == before.cycle + 1 and after.position == 0
    assert sorted(after.order) == sorted(before.order) and len(after.order) == KEYS
    assert refresher.store.get_refresh_order(after.cycle) == pack(after.order)


def test_a_key_refreshed_out_of_turn_keeps_the_others_in_their_order(refresher) -> None:
    state = replace(refresher.state, position=10)
    key = state.order[200]
    moved = schedule.mark_done(state, key)
    rest = [k for k in state.order[10:] if k != key]
    assert moved.order[:10] == state.order[:10] and moved.order[10] == key
    assert list(moved.order[11:]) == rest and moved.position == 11
    assert type(moved.order) is type(state.order)
