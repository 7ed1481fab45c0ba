"""The private Tor network carries isolated HTTPS fetches to the loopback servers, and Tor's
own events show isolation and that test names were handed to Tor, never resolved locally."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.world import names, procs
from tests.world.ca import LocalCA
from tests.world.keys import GpgKey, fingerprints_of, make_key
from tests.world.nginx import WkdServer, split_address
from tests.world.sks import SksServer
from tests.world.tornet import EventLog, TorNetwork

pytestmark = pytest.mark.e2e

ADDRESS = "Carol.Tor@example.org"


@pytest.fixture(scope="module")
def published(wkd_server: WkdServer) -> GpgKey:
    key = make_key(ADDRESS)
    wkd_server.publish_wkd(ADDRESS, key.binary)
    return key


def wkd_url(wkd_server: WkdServer, address: str) -> str:
    """The URL a WKD client would build (default HTTPS port when the world can offer it)."""
    return wkd_server.wkd_url(address, port=443 if wkd_server.serves_443 else None)


def isolated_client(tor: TorNetwork, ca: LocalCA) -> tuple[httpx.AsyncClient, str]:
    """A fresh client with its own SOCKS credentials: its own circuit."""
    username = secrets.token_hex(8)
    proxy = tor.socks_url(username, secrets.token_hex(8))
    verify = ca.client_context()
    client = httpx.AsyncClient(proxy=proxy, trust_env=False, verify=verify, timeout=60)
    return client, username


async def wait_events(log: EventLog, predicate: Callable[[EventLog], bool]) -> None:
    assert await trio.to_thread.run_sync(log.wait_until, predicate, 15.0)


@pytest.fixture
def resolver_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host this process asks the system resolver about during the test."""
    calls: list[str] = []
    real = socket.getaddrinfo

    def recording(host: object, *args: object, **kwargs: object) -> object:
        calls.append(str(host))
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return calls


def test_test_names_are_unknown_to_the_host() -> None:
    hosts = Path("/etc/hosts").read_text()
    for name in names.all_names():
        assert name not in hosts.split()


async def test_wkd_through_tor_with_conditional_refetch(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    test_ca: LocalCA,
    published: GpgKey,
    resolver_calls: list[str],
) -> None:
    url = wkd_url(wkd_server, ADDRESS)
    local, _domain = split_address(ADDRESS)
    assert url.startswith("https://openpgpkey.example.org")
    assert url.endswith(f"?l={local}")

    with tor_network.record_events() as log:
        first, user1 = isolated_client(tor_network, test_ca)
        async with first:
            answer = await first.get(url)
        assert answer.status_code == 200
        assert fingerprints_of(answer.content) == [published.fingerprint]
        etag = answer.headers["etag"]
        assert answer.headers["last-modified"]

        second, user2 = isolated_client(tor_network, test_ca)
        async with second:
            again = await second.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""

        def both_done(events: EventLog) -> bool:
            done = {s.socks_username for s in events.streams if s.status == "SUCCEEDED"}
            return {user1, user2} <= done

        await wait_events(log, both_done)
        with tor_network.controller() as ctl:
            circuits = {c.id: c for c in ctl.get_circuits()}

    succeeded = {s.socks_username: s for s in log.streams if s.status == "SUCCEEDED"}
    one, two = succeeded[user1], succeeded[user2]
    assert user1 != user2
    assert one.socks_password != two.socks_password
    assert one.circ_id != two.circ_id
    for stream in (one, two):
        # Tor attached each stream to a circuit built for that stream's credentials...
        assert circuits[stream.circ_id].socks_username == stream.socks_username
        # ...ending at our exit, which connected to the mapped loopback address.
        mapped = tor_network.mapping["openpgpkey.example.org"]
        assert stream.target.startswith(f"{mapped}.{tor_network.exit_fingerprint}.exit:")
        assert stream.target.endswith(f".exit:{httpx.URL(url).port or 443}")
    # The name itself went to Tor (NEW carries it, REMAP is Tor's own MapAddress)...
    new = [s for s in log.streams if s.status == "NEW" and s.socks_username in (user1, user2)]
    assert [s.target.rpartition(":")[0] for s in new] == ["openpgpkey.example.org"] * 2
    remaps = [s for s in log.streams if s.status == "REMAP" and "SOURCE=CACHE" in s.raw]
    assert {s.socks_username for s in remaps} >= {user1, user2}
    # ...and this process asked the system resolver about numeric addresses only.
    for host in resolver_calls:
        assert not any(name in host for name in names.all_names())
        socket.inet_aton(host)
    # nginx saw the requests arriving from the exit, with SNI for the test name.
    served = wkd_server.wait_log(url[url.index("/.well-known") :], 2)
    assert [e.status for e in served] == [200, 304]
    assert {e.sni for e in served} == {"openpgpkey.example.org"}


async def test_hkp_through_tor_reaches_sks(
    tor_network: TorNetwork, sks_server: SksServer, test_ca: LocalCA
) -> None:
    key = make_key("dave.hkp@example.net")
    assert sks_server.add_key(key.armored) == 200
    before = sks_server.counts().accepts
    client, _user = isolated_client(tor_network, test_ca)
    url = (
        f"http://hkp.example.net:{sks_server.port}/pks/lookup"
        f"?op=get&options=mr&search=0x{key.fingerprint}"
    )
    async with client:
        answer = await client.get(url)
    assert answer.status_code == 200
    assert fingerprints_of(answer.content) == [key.fingerprint]
    assert sks_server.counts().accepts == before + 1


async def test_client_killed_then_restarted(
    tor_network: TorNetwork, wkd_server: WkdServer, test_ca: LocalCA, published: GpgKey
) -> None:
    url = wkd_url(wkd_server, ADDRESS)
    old_pid = tor_network.client.proc.pid if tor_network.client and tor_network.client.proc else 0
    accepted = wkd_server.accepted_connections()
    await trio.to_thread.run_sync(tor_network.stop_client)
    assert old_pid not in procs.live_world_pids()

    client, _user = isolated_client(tor_network, test_ca)
    async with client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
    with pytest.raises(OSError):
        tor_network.controller()
    assert wkd_server.accepted_connections() == accepted

    await trio.to_thread.run_sync(tor_network.start_client)
    client, _user = isolated_client(tor_network, test_ca)
    async with client:
        answer = await client.get(url)
    assert answer.status_code == 200
    assert fingerprints_of(answer.content) == [published.fingerprint]
