"""The network namespace that lets the private Tor network's exits be told apart: each exit's
source address reaches our server and nothing else, and nothing of it outlives the run.

Routes are asked of the kernel (`ip route get`), which sends no packet: a broken fence must
fail this test without anything leaving the machine. The exits riding it end to end, told apart
by Tor's events and the server's log: tests/test_e2e_perspectives.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.world import netns

pytestmark = pytest.mark.e2e

ELSEWHERE = ("192.0.2.99", "198.18.0.1", "127.0.0.1")  # on-link here, benchmark net, loopback


def route(destination: str, source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "route", "get", destination, "from", source],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def enclave() -> Iterator[netns.Enclave]:
    refused = netns.refused()
    if refused is not None:
        pytest.skip(f"needs a network namespace of our own: {refused}")
    with netns.Enclave(sources=2) as made:
        yield made


def test_a_source_address_reaches_the_server_and_nothing_off_this_host(
    enclave: netns.Enclave,
) -> None:
    assert len(set(enclave.sources)) == 2
    for source in enclave.sources:
        to_server = route(enclave.server, source)
        assert to_server.returncode == 0, to_server.stderr
        assert f"dev {enclave.host_link}" in to_server.stdout
        for destination in ELSEWHERE[:2]:
            blocked = route(destination, source)
            assert blocked.returncode != 0, blocked.stdout
            assert "prohibit" in blocked.stderr.lower() or "denied" in blocked.stderr.lower()
        # loopback stays loopback (the local table comes first)
        assert " dev lo" in route(ELSEWHERE[2], source).stdout


def test_nothing_is_left_behind() -> None:
    if (refused := netns.refused()) is not None:
        pytest.skip(f"needs a network namespace of our own: {refused}")
    with netns.Enclave(sources=2) as made:
        name, link, sources = made.name, made.host_link, made.sources
    assert (
        name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {link}:" not in links and f" {link}@" not in links
    rules = subprocess.run(["ip", "rule"], capture_output=True, text=True).stdout
    assert not any(source in rules for source in sources)
