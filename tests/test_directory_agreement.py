"""Directories agreeing is not consensus, through discovery and refresh with the real fetcher
against loopback WKD, VKS and HKP servers (tor.mode "off", the test-only direct path): a contact
on WKD and VKS with the default discovery order is provider-trust, so when they revoke their key
and publish a new one on WKD, the next refresh takes it (rule 3.3); two HKP servers serving the
same key leave it weak-chain."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refreshd.audit import AuditLog
from refreshd.clock import utcnow
from refreshd.config import DEFAULT_ORDER, from_mapping
from refreshd.discovery import Discovery
from refreshd.keymanager import KeyManager
from refreshd.net.fetch import Fetcher
from refreshd.openpgp.keyview import read_key
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.store import Store
from tests.keyfactory import Workshop
from tests.net_servers import HttpServer, make_tls, static
from tests.test_discovery_flow import BOB, advanced_path


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    ws = Workshop()
    try:
        g, s = ws.gpg, ws.sq
        old_secret = s.generate(f"<{BOB}>", expires_in="1y")
        new = g.generate(f"Bob <{BOB}>", expire="1y")
        return {
            "old": s.cert(old_secret),
            "old_revoked": s.revoke_certificate(old_secret),
            "new": g.export(new),
        }
    finally:
        ws.close()


class Rig:
    def __init__(
        self, tmp: Path, https: HttpServer, servers: list[HttpServer], ca: str, **disc: object
    ) -> None:
        connect = [
            f"{host}:443:127.0.0.1:{https.port}"
            for host in ("openpgpkey.example.org", "example.org", "keys.example.net")
        ]
        connect += [f"hkp{i}.example.net:11371:127.0.0.1:{s.port}" for i, s in enumerate(servers)]
        self.cfg = from_mapping(
            {
                "daemon": {"state_dir": str(tmp / "state"), "socket": str(tmp / "s")},
                "tor": {"mode": "off", "allow_clearnet": True},
                "network": {"ca_file": ca, "timeout": "10s", "connect_to": connect},
                "discovery": disc,
            }
        )
        self.store = Store(self.cfg.database)
        self.audit = AuditLog(self.cfg.audit_file)
        self.keys = KeyManager(self.store, self.audit, self.cfg)
        self.retriever = Retriever(self.cfg, Fetcher(self.cfg, None), pins=self.keys)
        self.discovery = Discovery(self.keys, self.retriever, self.cfg, self.audit, utcnow)

    def events(self, name: str) -> list[dict]:
        lines = self.audit.path.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == name]

    def close(self) -> None:
        self.store.close()
        self.audit.close()


async def test_wkd_and_vks_agreeing_then_a_new_key_on_wkd(nursery, tmp_path, keys):
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org", "keys.example.net")
    wkd_path = advanced_path(BOB)
    https = await HttpServer(
        {wkd_path: static(200, keys["old"]), "/vks/v1/": static(200, keys["old"])},
        tls=tls.server,
    ).start(nursery)
    rig = Rig(tmp_path, https, [], tls.ca_file, vks=["https://keys.example.net"], hkp=[])
    try:
        assert rig.cfg.discovery.order == DEFAULT_ORDER  # nicknym, wkd, vks, hkp
        d = await rig.discovery.discover(BOB)
        old = read_key(keys["old"], datetime.now(UTC)).fingerprint
        assert d is not None and (d.decision, d.fingerprint) == ("registered", old)
        assert rig.keys.describe(BOB)["validation"] == "provider-trust"
        asked = {r.target.split("?")[0] for r in https.requests}
        assert wkd_path in asked and any(t.startswith("/vks/v1/by-email/") for t in asked)
        # they revoke it and publish a new key on their WKD (the revoked one beside it)
        https.handlers[wkd_path] = static(200, keys["old_revoked"] + keys["new"])
        refresher = Refresher(rig.keys, rig.retriever, rig.cfg, rig.audit, rng=random.Random(9))
        assert await refresher.refresh(old) is True
        replaced = rig.events("key.replaced")
        assert [(e["fingerprint"], e["rule"]) for e in replaced] == [
            (read_key(keys["new"], datetime.now(UTC)).fingerprint, "3.3")
        ]
        assert (
            rig.keys.describe(BOB)["fingerprint"]
            == read_key(keys["new"], datetime.now(UTC)).fingerprint
        )
    finally:
        rig.close()


async def test_two_hkp_servers_with_the_same_key_stay_weak_chain(nursery, tmp_path, keys):
    servers = [
        await HttpServer({"/pks/lookup": static(200, keys["new"])}).start(nursery) for _ in range(2)
    ]
    hkp = [f"hkp://hkp{i}.example.net" for i in range(2)]
    rig = Rig(tmp_path, servers[0], servers, "", order=["hkp"], vks=[], hkp=hkp)
    try:
        d = await rig.discovery.discover(BOB)
        assert d is not None and d.decision == "registered"
        assert all(s.requests for s in servers)  # both were asked and both answered
        answer = rig.keys.describe(BOB)
        assert (answer["validation"], answer["encrypt"]) == ("weak-chain", False)
    finally:
        rig.close()
