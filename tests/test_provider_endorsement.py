"""Provider endorsement (SPEC 5.1, 6; reference 002 phase 3) against the nicknym test server
with signed answers, through the daemon's own discovery, refresh, retriever and real fetcher
(tor.mode "off", the test-only direct path, to loopback): endorsement keys pinned on first use,
an endorsed answer at provider-endorsement, forward signing of a new endorsement key, an
uncertified one refused, unsigned and badly signed answers refused, a revoked endorsement
lowering the level."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from refreshd.audit import AuditLog
from refreshd.clock import utcnow
from refreshd.config import from_mapping
from refreshd.core.levels import Level, Way
from refreshd.discovery import Discovery
from refreshd.keymanager import KeyManager
from refreshd.net.answers import Outcome
from refreshd.net.fetch import Fetcher
from refreshd.openpgp.keyview import parse_one
from refreshd.openpgp.packets import armor
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.store import Store
from tests.keyfactory import Workshop
from tests.world.ca import LocalCA
from tests.world.nicknym import NicknymServer

DOMAIN = "example.org"
BOB, CAROL, DAVE = (f"{n}@{DOMAIN}" for n in ("bob", "carol", "dave"))


@dataclass
class Keys:
    p1: str  # the provider's endorsement key
    p2: str  # its successor, certified by p1
    p3: str  # a stranger's "endorsement key", certified by nobody
    armored: dict[str, str]  # fingerprint -> armored public key
    bob: str
    bob_endorsed: str  # bob's key certified by p1 (armored)
    bob_withdrawn: str  # the same after p1 revoked that certification
    bob_bare: str  # bob's key as the provider serves it when it no longer endorses it
    carol: str  # carol's key, certified by p1


@pytest.fixture(scope="module")
def keys() -> Keys:
    ws = Workshop()
    g = ws.gpg
    try:
        p1 = g.generate(f"Endorsement <endorse@{DOMAIN}>", expire="2y")
        p2 = g.generate(f"Endorsement 2 <endorse@{DOMAIN}>", expire="2y")
        p3 = g.generate(f"Endorsement 3 <endorse@{DOMAIN}>", expire="2y")
        g.certify(p1, p2, f"Endorsement 2 <endorse@{DOMAIN}>")
        bob = g.generate(f"Bob <{BOB}>", expire="1y")
        g.certify(p1, bob, f"Bob <{BOB}>")
        endorsed = armor(g.export(bob))
        bare = armor(parse_one(g.export(bob)).serialize())  # third-party certifications dropped
        g.run("--local-user", p1, "--quick-revoke-sig", bob, p1, f"Bob <{BOB}>")
        carol = g.generate(f"Carol <{CAROL}>", expire="1y")
        g.certify(p1, carol, f"Carol <{CAROL}>")
        return Keys(
            p1=p1,
            p2=p2,
            p3=p3,
            armored={f: armor(g.export(f)) for f in (p1, p2, p3)},
            bob=bob,
            bob_endorsed=endorsed,
            bob_withdrawn=armor(g.export(bob)),
            bob_bare=bare,
            carol=armor(g.export(carol)),
        )
    finally:
        ws.close()


class Provider:
    def __init__(self, tmp: Path, keys: Keys, validation: dict | None = None) -> None:
        self.ca = LocalCA(tmp / "ca")
        self.nicknym = NicknymServer(self.ca, f"nicknym.{DOMAIN}", DOMAIN, signing=True)
        self.nicknym.start()
        port = self.nicknym.port
        cfg = from_mapping(
            {
                "daemon": {"state_dir": str(tmp / "state"), "socket": str(tmp / "s")},
                "tor": {"mode": "off", "allow_clearnet": True},
                "network": {
                    "ca_file": str(self.ca.ca_file),
                    "timeout": "20s",
                    "connect_to": [
                        f"{DOMAIN}:443:127.0.0.1:{port}",
                        f"nicknym.{DOMAIN}:{port}:127.0.0.1:{port}",
                    ],
                },
                "discovery": {"order": ["nicknym"], "vks": [], "hkp": []},
                "validation": validation or {},
            }
        )
        self.cfg = cfg
        self.store = Store(cfg.database)
        self.audit = AuditLog(cfg.audit_file)
        self.keys = KeyManager(self.store, self.audit, cfg)
        self.retriever = Retriever(cfg, Fetcher(cfg, None), pins=self.keys)
        self.discovery = Discovery(self.keys, self.retriever, cfg, self.audit, utcnow)
        self.nicknym.set_endorsement_keys([keys.armored[keys.p1]])
        self.nicknym.publish(BOB, keys.bob_endorsed, keys.bob)

    def events(self, name: str) -> list[dict]:
        lines = self.audit.path.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == name]

    def close(self) -> None:
        self.nicknym.stop()
        self.store.close()
        self.audit.close()


@pytest.fixture
def provider(tmp_path, keys):
    p = Provider(tmp_path, keys)
    yield p
    p.close()


async def test_pinned_on_first_use_and_the_endorsed_answer_is_provider_endorsement(provider, keys):
    d = await provider.discovery.discover(BOB)
    assert d is not None and (d.decision, d.level) == ("registered", Level.PROVIDER_ENDORSEMENT)
    pinned = provider.events("provider.key_pinned")
    assert {(e["kind"], e["how"]) for e in pinned} == {
        ("endorsement", "first-use"),
        ("response", "first-use"),
    }
    answer = provider.keys.describe(BOB)
    assert answer["validation"] == "provider-endorsement"
    assert f"endorsed by {DOMAIN}'s key 0x{keys.p1}, pinned 20" in answer["reason"]
    # the queries carried a nonce, and the answers were checked against the pinned key
    assert all("nicknym-nonce" in r.headers for r in provider.nicknym.requests() if r.path == "/")


async def test_a_rotated_key_certified_by_the_pinned_one_is_accepted(provider, keys):
    await provider.discovery.discover(BOB)
    provider.nicknym.set_endorsement_keys([keys.armored[keys.p2], keys.armored[keys.p3]])
    provider.nicknym.publish(CAROL, keys.carol, "")
    await provider.discovery.discover(CAROL)
    pinned = {e["fingerprint"]: e["how"] for e in provider.events("provider.key_pinned")}
    assert pinned.get(keys.p2) == "forward-signed"
    assert keys.p3 not in pinned
    refused = [e for e in provider.events("provider.key_refused") if e.get("kind") == "endorsement"]
    assert {e["fingerprint"] for e in refused} == {keys.p3}  # once per network path
    assert "not certified by any key pinned" in refused[0]["reason"]
    fingerprints = {p.fingerprint for p in provider.store.provider_pins(DOMAIN)}
    assert {keys.p1, keys.p2} <= fingerprints and keys.p3 not in fingerprints
    assert provider.keys.describe(CAROL)["validation"] == "provider-endorsement"  # p1 still


@pytest.mark.parametrize("signature", ["none", "bad"])
async def test_an_unsigned_or_badly_signed_404_is_refused(provider, keys, signature):
    await provider.discovery.discover(BOB)  # the provider is known to sign
    provider.nicknym.set_response(address=DAVE, status=404, signature=signature)
    (got,) = await provider.retriever.by_address(Way.NICKNYM, DAVE)
    assert got.outcome is Outcome.REJECTED and "refused" in got.reason
    provider.nicknym.set_response(address=DAVE, status=404)  # signed: it means "never existed"
    (got,) = await provider.retriever.by_address(Way.NICKNYM, DAVE)
    assert got.outcome is Outcome.NOT_FOUND


async def test_an_unsigned_key_answer_is_refused_too(provider, keys):
    await provider.discovery.discover(BOB)
    provider.nicknym.set_response(address=BOB, status=200, signature="none")
    (got,) = await provider.retriever.by_address(Way.NICKNYM, BOB)
    assert got.outcome is Outcome.REJECTED


async def test_a_revoked_endorsement_lowers_the_level(provider, keys):
    await provider.discovery.discover(BOB)
    provider.nicknym.publish(BOB, keys.bob_withdrawn, keys.bob)
    refresher = Refresher(
        provider.keys, provider.retriever, provider.cfg, provider.audit, rng=random.Random(7)
    )
    assert await refresher.refresh(keys.bob) is True
    answer = provider.keys.describe(BOB)
    assert (answer["fingerprint"], answer["validation"]) == (keys.bob, "provider-trust")
    merged = provider.events("key.merged")[-1]
    assert (
        merged["level"] == "provider-trust"
        and "lowered from provider-endorsement" in (merged["reason"])
    )


async def test_an_endorsement_the_provider_no_longer_serves_lowers_the_level(provider, keys):
    await provider.discovery.discover(BOB)
    provider.nicknym.publish(BOB, keys.bob_bare, keys.bob)  # signed, without the endorsement
    refresher = Refresher(
        provider.keys, provider.retriever, provider.cfg, provider.audit, rng=random.Random(8)
    )
    assert await refresher.refresh(keys.bob) is True
    assert provider.keys.describe(BOB)["validation"] == "provider-trust"
    provider.nicknym.publish(BOB, keys.bob_endorsed, keys.bob)  # endorsed again
    assert await refresher.refresh(keys.bob) is True
    assert provider.keys.describe(BOB)["validation"] == "provider-endorsement"


async def test_a_key_pinned_by_hand_is_the_only_one_taken_without_forward_signing(tmp_path, keys):
    provider = Provider(tmp_path, keys, {"provider_keys": {DOMAIN: [keys.p2]}})
    try:
        provider.nicknym.set_endorsement_keys([keys.armored[keys.p2], keys.armored[keys.p3]])
        await provider.discovery.discover(BOB)
        pinned = {e["fingerprint"]: e["how"] for e in provider.events("provider.key_pinned")}
        assert pinned[keys.p2] == "configured" and keys.p3 not in pinned  # no first use
        assert {e["fingerprint"] for e in provider.events("provider.key_refused")} == {keys.p3}
        # bob's key is certified by p1, which is neither configured nor offered
        assert provider.keys.describe(BOB)["validation"] == "provider-trust"
    finally:
        provider.close()
