"""First contact over several network paths, in process: a WKD that answers differently to
different requests (what an attacker on one path does) gives `conflict` and registers nothing;
equal answers register as one answer would; a path that fails is no conflict. Loopback servers
reached through network.connect_to (tor.mode "off"); the Tor-side facts (distinct exits, a
single exit) are checked end to end in tests/test_e2e_perspectives.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.discovery import CONFLICT_HOLD, CONFLICTS_STATE, Discovery
from refreshd.keymanager import KeyManager
from refreshd.net import wkd
from refreshd.net.fetch import Fetcher
from refreshd.openpgp.keyview import read_key
from refreshd.retrieve import Retriever
from refreshd.service import Service
from refreshd.store import Store
from tests.keyfactory import pgpy_key
from tests.net_servers import Captured, HttpServer, make_tls, response

BOB = "bob@example.org"


class Split:
    """Serves the bodies in turn, one per request: request i gets bodies[i % len(bodies)]
    (None: 404, b"": a stall past the client's timeout)."""

    def __init__(self, *bodies: bytes | None) -> None:
        self.bodies = bodies
        self.count = 0

    async def __call__(self, _req: Captured, stream: trio.abc.Stream) -> None:
        body = self.bodies[self.count % len(self.bodies)]
        self.count += 1
        if body == b"":
            await trio.sleep_forever()
        await stream.send_all(response(404) if body is None else response(200, body))


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    return {"a": pgpy_key(f"A <{BOB}>"), "b": pgpy_key(f"B <{BOB}>")}


@pytest.fixture
def paths() -> int:
    return 2


@pytest.fixture
async def world(nursery, tmp_path: Path, paths: int):
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org")
    split = Split(None)
    https = await HttpServer({"/.well-known/openpgpkey/": split}, tls=tls.server).start(nursery)
    cfg = from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "s")},
            "tor": {"mode": "off", "allow_clearnet": True},
            "network": {
                "ca_file": tls.ca_file,
                "timeout": "3s",
                "connect_to": [
                    f"openpgpkey.example.org:443:127.0.0.1:{https.port}",
                    f"example.org:443:127.0.0.1:{https.port}",
                ],
            },
            "discovery": {"order": ["wkd"], "vks": [], "hkp": []},
            "validation": {"perspectives": paths},
        }
    )
    store, audit = Store(cfg.database), AuditLog(cfg.audit_file)
    km = KeyManager(store, audit, cfg)
    discovery = Discovery(
        km, Retriever(cfg, Fetcher(cfg, None)), cfg, audit, lambda: datetime.now(UTC)
    )
    await nursery.start(discovery.run)
    service = Service(
        km,
        discovery=discovery,
        refresher=None,  # type: ignore[arg-type]
        own=None,  # type: ignore[arg-type]
        tor_status=dict,
        import_gnupg=None,  # type: ignore[arg-type]
    )
    yield service, split, audit, store
    store.close()
    audit.close()


def events(audit: AuditLog, name: str) -> list[dict]:
    return [e for e in map(json.loads, audit.path.read_text().splitlines()) if e["event"] == name]


def advanced(address: str) -> str:
    return wkd.requests_for(address)[0].url


async def test_paths_that_see_different_keys_register_nothing(world, keys) -> None:
    service, split, audit, store = world
    split.bodies = (keys["a"], keys["b"])

    answer = await service.lookup({"address": BOB, "wait": 20})

    fa, fb = (
        read_key(keys["a"], datetime.now(UTC)).fingerprint,
        read_key(keys["b"], datetime.now(UTC)).fingerprint,
    )
    assert answer["state"] == "conflict", answer
    assert fa in answer["reason"] and fb in answer["reason"]
    assert store.registration(BOB) is None
    [conflict] = events(audit, "discovery.conflict")
    assert conflict["source"] == "wkd" and len(conflict["paths"]) == 2
    assert {fa, fb} <= set(" ".join(conflict["paths"]).split())
    assert events(audit, "key.registered") == []
    # the conflict is held: asking again right away fetches nothing and says the same
    before = split.count
    again = await service.lookup({"address": BOB, "wait": 5})
    assert again["state"] == "conflict" and split.count == before


async def test_a_key_on_one_path_and_not_found_on_the_other_is_a_conflict(world, keys) -> None:
    service, split, _audit, store = world
    split.bodies = (keys["a"], None, None)  # advanced: key / 404, then direct for that path: 404

    answer = await service.lookup({"address": BOB, "wait": 20})

    assert answer["state"] == "conflict", answer
    assert "not found" in answer["reason"]
    assert store.registration(BOB) is None


async def test_paths_that_agree_register_the_key_once_at_its_own_level(world, keys) -> None:
    service, split, audit, _store = world
    split.bodies = (keys["a"],)

    answer = await service.lookup({"address": BOB, "wait": 20})

    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == read_key(keys["a"], datetime.now(UTC)).fingerprint
    assert answer["validation"] == "provider-trust"  # agreement raises no level
    assert split.count == 2  # one request per path
    [seen] = events(audit, "discovery.perspectives")
    assert seen["verdict"] == "agree" and len(seen["paths"]) == 2
    assert len(events(audit, "key.registered")) == 1


async def test_a_path_that_times_out_is_no_conflict(world, keys) -> None:
    service, split, audit, _store = world
    split.bodies = (keys["a"], b"", b"")  # the other path's requests (both methods) stall

    answer = await service.lookup({"address": BOB, "wait": 30})

    assert answer["state"] == "registered", answer
    [seen] = events(audit, "discovery.perspectives")
    assert seen["verdict"] == "single"
    assert "not a conflict" in seen["reason"]
    assert events(audit, "discovery.conflict") == []


@pytest.mark.parametrize("paths", [1])
async def test_one_perspective_configured_asks_once(world, keys) -> None:
    service, split, audit, _store = world
    split.bodies = (keys["a"], keys["b"])

    answer = await service.lookup({"address": BOB, "wait": 20})

    assert answer["state"] == "registered"
    assert split.count == 1
    assert events(audit, "discovery.perspectives") == []


async def test_a_held_conflict_outlives_a_restart_until_the_hold_ends(world, keys) -> None:
    service, split, _audit, _store = world
    split.bodies = (keys["a"], keys["b"])
    answer = await service.lookup({"address": BOB, "wait": 20})
    assert answer["state"] == "conflict", answer
    first = service.discovery

    def restarted(at: datetime) -> Discovery:
        """A new discovery over the same store, as after a daemon restart, its clock at `at`."""
        return Discovery(first.keys, first.retriever, first.cfg, first.audit, lambda: at)

    now = datetime.now(UTC)
    assert restarted(now).conflict(BOB) == first.conflict(BOB)
    assert "disagree" in (restarted(now).conflict(BOB) or "")
    later = now + timedelta(seconds=CONFLICT_HOLD + 1)
    assert restarted(later).conflict(BOB) is None
    # an unreadable saved hold is dropped, not an error
    first.keys.store.put_state(CONFLICTS_STATE, "not json")
    assert restarted(now).conflict(BOB) is None
