"""Rule 3.1 (a verified key transition) through every path a key is fetched by, against
loopback HTTPS/HKP servers through the real fetcher (tor.mode "off", the test-only direct path):
first-contact discovery, refresh by address (WKD), a fetch by fingerprint (a signature in mail)
and an OpenPGP header URL. Each fetched key is stripped and parsed exactly once: counted on the
packet filter, the only place key bytes are parsed."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from refreshd.core.levels import Level, Way
from refreshd.keymanager import Found
from refreshd.net import wkd
from refreshd.openpgp import packets
from refreshd.openpgp.intake import intake
from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.packets import armor
from refreshd.refresher import Refresher
from refreshd.store import Source
from tests.keyfactory import Workshop
from tests.net_servers import HttpServer, make_tls, static
from tests.test_discovery_flow import BOB, World, advanced_path

WKD = Found(Way.WKD, Level.PROVIDER_TRUST, True)


@pytest.fixture(scope="module")
def transition(tmp_path_factory) -> dict[str, bytes | str]:
    """A: bob's registered key (gpg); B: bob's new key (sq), certified by A on bob's uid."""
    ws = Workshop(tmp_path_factory.mktemp("transition"))
    try:
        g, s = ws.gpg, ws.sq
        a = g.generate(f"Bob <{BOB}>", expire="1y")
        public = s.cert(s.generate(f"<{BOB}>", expires_in="2y"))
        g.run("--import", data=public)
        b = read_key(public, datetime.now(UTC)).fingerprint
        g.certify(a, b, f"<{BOB}>")
        served = armor(g.export(b)).encode()  # armored as served; stored copies are binary
        return {"a": g.export(a), "a_fpr": a, "b": served, "b_fpr": b}
    finally:
        ws.close()


@pytest.fixture
async def world(nursery, tmp_path, transition):
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org")
    body = transition["b"]
    https = await HttpServer({advanced_path(BOB): static(200, body)}, tls=tls.server).start(nursery)
    hkp = await HttpServer({"/pks/lookup": static(200, body)}).start(nursery)
    w = World(tmp_path, https, hkp, tls.ca_file)
    d = w.keys.consider(BOB, transition["a"], WKD)  # A registered at the level B comes with
    assert d.decision == "registered"
    yield w
    w.close()


@pytest.fixture
def parses(monkeypatch, world, transition):
    """Every parse of B's bytes as served (armored: the key as stored, read back for a merge,
    is binary and not counted): the packet-filter passes in this process, and the intake calls
    the key manager hands to its worker processes."""
    marker = packets.StreamingKeyFilter  # the class every strip and every parse goes through
    served = transition["b"]
    seen: list[object] = []  # held, so no two passes share an id
    feed = marker.feed

    def counting(self: packets.StreamingKeyFilter, chunk: bytes) -> None:
        if chunk and served.startswith(chunk) and not any(f is self for f in seen):
            seen.append(self)
        feed(self, chunk)

    run = world.keys.worker.run

    async def counting_run(fn, *args):
        if fn is intake and args and args[0] == served:
            seen.append(object())
        return await run(fn, *args)

    monkeypatch.setattr(marker, "feed", counting)
    monkeypatch.setattr(world.keys.worker, "run", counting_run)
    return seen


def replaced_by_3_1(world: World, decision, transition) -> None:
    assert decision is not None and decision.fingerprint == transition["b_fpr"]
    assert (decision.decision, decision.rule) == ("replaced", "3.1"), decision.reason
    assert world.keys.describe(BOB)["fingerprint"] == transition["b_fpr"]


async def test_through_discovery(world, transition, parses):
    d = await world.discovery.discover(BOB)  # WKD (over two network paths), then HKP: all B
    replaced_by_3_1(world, d, transition)
    fetched = len(world.https.requests) + len(world.hkp.requests)
    assert fetched >= 2 and len(parses) == fetched  # every answer parsed once, no more


async def test_through_refresh_by_address(world, transition, parses):
    url = wkd.requests_for(BOB)[0].url
    with world.store.transaction():
        world.store.put_source(Source(url, Way.WKD, BOB, str(transition["a_fpr"])))
    refresher = Refresher(world.keys, world.retriever, world.cfg, world.audit, rng=random.Random(5))
    assert await refresher.refresh(str(transition["a_fpr"])) is True
    replaced_by_3_1(world, last_decision(world), transition)
    assert len(parses) == 1


async def test_through_a_fetch_by_fingerprint(world, transition, parses):
    found = Found(Way.SIGNATURE, Level.WEAK_CHAIN, True)
    d = await world.discovery.by_fingerprint(BOB, str(transition["b_fpr"]), found)
    replaced_by_3_1(world, d, transition)  # weak-chain, lower: only rule 3.1 lets it in
    assert len(parses) == 1


async def test_through_an_openpgp_header_url(world, transition, parses):
    d = await world.discovery.from_header_url(BOB, wkd.requests_for(BOB)[0].url)
    replaced_by_3_1(world, d, transition)
    assert len(parses) == 1


class _Last:
    def __init__(self, row: dict) -> None:
        self.fingerprint = row["fingerprint"]
        self.decision = row["decision"]
        self.rule = row["rule"]
        self.reason = row["reason"]


def last_decision(world: World) -> _Last:
    return _Last(world.keys.store.decisions(BOB)[-1])
