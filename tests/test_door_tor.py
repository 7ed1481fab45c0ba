"""End to end: an unmodified client's lookup of an address refreshd has never seen, through the
keyserver door, becomes a first contact over the private Tor network (the WKD server is
reached by a Tor stream on its own circuit) and the client gets the registered key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import world
from tests.daemon_proc import free_port
from tests.e2e_support import Scene, daemon_sections, running_scene
from tests.test_door_clients import Client, sq_fingerprints, sq_get
from tests.world import names
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer, wkd_path
from tests.world.sks import SksServer
from tests.world.tornet import EventLog, TorNetwork

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not world.https_port_443(),
        reason="refreshd asks WKD on port 443: nginx may not bind it here",
    ),
]


@pytest.fixture(scope="module")
def scene(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    sks_server: SksServer,
    test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Scene, int]]:
    root = tmp_path_factory.mktemp("door")
    port = free_port()
    sections = daemon_sections(tor_network, test_ca, sks_server)
    sections["serve"] = {"keyserver": f"127.0.0.1:{port}"}
    with running_scene(root, sections) as scene:
        yield scene, port


def wkd_streams(log: EventLog) -> list[str]:
    """Targets of the daemon's Tor streams (its own SOCKS credentials) that were opened for a
    WKD name and succeeded: the server was reached through the exit, not directly."""
    succeeded = {s.id for s in log.streams if s.status == "SUCCEEDED"}
    return [
        s.target
        for s in log.streams
        if s.status == "NEW"
        and s.socks_username
        and s.id in succeeded
        and s.target.rpartition(":")[0] in {"openpgpkey.example.org", "example.org"}
        and s.target.rpartition(":")[0] in names.all_names()
    ]


def test_gpg_locate_of_a_new_address_is_discovered_over_tor(
    scene: tuple[Scene, int], wkd_server: WkdServer, tor_network: TorNetwork, tmp_path
) -> None:
    s, port = scene
    address = "dora@example.org"
    fingerprint = s.new_key(f"Dora <{address}>")
    wkd_server.publish_wkd(address, s.public(fingerprint))
    client = Client(tmp_path / "client", port)
    try:
        with tor_network.record_events() as log:
            got = client.gpg("--auto-key-locate", "clear,keyserver", "--locate-external-keys",
                             address)  # fmt: skip
            streams = wkd_streams(log)
    finally:
        client.close()
    assert got.returncode == 0, got.stderr
    assert set(client.keys()) == {fingerprint}
    assert streams, "no Tor stream reached the WKD server"
    path = wkd_path(address, "advanced")[1]
    assert [e.status for e in wkd_server.access_log() if e.uri.startswith(path)][-1:] == [200]
    answer = s.daemon.call("lookup", address=address, discover=False)
    assert (answer["fingerprint"], answer["source"]) == (fingerprint, "wkd")


def test_sq_fetch_of_a_new_address_gets_the_discovered_key(
    scene: tuple[Scene, int], wkd_server: WkdServer
) -> None:
    s, port = scene
    address = "sami@example.org"
    fingerprint = s.new_key(f"Sami <{address}>")
    wkd_server.publish_wkd(address, s.public(fingerprint))
    got = sq_get(port, address)
    assert got.returncode == 0, got.stderr
    assert sq_fingerprints(got.stdout) == [fingerprint]
    by_fpr = sq_get(port, fingerprint)
    assert sq_fingerprints(by_fpr.stdout) == [fingerprint]
