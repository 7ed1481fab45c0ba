"""An endorser's key is fetched by fingerprint like any key (here from an HKP server on
loopback through the real fetcher), registered at known-key for its addresses, refreshed
from there, and then its certifications count."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import trio

from refreshd.core.levels import Level, Way
from refreshd.discovery import Discovery
from refreshd.keymanager import Found, KeyManager
from refreshd.openpgp.keyview import read_key
from tests.keyfactory import Workshop
from tests.net_servers import HttpServer, make_tls, static
from tests.test_discovery_flow import BOB, World


async def test_endorser_key_is_fetched_then_counts(nursery, tmp_path):
    ws = Workshop()
    try:
        g = ws.gpg
        endorser = g.generate("Example CA <openpgp-ca@example.org>", expire="2y")
        bob = g.generate(f"Bob <{BOB}>", expire="1y")
        g.certify(endorser, bob, f"Bob <{BOB}>")
        endorser_key, bob_key = g.export(endorser), g.export(bob)
    finally:
        ws.close()
    tls = make_tls(str(tmp_path), "openpgpkey.example.org")
    https = await HttpServer({}, tls=tls.server).start(nursery)
    hkp = await HttpServer({"/pks/lookup": static(200, endorser_key)}).start(nursery)
    w = World(tmp_path, https, hkp, tls.ca_file)
    try:
        validation = dataclasses.replace(w.cfg.validation, endorsers=(endorser,))
        cfg = dataclasses.replace(w.cfg, validation=validation)
        keys = KeyManager(w.store, w.audit, cfg)
        discovery = Discovery(keys, w.retriever, cfg, w.audit, keys.clock)
        assert keys.consider(BOB, bob_key, Found(Way.HKP, Level.WEAK_CHAIN, False)).level is (
            Level.WEAK_CHAIN  # the endorser's key is not held yet: its certification is unseen
        )
        with trio.fail_after(30):
            await discovery.fetch_endorsers(retry=0.1)
        answer = keys.describe("openpgp-ca@example.org")
        assert (answer["fingerprint"], answer["validation"]) == (endorser, "known-key")
        assert any(s.kind == "hkp" and endorser in s.url for s in w.store.sources_of(endorser))
        assert f"search=0x{endorser}" in hkp.requests[-1].target
        d = keys.consider(BOB, bob_key, Found(Way.HKP, Level.WEAK_CHAIN, False))
        assert (d.decision, d.level) == ("merged", Level.THIRD_PARTY_ENDORSEMENT), d.reason
        assert read_key(bob_key, datetime.now(UTC)).fingerprint == keys.describe(BOB)["fingerprint"]
    finally:
        w.close()
