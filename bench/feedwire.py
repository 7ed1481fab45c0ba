"""Bytes for a week of refreshes of N keys from a keyserver with Hockeypuck's prefix log.

Why: SKS and Hockeypuck send no validators, so a per-key refresh over HKP costs a full
download (case 1's SKS rows); a change feed tells which keys need a fetch at all. No
Hockeypuck can be installed here: tests/feed_servers.py serves HKP lookups and the prefix log
as Hockeypuck's handler does, behind the counting TCP forwarder (tests/world/tap.py).

refreshd runs in process with the update-feed task (refreshd/feeds.py) and the refresh path
(Refresher.refresh) on a simulated clock: the keys were all fetched at noon on day 0; on each
of the 7 following days the feed is asked once and a seventh of the keys take their turn (the
cycle's walk, one key at a time). Three runs on fresh stores:
- unchanged: no key changed on the server; wire bytes of the week (requests and answers);
- one changed: the same, with one key changed on day 2 and its turn on day 5 (it must be
  fetched, and only it);
- no feed: the server answers 404 for the prefix log; every key must be fetched once, in full.
The peer is `gpg --refresh-keys` on the same keys from case 1 (SKS, full refetch).
"""

from __future__ import annotations

import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from bench import keyset
from bench.engine import engine
from refreshd.clock import epoch_iso
from refreshd.core import levels
from refreshd.core.feeds import DAY, FeedKind
from refreshd.core.levels import Way
from refreshd.feeds import Feeds
from refreshd.keymanager import Found
from refreshd.net import hkp
from refreshd.refresher import Refresher
from refreshd.store import Source
from tests.feed_servers import FeedKeys, hockeypuck_handlers
from tests.net_servers import HttpServer
from tests.world.tap import Tap

HOST = "hkp.feed.example"
BASE = f"hkp://{HOST}"
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
DAYS = 7


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


def run(keys: list[keyset.BenchKey]) -> dict[str, Any]:
    out = {}
    for scenario in ("unchanged", "one-changed", "no-feed"):
        with tempfile.TemporaryDirectory(prefix="refreshd-bench-feed-") as tmp:
            out[scenario] = trio.run(_week, Path(tmp), keys, scenario)
    return out


async def _week(root: Path, keys: list[keyset.BenchKey], scenario: str) -> dict[str, Any]:
    clock = Clock()
    served = FeedKeys(lambda: clock.t)
    changed = keys[5 * len(keys) // DAYS].fingerprint if scenario == "one-changed" else None
    for k in keys:
        mtime = T0 + 2.5 * DAY if k.fingerprint == changed else T0 - 30 * DAY
        served.put(k.fingerprint, k.data, mtime)
    if scenario == "no-feed":
        served.feed_answer = 404
    async with trio.open_nursery() as nursery:
        server = await HttpServer(hockeypuck_handlers(served)).start(nursery)
        tap = Tap("127.0.0.1", server.port)
        eng = engine(
            root / "state",
            {
                "tor": {"mode": "off", "allow_clearnet": True},
                "network": {"connect_to": [f"{HOST}:11371:127.0.0.1:{tap.port}"]},
                "discovery": {"order": ["hkp"], "vks": [], "hkp": [BASE]},
            },
        )
        try:
            _register(eng, keys)
            fetcher = eng.retriever.fetcher
            feeds = Feeds(eng.store, fetcher, eng.cfg, eng.audit, clock=clock,
                          rng=random.Random(1))  # fmt: skip
            refresher = Refresher(eng.keys, eng.retriever, eng.cfg, eng.audit, clock=clock,
                                  rng=random.Random(2), feeds=feeds)  # fmt: skip
            feed = next(s for s in feeds.servers if s[0] is FeedKind.PREFIX_LOG)
            before = tap.counts()
            per_day = -(-len(keys) // DAYS)
            for day in range(1, DAYS + 1):
                clock.t = T0 + day * DAY
                await feeds.fetch(feed)
                for k in keys[(day - 1) * per_day : day * per_day]:
                    if not await refresher.refresh(k.fingerprint):
                        raise RuntimeError(f"refresh of {k.fingerprint} failed")
            after = tap.counts()
        finally:
            eng.close()
            tap.close()
            nursery.cancel_scope.cancel()
    return {
        "wire_bytes": (after.bytes_up - before.bytes_up) + (after.bytes_down - before.bytes_down),
        "connections": after.accepts - before.accepts,
        "feed_requests": len(served.feed_requests),
        "keys_fetched": len(served.lookups),
        "changed_key_fetched": changed in served.lookups if changed else None,
        "fetched_only_the_changed": served.lookups == [changed] if changed else None,
    }


def _register(eng: Any, keys: list[keyset.BenchKey]) -> None:
    """Every key registered from the server and fetched there at T0 (first contact's rows)."""
    level, positive = levels.for_source(Way.HKP)
    for k in keys:
        url = hkp.lookup(BASE, k.fingerprint).url
        decision = eng.keys.consider(k.address, k.data, Found(Way.HKP, level, positive,
                                                              k.fingerprint, url))  # fmt: skip
        if not decision.registers:
            raise RuntimeError(f"{k.fingerprint} was not registered: {decision.reason}")
        with eng.store.transaction():
            eng.store.put_source(Source(url, Way.HKP, None, k.fingerprint,
                                        last_fetch=epoch_iso(T0), last_status="200"))  # fmt: skip
