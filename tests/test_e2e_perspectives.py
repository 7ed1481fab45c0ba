"""End to end, over a private Tor network with two exits: first contact asks WKD over two network
paths, and a provider that serves one key to one exit and another key to the other is caught.

The world (tests/world/netns.py, tests/world/tornet.py): the WKD server is nginx inside a network
namespace of ours, on a TEST-NET-3 address that every test name maps to; each exit connects to
it from its own TEST-NET-2 address, and nginx serves each connecting address its own tree (the
attacker on one path). Tor picks the exits by policy, so which exit carried each fetch is read
from Tor's own circuit and stream events, and cross-checked with the address nginx saw.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_support import Scene, running_scene, wait_for
from tests.world import missing_binaries, names, netns
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer, wkd_path
from tests.world.tornet import EventLog, TorNetwork

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def enclave() -> Iterator[netns.Enclave]:
    missing = missing_binaries("tor") + missing_binaries("nginx")
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH")
    refused = netns.refused()
    if refused is not None:
        pytest.skip(f"two exits told apart need a network namespace of our own: {refused}")
    with netns.Enclave(sources=2) as made:
        yield made


@pytest.fixture(scope="module")
def split_wkd(enclave: netns.Enclave, test_ca: LocalCA, world_dir: Path) -> Iterator[WkdServer]:
    """nginx in the namespace on the server address, port 443, a tree per connecting address."""
    with WkdServer(
        test_ca,
        names.web_hosts(),
        base_dir=world_dir,
        extra_listen=((enclave.server, 443),),
        address=enclave.server,
        launcher=enclave.exec_prefix,
        by_peer=True,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def two_exits(enclave: netns.Enclave, world_dir: Path) -> Iterator[TorNetwork]:
    base = f"127.{secrets.randbelow(180) + 1}.{secrets.randbelow(256)}."
    with TorNetwork(
        (),
        mapping=dict.fromkeys(names.web_hosts(), enclave.server),
        exit_address=base + "1",
        more_exits=(base + "2",),
        outbound=enclave.sources,
        base_dir=world_dir,
    ) as tor:
        yield tor


@pytest.fixture(scope="module")
def scene(
    two_exits: TorNetwork,
    split_wkd: WkdServer,
    test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scene]:
    sections = {
        "tor": two_exits.daemon_config(),
        "network": {"ca_file": str(test_ca.ca_file), "timeout": "30s"},
        "refresh": {"period": "1h", "minimum_lapse": "1s"},
        "discovery": {"order": ["wkd"]},
        "validation": {"perspectives": 2},
    }
    with running_scene(tmp_path_factory.mktemp("e2e-perspectives"), sections) as scene:
        yield scene


def exits_that_carried(log: EventLog, server: str) -> list[str]:
    """The exit relay (last hop of the circuit, as Tor reported it) of every stream to the
    server that Tor reported SUCCEEDED."""
    built = {c.id: c.path for c in log.circuits if c.status == "BUILT"}
    return [
        built[s.circ_id][-1]
        for s in log.streams
        if s.status == "SUCCEEDED" and s.target == f"{server}:443" and s.circ_id in built
    ]


def first_contact(
    scene: Scene, tor: TorNetwork, server: str, address: str
) -> tuple[dict, dict, list[str]]:
    """lookup(address) with Tor's events recorded: the answer, the discovery.perspectives line
    and the exits Tor says carried the fetches."""
    after = scene.last_seq()
    with tor.record_events() as log:
        answer = scene.lookup(address, wait=90)
        seen = scene.wait_audit(
            lambda e: e["event"] == "discovery.perspectives" and e["address"] == address, after
        )
        fetches = 2 + seen["asked_again"]  # one stream per path and round (the advanced URL)
        log.wait_until(lambda lg: len(exits_that_carried(lg, server)) >= fetches)
        carried = exits_that_carried(log, server)
    return answer, seen, carried


def served_to(wkd: WkdServer, address: str, peers: int = 2) -> dict[str, set[int]]:
    """Connecting address -> statuses nginx gave for the address's advanced WKD URL, once
    `peers` addresses are in its log (nginx logs a request after answering it)."""
    _host, path = wkd_path(address, "advanced")

    def logged() -> dict[str, set[int]] | None:
        answers: dict[str, set[int]] = {}
        for entry in wkd.access_log():
            if entry.uri.split("?")[0] == path:
                answers.setdefault(entry.peer, set()).add(entry.status)
        return answers if len(answers) >= peers else None

    found: dict[str, set[int]] = wait_for(logged, 10, f"{peers} addresses in nginx's log")
    return found


def test_a_provider_serving_each_exit_its_own_key_is_a_conflict(
    scene: Scene, two_exits: TorNetwork, split_wkd: WkdServer, enclave: netns.Enclave
) -> None:
    address = "ana@example.org"
    honest, forged = scene.new_key(f"Ana <{address}>"), scene.new_key(f"Not Ana <{address}>")
    first, second = enclave.sources
    split_wkd.publish_wkd(address, scene.public(honest), peer=first)
    split_wkd.publish_wkd(address, scene.public(forged), peer=second)

    answer, seen, carried = first_contact(scene, two_exits, enclave.server, address)

    # the daemon's answer: conflict, naming both fingerprints, and nothing registered
    assert answer["state"] == "conflict", answer
    assert honest in answer["reason"] and forged in answer["reason"]
    assert scene.history(address)["keys"] == []
    conflict = scene.wait_audit(
        lambda e: e["event"] == "discovery.conflict" and e["address"] == address, 0
    )
    assert {honest, forged} <= set(" ".join(conflict["paths"]).replace(",", " ").split())
    assert not any(e["event"] == "key.registered" for e in scene.audit())
    # Tor's own events: the fetches rode circuits ending at both exits ...
    exits = two_exits.exits_by_fingerprint
    assert set(carried) == set(exits), (carried, exits)
    # ... and nginx saw each exit's own address and served each its key
    assert served_to(split_wkd, address) == {first: {200}, second: {200}}
    assert set(seen["exits"]) == set(exits) and seen["shared_exit"] is False


def test_with_both_paths_honest_the_key_is_registered_over_two_exits(
    scene: Scene, two_exits: TorNetwork, split_wkd: WkdServer, enclave: netns.Enclave
) -> None:
    address = "ben@example.org"
    key = scene.new_key(f"Ben <{address}>")
    for source in enclave.sources:
        split_wkd.publish_wkd(address, scene.public(key), peer=source)

    answer, seen, carried = first_contact(scene, two_exits, enclave.server, address)

    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == key
    assert answer["validation"] == "provider-trust"  # agreement raises no level
    assert seen["verdict"] == "agree" and seen["shared_exit"] is False
    exits = two_exits.exits_by_fingerprint
    assert set(carried) == set(exits), (carried, exits)
    assert set(seen["exits"]) == set(exits)
    assert set(served_to(split_wkd, address)) == set(enclave.sources)
