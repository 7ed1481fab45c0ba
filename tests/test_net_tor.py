"""Tor supervision: the pure state rules, and the supervisor against a fake control port and
against nothing at all (no real tor is started here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from refreshd import config
from refreshd.net.tor import (
    STALL_SECONDS,
    Endpoint,
    Facts,
    Progress,
    TorState,
    TorSupervisor,
    advance,
    assess,
    count_exits,
    launch_config,
    parse_bootstrap,
    parse_endpoint,
)
from tests.net_servers import FakeControlPort, tor_ready


def test_parse_endpoint() -> None:
    assert parse_endpoint("unix:/run/tor/control") == Endpoint(path="/run/tor/control")
    assert parse_endpoint("127.0.0.1:9050") == Endpoint(host="127.0.0.1", port=9050)
    assert str(parse_endpoint("unix:/x")) == "unix:/x"


@pytest.mark.parametrize(
    ("phase", "percent", "summary"),
    [
        ('NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"', 100, "Done"),
        (
            'WARN BOOTSTRAP PROGRESS=5 TAG=conn SUMMARY="Connecting to a relay" '
            'WARNING="Network is unreachable" REASON=NOROUTE COUNT=3 RECOMMENDATION=warn',
            5,
            "Connecting to a relay (Network is unreachable)",
        ),
        ('NOTICE BOOTSTRAP PROGRESS=14 SUMMARY="Handshaking \\"x\\""', 14, 'Handshaking \\"x\\"'),
        ("", 0, ""),
        ("PROGRESS=250", 100, ""),
    ],
)
def test_parse_bootstrap(phase: str, percent: int, summary: str) -> None:
    assert parse_bootstrap(phase) == (percent, summary)


@pytest.mark.parametrize(
    ("facts", "state", "detail"),
    [
        (
            Facts(False, problem="control port unreachable"),
            TorState.UNAVAILABLE,
            "control port unreachable",
        ),
        (
            Facts(True, bootstrap=40, summary="Loading"),
            TorState.STARTING,
            "T bootstrapped 40%: Loading",
        ),
        (Facts(True, bootstrap=100, circuit=False), TorState.UNAVAILABLE, "no working circuit"),
        (Facts(True, bootstrap=100, circuit=True), TorState.READY, "T ready"),
    ],
)
def test_assess(facts: Facts, state: TorState, detail: str) -> None:
    status = assess(facts, Progress(facts.bootstrap, 0.0), 1.0, "T")
    assert status.state is state and detail in status.detail


def test_stalled_bootstrap_is_unavailable_until_it_moves() -> None:
    facts = Facts(True, bootstrap=10, summary="Finishing handshake")
    progress = advance(None, 10, 0.0)
    assert advance(progress, 10, 50.0) is progress  # no movement keeps the clock
    assert assess(facts, progress, STALL_SECONDS - 1, "T").state is TorState.STARTING
    stalled = assess(facts, progress, STALL_SECONDS + 5, "T")
    assert stalled.state is TorState.UNAVAILABLE and "no progress for" in stalled.detail
    moved = advance(progress, 15, STALL_SECONDS + 5)
    assert (
        assess(Facts(True, bootstrap=15), moved, STALL_SECONDS + 6, "T").state is TorState.STARTING
    )


def test_launch_config_uses_unix_sockets(tmp_path: Path) -> None:
    torrc = launch_config(tmp_path / "data", tmp_path / "run")
    assert torrc["SocksPort"] == f"unix:{tmp_path / 'run' / 'socks'}"
    assert torrc["ControlPort"] == f"unix:{tmp_path / 'run' / 'control'}"
    assert torrc["CookieAuthentication"] == "1"


def make_config(tmp_path: Path, **tor: Any) -> config.Config:
    return config.from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "run" / "s")},
            "tor": tor,
        }
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def states(self) -> list[str]:
        return [e["state"] for e in self.events if e["event"] == "tor.state"]


async def test_auto_with_nothing_there_is_unavailable_and_keeps_trying(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path, mode="auto", control=f"unix:{tmp_path}/no/control")
    emit = Recorder()
    tor = TorSupervisor(cfg, emit, tor_cmd=str(tmp_path / "no-tor-here"), retry_seconds=0.05)
    await nursery.start(tor.run)
    assert not await tor_ready(tor, 1)
    assert tor.state is TorState.UNAVAILABLE and not tor.ready and tor.socks_endpoint is None
    assert "system Tor: control port" in tor.detail and "unreachable" in tor.detail
    assert "private Tor could not start" in tor.detail and "no-tor-here" in tor.detail
    # many retries later: still alive, still unavailable, audited once per change only
    assert emit.states() == ["starting", "unavailable"]


async def test_system_tor_states_follow_the_control_port(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    control = FakeControlPort(bootstrap='NOTICE BOOTSTRAP PROGRESS=45 SUMMARY="Loading relays"')
    await control.start(nursery)
    cfg = make_config(
        tmp_path, mode="system", control=f"127.0.0.1:{control.port}", socks="127.0.0.1:9999"
    )
    emit = Recorder()
    tor = TorSupervisor(cfg, emit, poll_seconds=0.05, retry_seconds=0.05)
    await nursery.start(tor.run)
    with trio.fail_after(10):
        while tor.state is not TorState.STARTING or "45%" not in tor.detail:
            await tor.changed()
    assert not tor.ready
    control.bootstrap = 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'
    assert await tor_ready(tor, 10)
    assert tor.socks_endpoint == Endpoint(host="127.0.0.1", port=9999)
    control.stop()  # tor goes away
    with trio.fail_after(10):
        while tor.state is not TorState.UNAVAILABLE:
            await tor.changed()
    assert "control" in tor.detail
    await control.start(nursery)  # and comes back on the same port
    assert await tor_ready(tor, 10)
    assert emit.states() == ["starting", "ready", "unavailable", "ready"]
    assert any(c.startswith("SETEVENTS") and "STATUS_CLIENT" in c for c in control.commands)


async def test_no_circuit_after_bootstrap_is_unavailable(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    control = await FakeControlPort(circuit="0").start(nursery)
    cfg = make_config(tmp_path, mode="system", control=f"127.0.0.1:{control.port}")
    tor = TorSupervisor(cfg, Recorder(), poll_seconds=0.05)
    await nursery.start(tor.run)
    with trio.fail_after(10):
        while tor.state is not TorState.UNAVAILABLE:
            await tor.changed()
    assert "no working circuit" in tor.detail


async def test_control_port_that_is_not_tor(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Something else listens there: an unreachable detail, not a crash."""

    async def babble(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    listeners = await nursery.start(trio.serve_tcp, babble, 0)
    port = listeners[0].socket.getsockname()[1]
    cfg = make_config(tmp_path, mode="system", control=f"127.0.0.1:{port}")
    # One attempt only (default retry interval), so that no stem call is in flight at teardown.
    tor = TorSupervisor(cfg, Recorder())
    await nursery.start(tor.run)
    with trio.fail_after(10):
        while tor.state is not TorState.UNAVAILABLE:
            await tor.changed()
    assert f"127.0.0.1:{port}" in tor.detail and not tor.ready


async def test_unix_socks_endpoint(nursery: trio.Nursery, tmp_path: Path) -> None:
    control = await FakeControlPort().start(nursery)
    cfg = make_config(
        tmp_path, mode="system", control=f"127.0.0.1:{control.port}", socks="unix:/run/tor/socks"
    )
    tor = TorSupervisor(cfg, Recorder())
    await nursery.start(tor.run)
    assert await tor_ready(tor, 10)
    assert tor.socks_endpoint == Endpoint(path="/run/tor/socks")


async def test_mode_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    emit = Recorder()
    tor = TorSupervisor(make_config(tmp_path, mode="off", allow_clearnet=True), emit)
    await nursery.start(tor.run)
    assert tor.state is TorState.OFF and not tor.ready and emit.states() == ["off"]


def test_count_exits_counts_exit_flags_and_leaves_bad_exits_out() -> None:
    statuses = """\
r exit0 AAAA BBBB 2038-01-01 00:00:00 127.0.0.2 9001 0
s Exit Fast Running Valid
w Bandwidth=0
r guard CCCC DDDD 2038-01-01 00:00:00 127.0.0.3 9001 0
s Fast Guard Running Stable Valid
r bad EEEE FFFF 2038-01-01 00:00:00 127.0.0.4 9001 0
s BadExit Exit Running Valid
r exit1 GGGG HHHH 2038-01-01 00:00:00 127.0.0.5 9001 0
s Exit Running
p accept 443
"""
    assert count_exits(statuses) == 2
    assert count_exits("") == 0
