"""Update feeds in the refresh path, in process, against loopback keyservers with feeds
(tests/feed_servers.py: Hockeypuck's prefix log, hagrid's update manifests) reached through
network.connect_to (tor.mode "off": the test-only direct path).

Three keys per server, all fetched the day before: one changed on the server that afternoon,
two did not. Once the feed for that day is in, the unchanged keys cost no request at their
turn and the changed one is fetched; with the feed absent or unreadable, every key is fetched
as before.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refreshd.audit import AuditLog
from refreshd.clock import epoch_iso
from refreshd.config import from_mapping
from refreshd.core.feeds import DAY, FeedKind
from refreshd.core.levels import Way, for_source
from refreshd.feeds import Feeds
from refreshd.keymanager import Found, KeyManager
from refreshd.net import hkp, vks
from refreshd.net.fetch import Fetcher
from refreshd.openpgp.keyview import read_key
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.store import Source, Store
from tests.feed_servers import FeedKeys, hagrid_handlers, hockeypuck_handlers
from tests.keyfactory import pgpy_key
from tests.net_servers import HttpServer, make_tls

HKP = "hkp://hkp.example.net"
VKS = "https://keys.example.org"
# the day the keys were last fetched: 2026-11-30, at noon UTC
FETCHED = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
DAY_BEFORE_MIDNIGHT = FETCHED - 12 * 3600


@pytest.fixture(scope="module")
def keyring() -> list[bytes]:
    return [pgpy_key(f"User {i} <user{i}@example.net>") for i in range(3)]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


class World:
    def __init__(self, tmp: Path, hkp_port: int, vks_port: int, ca_file: str, clock: Clock):
        self.cfg = from_mapping(
            {
                "daemon": {"state_dir": str(tmp / "state"), "socket": str(tmp / "s")},
                "tor": {"mode": "off", "allow_clearnet": True},
                "network": {
                    "ca_file": ca_file,
                    "timeout": "10s",
                    "connect_to": [
                        f"hkp.example.net:11371:127.0.0.1:{hkp_port}",
                        f"keys.example.org:443:127.0.0.1:{vks_port}",
                    ],
                },
                "discovery": {"order": ["vks", "hkp"], "vks": [VKS], "hkp": [HKP]},
            }
        )
        self.store = Store(self.cfg.database)
        self.audit = AuditLog(self.cfg.audit_file)
        self.keys = KeyManager(self.store, self.audit, self.cfg)
        fetcher = Fetcher(self.cfg, None)
        self.feeds = Feeds(self.store, fetcher, self.cfg, self.audit, clock=clock,
                           rng=random.Random(1))  # fmt: skip
        self.refresher = Refresher(self.keys, Retriever(self.cfg, fetcher), self.cfg, self.audit,
                                   clock=clock, rng=random.Random(2), feeds=self.feeds)  # fmt: skip

    def register(self, word: str, key: bytes) -> str:
        kind = Way(word)
        fpr = read_key(key, datetime.now(UTC)).fingerprint
        url = (hkp.lookup(HKP, fpr) if kind == "hkp" else vks.by_fingerprint(VKS, fpr)).url
        level, positive = for_source(kind)
        address = read_key(key, datetime.now(UTC)).uids[0].address
        assert address is not None
        d = self.keys.consider(address, key, Found(kind, level, positive, fpr, url))
        assert d.registers
        with self.store.transaction():
            self.store.put_source(Source(url, kind, None, fpr, last_fetch=epoch_iso(FETCHED),
                                         last_status="200"))  # fmt: skip
        return fpr

    def events(self, name: str) -> list[dict]:
        lines = [json.loads(x) for x in self.audit.path.read_text().splitlines()]
        return [e for e in lines if e["event"] == name]

    def close(self) -> None:
        self.store.close()
        self.audit.close()


@pytest.fixture
async def world(nursery, tmp_path, keyring):
    clock = Clock(FETCHED)
    served = {"hkp": FeedKeys(lambda: clock.t), "vks": FeedKeys(lambda: clock.t)}
    tls = make_tls(str(tmp_path), "keys.example.org")
    hkp_server = await HttpServer(hockeypuck_handlers(served["hkp"])).start(nursery)
    vks_server = await HttpServer(hagrid_handlers(served["vks"]), tls=tls.server).start(nursery)
    w = World(tmp_path, hkp_server.port, vks_server.port, tls.ca_file, clock)
    w.clock, w.served = clock, served  # type: ignore[attr-defined]
    yield w
    w.close()


def feed_of(world: World, kind: str) -> tuple[FeedKind, str]:
    feed = FeedKind.PREFIX_LOG if kind == "hkp" else FeedKind.UPDATE_MANIFEST
    return next(s for s in world.feeds.servers if s[0] is feed)


def publish(world: World, kind: str, keyring: list[bytes]) -> list[str]:
    """The three keys registered from `kind`; the last one changed that afternoon."""
    fprs = []
    for i, key in enumerate(keyring):
        fpr = world.register(kind, key)
        mtime = FETCHED + 3 * 3600 if i == 2 else FETCHED - 30 * DAY
        world.served[kind].put(fpr, key, mtime)  # type: ignore[attr-defined]
        fprs.append(fpr)
    return fprs


@pytest.mark.parametrize("kind", ["hkp", "vks"])
async def test_unchanged_keys_cost_no_request_and_the_changed_one_is_fetched(world, keyring, kind):
    fprs = publish(world, kind, keyring)
    served: FeedKeys = world.served[kind]
    world.clock.t = FETCHED + DAY  # the next day, noon
    server = feed_of(world, kind)
    window = await world.feeds.fetch(server)
    assert window is not None and window.start <= FETCHED and window.end > FETCHED + 3 * 3600
    assert len(served.feed_requests) == 1
    for fpr in fprs:
        assert await world.refresher.refresh(fpr) is True
    assert served.lookups == [fprs[2]]  # only the changed key was asked for
    vouched = world.events("refresh.unchanged_by_feed")
    assert [e["fingerprint"] for e in vouched] == fprs[:2]
    assert all(datetime.fromisoformat(e["known_current_until"]).timestamp() == window.end
               for e in vouched)  # fmt: skip
    # what the feed vouched for is kept: the next turn starts from the window's end
    source = world.store.sources_of(fprs[0])[0]
    assert source.last_status == "feed" and source.failures == 0
    assert datetime.fromisoformat(source.last_fetch).timestamp() == window.end
    # a day later without a new window, the key is still current as far as the feed knows,
    # but once the feed is stale (no window for days) every key is fetched again
    world.clock.t = window.end + 4 * DAY
    assert await world.refresher.refresh(fprs[0]) is True
    assert served.lookups == [fprs[2], fprs[0]]


@pytest.mark.parametrize("kind", ["hkp", "vks"])
@pytest.mark.parametrize("status", [404, 500, 200])
async def test_without_a_readable_feed_every_key_is_fetched(world, keyring, kind, status):
    fprs = publish(world, kind, keyring)
    served: FeedKeys = world.served[kind]
    served.feed_answer = status  # 404: no feed; 500: failing; 200 "forced\n": unreadable
    world.clock.t = FETCHED + DAY
    server = feed_of(world, kind)
    assert await world.feeds.fetch(server) is None
    event = "feed.absent" if status == 404 else "feed.failed"
    assert len(world.events(event)) == 1
    for fpr in fprs:
        assert await world.refresher.refresh(fpr) is True
    assert served.lookups == fprs
    assert world.events("refresh.unchanged_by_feed") == []
    # the next request is in the next period (a week later when the server has no feed)
    state = world.feeds._state[server]
    wait = 7 * DAY if status == 404 else 0.0
    assert FETCHED + DAY + wait <= state["next_at"] < FETCHED + 2.5 * DAY + wait


async def test_a_day_missed_by_the_feed_falls_back_for_that_day(world, keyring):
    fprs = publish(world, "hkp", keyring)
    served: FeedKeys = world.served["hkp"]
    server = feed_of(world, "hkp")
    world.clock.t = FETCHED + 2 * DAY  # two days later: the log of the day before is asked
    window = await world.feeds.fetch(server)
    assert window is not None and window.start > FETCHED  # the fetch day itself is missing
    for fpr in fprs[:2]:
        assert await world.refresher.refresh(fpr) is True
    assert served.lookups == fprs[:2]
