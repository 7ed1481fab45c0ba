"""First contact, OpenPGP header URLs and conditional refresh, in process, against loopback
servers reached through network.connect_to (tor.mode "off": the test-only direct path)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.core.levels import Level, Way
from refreshd.discovery import Discovery
from refreshd.keymanager import Found, KeyManager
from refreshd.net import wkd
from refreshd.net.fetch import Fetcher
from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.packets import armor
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.store import Store
from tests.keyfactory import pgpy_key
from tests.loop_ticks import Ticks
from tests.net_servers import Captured, HttpServer, conditional, make_tls, static

BOB = "bob@example.org"


@pytest.fixture(scope="module")
def keys():
    return {"p": pgpy_key(f"P <{BOB}>"), "a": pgpy_key(f"A <{BOB}>")}


class World:
    def __init__(self, tmp: Path, https: HttpServer, hkp: HttpServer, ca_file: str) -> None:
        cfg = from_mapping(
            {
                "daemon": {"state_dir": str(tmp / "state"), "socket": str(tmp / "s")},
                "tor": {"mode": "off", "allow_clearnet": True},
                "network": {
                    "ca_file": ca_file,
                    "timeout": "10s",
                    "connect_to": [
                        f"openpgpkey.example.org:443:127.0.0.1:{https.port}",
                        f"example.org:443:127.0.0.1:{https.port}",
                        f"nicknym.example.org:443:127.0.0.1:{https.port}",
                        f"hkp.example.net:11371:127.0.0.1:{hkp.port}",
                    ],
                },
                "discovery": {"order": ["wkd", "hkp"], "vks": [], "hkp": ["hkp://hkp.example.net"]},
            }
        )
        self.cfg = cfg
        self.store = Store(cfg.database)
        self.audit = AuditLog(cfg.audit_file)
        self.keys = KeyManager(self.store, self.audit, cfg)
        self.retriever = Retriever(cfg, Fetcher(cfg, None))
        self.discovery = Discovery(
            self.keys, self.retriever, cfg, self.audit, lambda: datetime.now(UTC)
        )
        self.https, self.hkp = https, hkp

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.audit.path.read_text().splitlines()]

    def close(self) -> None:
        self.store.close()
        self.audit.close()


def advanced_path(address: str) -> str:
    return wkd.requests_for(address)[0].url.split("openpgpkey.example.org", 1)[1].split("?")[0]


@pytest.fixture
async def world(nursery, tmp_path, keys):
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org", "nicknym.example.org")
    nick = json.dumps({"address": BOB, "openpgp": armor(keys["p"])}).encode()
    https = await HttpServer(
        {
            advanced_path(BOB): conditional(keys["p"], '"v1"', "Sun, 22 Nov 2026 10:00:00 GMT"),
            "/provider.json": static(200, b'{"nicknym_uri": "https://nicknym.example.org/"}'),
            "/.well-known/key-discovery": static(200, b"nicknym\n"),
            "/": static(200, nick),
        },
        tls=tls.server,
    ).start(nursery)
    hkp = await HttpServer({"/pks/lookup": static(200, keys["a"])}).start(nursery)
    w = World(tmp_path, https, hkp, tls.ca_file)
    yield w
    w.close()


async def test_first_contact_registers_the_highest_level(world, keys):
    d = await world.discovery.discover(BOB)
    assert d is not None and d.decision == "registered"
    assert (
        d.fingerprint == read_key(keys["p"], datetime.now(UTC)).fingerprint
        and d.level is Level.PROVIDER_TRUST
    )
    answer = world.keys.describe(BOB)
    assert answer["encrypt"] is True and answer["source"] == "wkd"
    hist = {k["fingerprint"]: k["status"] for k in world.keys.history(BOB)["keys"]}
    assert (
        hist[read_key(keys["a"], datetime.now(UTC)).fingerprint] == "rejected"
    )  # the HKP key, lower level
    sources = world.store.sources_of(d.fingerprint)
    assert sources[0].kind == "wkd" and sources[0].etag == '"v1"'
    assert any(s.kind == "hkp" and "search=0x" + d.fingerprint in s.url for s in sources)
    assert {e["event"] for e in world.events()} >= {"discovery.fetched", "key.registered"}


async def test_conditional_refresh_costs_no_write(world, keys):
    d = await world.discovery.discover(BOB)
    updated = world.store.db.execute(
        "SELECT updated FROM keys WHERE fingerprint=?", (d.fingerprint,)
    ).fetchone()[0]
    refresher = Refresher(world.keys, world.retriever, world.cfg, world.audit, rng=random.Random(1))
    assert await refresher.refresh(d.fingerprint) is True
    last = world.events()[-1]
    assert last["event"] == "refresh.fetched" and last["status"] == 304
    assert last["outcome"] == "unchanged" and last["bytes"] == 0
    req: Captured = world.https.requests[-1]
    assert req.header("If-None-Match") == '"v1"'
    after = world.store.db.execute(
        "SELECT updated FROM keys WHERE fingerprint=?", (d.fingerprint,)
    ).fetchone()[0]
    assert after == updated
    assert not [e for e in world.events() if e["event"] in ("key.merged", "key.kept")]


async def test_header_url_in_standard_form_is_provider_trust(world, keys):
    url = wkd.requests_for(BOB)[0].url
    d = await world.discovery.from_header_url(BOB, url)
    assert d is not None and (d.decision, d.level) == ("registered", Level.PROVIDER_TRUST)


async def test_off_domain_header_url_is_not_fetched(world, keys):
    from refreshd.core import levels

    assert not levels.standard_header_url("https://keys.evil.net/bob.asc", BOB)
    accepts = world.https.accepts
    assert not levels.standard_header_url("http://example.org/.well-known/openpgpkey/hu/x", BOB)
    assert world.https.accepts == accepts


async def test_by_fingerprint_asks_hkp_and_checks_the_fingerprint(world, keys):
    wanted = read_key(
        keys["p"], datetime.now(UTC)
    ).fingerprint  # HKP serves key A whatever is asked
    d = await world.discovery.by_fingerprint(
        BOB, wanted, Found(Way.SIGNATURE, Level.WEAK_CHAIN, True)
    )
    assert d.decision == "rejected" and "not the fingerprint" in d.reason
    with trio.fail_after(5):
        good = await world.discovery.by_fingerprint(
            BOB,
            read_key(keys["a"], datetime.now(UTC)).fingerprint,
            Found(Way.SIGNATURE, Level.WEAK_CHAIN, True),
        )
    assert good.decision == "registered"


async def test_nicknym_capability_then_address_query(world, keys):
    got = await world.retriever.by_address(Way.NICKNYM, BOB)
    assert [g.outcome for g in got] == ["key"]
    assert got[-1].url.startswith("https://nicknym.example.org/?address=")
    assert (
        read_key(got[-1].data, datetime.now(UTC)).fingerprint
        == read_key(keys["p"], datetime.now(UTC)).fingerprint
    )
    # a domain without nicknym is remembered: the second attempt sends nothing
    world.https.handlers.pop("/provider.json")
    world.https.handlers.pop("/.well-known/key-discovery")
    world.https.handlers.pop("/")
    first = await world.retriever.by_address(Way.NICKNYM, "x@example.org")
    assert first[-1].outcome == "not-found"
    accepts = world.https.accepts
    again = await world.retriever.by_address(Way.NICKNYM, "y@example.org")
    assert again[-1].outcome == "not-found" and world.https.accepts == accepts


async def test_host_backs_off_only_when_different_keys_fail(world, keys):
    refresher = Refresher(world.keys, world.retriever, world.cfg, world.audit, rng=random.Random(2))
    world.hkp.handlers["/pks/lookup"] = static(503)
    fprs = [f"{i:040X}" for i in range(1, 5)]
    # one key failing again and again is that key's problem: the host stays open
    for _ in range(4):
        assert await refresher.refresh(fprs[0]) is False
    assert world.hkp.accepts == 4 and refresher.status()["hosts_backing_off"] == {}
    # three different keys failing in a row: the host is left alone for a while
    assert await refresher.refresh(fprs[1]) is False
    assert await refresher.refresh(fprs[2]) is False
    assert world.hkp.accepts == 6
    assert "hkp.example.net" in refresher.status()["hosts_backing_off"]
    assert await refresher.refresh(fprs[3]) is False
    assert world.hkp.accepts == 6  # not asked
    assert "left alone" in world.events()[-1]["reason"]


async def test_key_met_in_mail_is_refreshed_by_fingerprint_first(world, keys):
    fpr = world.keys.consider(
        BOB, keys["a"], Found(Way.AUTOCRYPT, Level.WEAK_CHAIN, True)
    ).fingerprint
    refresher = Refresher(world.keys, world.retriever, world.cfg, world.audit, rng=random.Random(3))
    assert await refresher.refresh(fpr) is True
    assert world.hkp.accepts == 1 and "search=0x" + fpr in world.hkp.requests[-1].target
    assert world.https.accepts == 0


async def test_key_met_in_mail_falls_back_to_wkd_when_the_keyserver_fails(world, keys):
    fpr = world.keys.consider(
        BOB, keys["p"], Found(Way.AUTOCRYPT, Level.WEAK_CHAIN, True)
    ).fingerprint
    refresher = Refresher(world.keys, world.retriever, world.cfg, world.audit, rng=random.Random(4))
    world.hkp.handlers["/pks/lookup"] = static(404)
    assert await refresher.refresh(fpr) is False
    assert world.https.accepts == 0
    assert await refresher.refresh(fpr) is True  # the failed source gives way to WKD
    assert world.https.requests[-1].target.startswith(advanced_path(BOB))
    kinds = {s.kind: s.failures for s in world.store.sources_of(fpr)}
    assert kinds == {"hkp": 1, "wkd": 0}
    assert world.keys.describe(BOB)["source"] == "wkd"  # confirmed by the provider


async def stall(_req: Captured, stream: trio.abc.Stream) -> None:
    """Accepts the request and never answers."""
    await trio.sleep_forever()


async def test_stalled_key_servers_cost_one_budget_not_their_timeouts(
    nursery, tmp_path, keys, monkeypatch
):
    """Two HKP servers that never answer: the WKD key is still registered, and each stalled
    source ends on the first-contact budget, not on network.timeout one after another."""
    import refreshd.discovery as discovery_module

    monkeypatch.setattr(discovery_module, "SOURCE_BUDGET", 2.0)
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org", "nicknym.example.org")
    https = await HttpServer({advanced_path(BOB): static(200, keys["p"])}, tls=tls.server).start(
        nursery
    )
    stalled = await HttpServer({"/": stall}).start(nursery)
    world = World(tmp_path, https, stalled, tls.ca_file)
    try:
        d = await world.discovery.discover(BOB)
        assert d is not None and d.decision == "registered" and d.level is Level.PROVIDER_TRUST
        failed = [e for e in world.events() if e["event"] == "discovery.failed"]
        assert any(e["source"] == "hkp" and "no answer within 2 s" in e["reason"] for e in failed)
    finally:
        world.close()


async def test_a_full_queue_is_answered_pending_never_no_key(tmp_path, monkeypatch):
    """Nothing consumes the queue here: the addresses past it wait their turn, and lookup
    says so, also after a wait, instead of "Discovery found no key"."""
    import refreshd.discovery as discovery_module
    from refreshd.service import Service

    monkeypatch.setattr(discovery_module, "QUEUE", 2)
    monkeypatch.setattr(discovery_module, "WAITING_FOR_ROOM", 1)
    cfg = from_mapping({"daemon": {"state_dir": str(tmp_path / "state")}})
    store, audit = Store(cfg.database), AuditLog(cfg.audit_file)
    keys = KeyManager(store, audit, cfg)
    discovery = Discovery(keys, None, cfg, audit, lambda: datetime.now(UTC))  # type: ignore[arg-type]
    service = Service(
        keys,
        discovery=discovery,
        refresher=None,
        own=None,  # type: ignore[arg-type]
        tor_status=dict,
        import_gnupg=None,  # type: ignore[arg-type]
    )
    try:
        answers = [
            await service.lookup({"address": f"u{i}@example.org", "wait": 0.1}) for i in range(4)
        ]
        assert [a["state"] for a in answers] == ["pending"] * 4
        assert "under way" in answers[0]["reason"]
        assert (
            "queue full, will retry" in answers[2]["reason"] and "its turn" in answers[2]["reason"]
        )
        assert (
            "queue full, will retry" in answers[3]["reason"] and "ask again" in answers[3]["reason"]
        )
        assert not any("found no key" in a["reason"] for a in answers)
    finally:
        store.close()
        audit.close()


async def test_a_5000_subkey_key_from_wkd_is_checked_apart_from_the_loop(nursery, tmp_path):
    """WKD answers with a key of 5,000 subkeys (seconds of signature checks): the loop goes on
    ticking meanwhile, because the key is taken in by a worker process."""
    from datetime import timedelta

    from tests.keyfactory import many_subkeys

    big = many_subkeys(pgpy_key(f"Bob <{BOB}>", expires=timedelta(days=400)), 5000)
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org", "nicknym.example.org")
    https = await HttpServer({advanced_path(BOB): static(200, big)}, tls=tls.server).start(nursery)
    hkp = await HttpServer({"/": static(404)}).start(nursery)
    world = World(tmp_path, https, hkp, tls.ca_file)
    ticks = Ticks()
    try:
        nursery.start_soon(ticks.run)
        started = trio.current_time()
        d = await world.discovery.discover(BOB)
        took = trio.current_time() - started
        ticks.stop()
        assert d is not None and d.fingerprint
        assert ticks.count >= min(20, int(took / 0.05)), (ticks.count, took)
    finally:
        ticks.stop()
        world.close()
