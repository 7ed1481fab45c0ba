"""First contact over several network paths, in process: a WKD that answers differently to
different requests (what an attacker on one path does) gives `conflict` and registers nothing;
equal answers register as one answer would; a path that fails is no conflict. Loopback servers
reached through network.connect_to (tor.mode "off"); the Tor-side facts (distinct exits, a
single exit) are checked end to end in tests/test_e2e_perspectives.py."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.core.perspectives import REASKS
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


class Circuits:
    """Stands in for Tor's side: each request's answer carries SOCKS credentials of its own (as
    Tor isolation gives), and `exits` says, request by request, which exit carried it."""

    def __init__(self, retriever, exits: list[str], in_network: int) -> None:
        self.retriever, self.exits, self.in_network = retriever, exits, in_network
        self.by_user: dict[str, str] = {}

    async def by_address(self, source, address):
        gots = await self.retriever.by_address(source, address)
        user = f"path-{len(self.by_user)}"
        self.by_user[user] = self.exits[min(len(self.by_user), len(self.exits) - 1)]
        return [
            replace(g, answer=replace(g.answer, circuit_credentials=user)) if g.answer else g
            for g in gots
        ]

    async def exit_of(self, user: str) -> str | None:
        return self.by_user.get(user)

    async def exit_count(self) -> int:
        return self.in_network


@pytest.mark.parametrize(
    ("exits", "in_network", "asked", "shared"),
    [
        (["X1", "X1", "X1", "X2"], 2, 4, False),  # the repeating path asked twice more
        (["X1", "X2"], 2, 2, False),  # distinct at once: asked once
        (["X1"], 1, 2, True),  # one exit in the network: no point asking again
        (["X1"], 2, 2 + REASKS, True),  # Tor keeps picking one exit: the rounds end
    ],
)
async def test_a_path_that_repeated_an_exit_is_asked_again_over_fresh_circuits(
    world, keys, exits, in_network, asked, shared
) -> None:
    service, split, audit, store = world
    split.bodies = (keys["a"],)
    first = service.discovery
    tor = Circuits(first.retriever, exits, in_network)
    discovery = Discovery(
        first.keys,
        tor,  # type: ignore[arg-type]
        first.cfg,
        first.audit,
        first.clock,
        exit_of=tor.exit_of,
        exit_count=tor.exit_count,
    )

    decision = await discovery.discover(BOB)

    assert decision is not None and decision.registers
    assert store.registration(BOB) is not None
    assert split.count == asked  # requests the WKD server saw
    [seen] = events(audit, "discovery.perspectives")
    assert seen["asked_again"] == asked - 2
    assert seen["shared_exit"] is shared and seen["verdict"] == "agree"
    assert len(set(seen["exits"])) == (1 if shared else 2)
