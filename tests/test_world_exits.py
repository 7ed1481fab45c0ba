"""The private Tor network with two exits on distinct addresses, and a server that serves each
path its own key.

This network pins a stream to the exit whose own address is the target (Tor's exit enclave; a
loopback target that is no relay's address finds no exit at all, see tests/world/tornet.py),
so the two paths are reached through the two exits' addresses; Tor's circuit events show which
exit carried each stream, the server shows at which address each connection arrived.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.world.byaddress import ByAddressServer
from tests.world.tornet import TorNetwork

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_exits() -> Iterator[TorNetwork]:
    base = f"127.{secrets.randbelow(180) + 1}.{secrets.randbelow(256)}."
    with TorNetwork((), exit_address=base + "1", more_exits=(base + "2",)) as tor:
        yield tor


def test_two_exits_each_carry_their_own_path(two_exits: TorNetwork) -> None:
    tor = two_exits
    exits = tor.exits_by_fingerprint
    assert len(exits) == 2 and len(set(exits.values())) == 2
    a, b = tor.exit_node_addresses
    bodies = {a: b"key A", b: b"key B"}
    with ByAddressServer((a, b), bodies) as server, tor.record_events() as log:
        answers = {
            target: tor.fetch_probe(f"http://{target}:{server.port}/wkd").content
            for target in (a, b)
        }
        log.wait_until(lambda lg: len([s for s in lg.streams if s.status == "SUCCEEDED"]) >= 2)
        streams = [s for s in log.streams if s.status == "SUCCEEDED"]

    # each path was served its own key
    assert answers == {a: b"key A", b: b"key B"}
    assert [local for local, _peer, _path in server.seen] == [a, b]
    # and Tor's stream events name the exit that carried each: two different ones
    # (a target reads "<address>.<exit fingerprint>.exit:<port>")
    carried = {tuple(s.target.split(".exit:")[0].rsplit(".", 1)) for s in streams}
    assert len({fpr for _addr, fpr in carried}) == 2
    assert all(exits[fpr] == addr for addr, fpr in carried)
