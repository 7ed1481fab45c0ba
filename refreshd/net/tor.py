"""Tor supervision (SPEC sections 3 [tor] and 6): which Tor to use and whether it can carry a fetch.

Rules:
- "system": the Tor whose control port is tor.control (cookie or no authentication); fetches go
  to its SOCKS port tor.socks.
- "launch": a private tor started with stem, DataDirectory state_dir/tor, SOCKS and control on
  Unix sockets in a private 0700 directory, owned by this process (it exits when we do).
- "auto": "system" when its control port answers, else "launch".
- "off": no Tor (the config refuses it without allow_clearnet); the state is OFF.
- The state (`TorState`) follows from observed facts (`assess`): UNAVAILABLE when the control
  port cannot be reached or tor cannot start; STARTING while tor bootstraps; READY at 100 % with
  a circuit established; UNAVAILABLE again when no circuit can be built after bootstrap or when
  bootstrap makes no progress for STALL_SECONDS. Each change of state is audited once as
  `tor.state` with a one-line detail.
- Tor is polled every POLL_SECONDS (READY_POLL_SECONDS once ready), and at once on a
  STATUS_CLIENT event or when the control connection closes; an unreachable Tor is
  tried again after 1, 2, 4 ... seconds, then every RETRY_SECONDS, forever, without ever
  stopping the daemon.
- stem is blocking: every call runs in a worker thread under a CONTROL_SECONDS timeout.
- For network perspectives (core/perspectives.py rule 6) the supervisor says which exit carried
  a circuit (`exit_of`) and how many exits the consensus lists (`exit_count`, counted at most
  once per EXITS_SECONDS: a count only tells whether distinct exits are possible at all).
- httpx cannot reach a SOCKS proxy on a Unix socket; the fetcher bridges it with its own dialer
  (see `Endpoint` and refreshd.net.fetch).
"""

from __future__ import annotations

import contextlib
import enum
import os
import queue
import re
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stem
import stem.connection
import stem.control
import stem.process
import stem.socket
import trio

from refreshd.config import Config, TorMode

__all__ = ["Endpoint", "TorSupervisor"]

POLL_SECONDS = 5.0
EVENT_THREAD_WAIT = 60.0  # stem's event thread, between events (see QuietController)
READY_POLL_SECONDS = 30.0  # a ready Tor is checked less often: its events and the control
# connection's closing wake the supervisor at once
RETRY_SECONDS = 30.0
CONTROL_SECONDS = 20.0
STALL_SECONDS = 300.0
EXITS_SECONDS = 3600.0
# A Unix socket path must fit in sockaddr_un.sun_path (108 bytes with the terminator).
_MAX_SOCKET_PATH = 100


class TorState(enum.Enum):
    """What Tor can do for a fetch now; the value is what status and the audit log show."""

    OFF = "off"
    STARTING = "starting"
    READY = "ready"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Endpoint:
    """A TCP host:port, or a Unix socket path when `path` is set."""

    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """`"unix:/path"` or `"host:port"` (the config has already checked the shape)."""
    if text.startswith("unix:"):
        return Endpoint(path=text.removeprefix("unix:"))
    host, _, port = text.rpartition(":")
    return Endpoint(host=host, port=int(port))


@dataclass(frozen=True)
class Facts:
    """What one look at Tor showed."""

    reachable: bool
    problem: str = ""  # why it is not reachable
    bootstrap: int = 0
    summary: str = ""
    circuit: bool = False


@dataclass(frozen=True)
class Progress:
    """The bootstrap percentage and since when it has not moved."""

    percent: int
    since: float


@dataclass(frozen=True)
class TorStatus:
    state: TorState
    detail: str


_PROGRESS = re.compile(r"\bPROGRESS=(\d+)")
_QUOTED = re.compile(r'\b(SUMMARY|WARNING)="((?:[^"\\]|\\.)*)"')


def parse_bootstrap(phase: str) -> tuple[int, str]:
    """Percentage and a readable summary from GETINFO status/bootstrap-phase."""
    m = _PROGRESS.search(phase)
    quoted = dict(_QUOTED.findall(phase))
    summary = quoted.get("SUMMARY", "")
    if quoted.get("WARNING"):
        summary = f"{summary} ({quoted['WARNING']})" if summary else quoted["WARNING"]
    return (min(int(m.group(1)), 100) if m else 0), summary


def count_exits(statuses: str) -> int:
    """Relays flagged Exit and not BadExit in GETINFO ns/all (one `s <flags>` line each)."""
    flagged = (line.split()[1:] for line in statuses.splitlines() if line.startswith("s "))
    return sum(1 for flags in flagged if "Exit" in flags and "BadExit" not in flags)


def advance(prev: Progress | None, percent: int, now: float) -> Progress:
    """Progress after observing `percent` at `now`: the clock restarts whenever it moves."""
    if prev is not None and prev.percent == percent:
        return prev
    return Progress(percent, now)


def assess(facts: Facts, progress: Progress | None, now: float, label: str) -> TorStatus:
    """The state for what was observed; `label` names the Tor ("system Tor", "private Tor")."""
    if not facts.reachable:
        return TorStatus(TorState.UNAVAILABLE, facts.problem)
    if facts.bootstrap < 100:
        detail = f"{label} bootstrapped {facts.bootstrap}%: {facts.summary}".rstrip(": ")
        if progress is not None and now - progress.since >= STALL_SECONDS:
            return TorStatus(
                TorState.UNAVAILABLE, f"{detail}; no progress for {int(now - progress.since)} s"
            )
        return TorStatus(TorState.STARTING, detail)
    if not facts.circuit:
        return TorStatus(TorState.UNAVAILABLE, f"{label} bootstrapped but has no working circuit")
    return TorStatus(TorState.READY, f"{label} ready")


def launch_config(data_dir: Path, run_dir: Path) -> dict[str, str]:
    """torrc of the private Tor: client only, Unix sockets, cookie authentication."""
    return {
        "DataDirectory": str(data_dir),
        "SocksPort": f"unix:{run_dir / 'socks'}",
        "ControlPort": f"unix:{run_dir / 'control'}",
        "CookieAuthentication": "1",
        "AvoidDiskWrites": "1",
    }


def _probe(endpoint: Endpoint) -> None:
    """Connect once and close: stem leaks the socket of a refused connection, so find out first."""
    if endpoint.path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONTROL_SECONDS)
            sock.connect(endpoint.path)
    else:
        socket.create_connection((endpoint.host, endpoint.port), timeout=CONTROL_SECONDS).close()


class QuietController(stem.control.Controller):
    """stem's Controller, minus its event thread's 20 wake-ups a second.

    stem polls its event queue every 50 ms for as long as it is connected: most of an idle
    daemon's CPU. Clearing the notice before looking at the queue makes a longer wait safe
    (an event or close() that arrives after the clear sets the notice and ends the wait), so
    events are still handled at once and the thread otherwise sleeps.
    """

    def _event_loop(self) -> None:
        while True:
            self._event_notice.clear()
            try:
                event_message = self._event_queue.get_nowait()
            except queue.Empty:
                if not self.is_alive():
                    break
                self._event_notice.wait(EVENT_THREAD_WAIT)
                continue
            self._handle_event(event_message)
            self._event_queue.task_done()


class TorSupervisor:
    """Keeps track of the Tor that carries every fetch; lives in the daemon's nursery."""

    def __init__(
        self,
        cfg: Config,
        emit: Callable[..., object],
        *,
        tor_cmd: str = "tor",
        poll_seconds: float = POLL_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.mode = cfg.tor.mode
        self._cfg = cfg
        self._emit = emit
        self._tor_cmd = tor_cmd
        self._poll_seconds = poll_seconds
        self._retry_seconds = retry_seconds
        self.status = TorStatus(TorState.OFF, "Tor disabled: direct connections (allow_clearnet)")
        if self.mode is not TorMode.OFF:
            self.status = TorStatus(TorState.STARTING, "looking for Tor")
        self.socks_endpoint: Endpoint | None = None
        self._controller: stem.control.Controller | None = None
        self._label = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._progress: Progress | None = None
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._exits: tuple[int, float] | None = None  # (count, trio time it is good until)

    @property
    def state(self) -> TorState:
        return self.status.state

    @property
    def detail(self) -> str:
        return self.status.detail

    @property
    def ready(self) -> bool:
        return self.status.state is TorState.READY and self.socks_endpoint is not None

    async def changed(self) -> None:
        """Return at the next change of state or detail."""
        await self._changed.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._emit(
            "tor.state",
            mode=self.mode.value,
            state=self.status.state.value,
            detail=self.status.detail,
        )
        task_status.started()
        if self.mode is TorMode.OFF:
            await trio.sleep_forever()
        token = trio.lowlevel.current_trio_token()
        misses = 0
        try:
            while True:
                if self._controller is None:
                    await self._attach(token)
                if self._controller is not None:
                    await self._observe()
                misses = 0 if self._controller else misses + 1
                # a Tor that just went away usually comes back soon: look again after 1, 2,
                # 4 ... seconds, then every retry_seconds
                retry = min(self._retry_seconds, 2.0 ** max(misses - 1, 0))
                if self._controller is None:
                    interval = retry
                elif self.ready:  # events and the closed-connection listener wake us sooner
                    interval = max(self._poll_seconds, READY_POLL_SECONDS)
                else:
                    interval = self._poll_seconds
                with trio.move_on_after(interval):
                    await self._wake.wait()
                self._wake = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown()

    async def exit_of(self, socks_username: str) -> str | None:
        """The exit relay (fingerprint) of the circuit Tor isolated for this SOCKS username, as
        Tor's own circuit list says (GETINFO circuit-status carries the isolation fields);
        None when Tor does not say (no control connection, the circuit already closed)."""
        controller = self._controller
        if controller is None or not socks_username:
            return None

        def look() -> str | None:
            for circ in controller.get_circuits():
                if circ.socks_username == socks_username and circ.path:
                    return str(circ.path[-1][0])
            return None

        try:
            found: str | None = await self._blocking(look)
        except (TimeoutError, stem.ControllerError, stem.SocketError, OSError):
            return None
        return found

    async def exit_count(self) -> int | None:
        """How many exits Tor's consensus lists (see `count_exits`), counted at most once per
        EXITS_SECONDS; None when Tor does not say."""
        controller = self._controller
        if controller is None:
            return None
        now = trio.current_time()
        if self._exits is not None and now < self._exits[1]:
            return self._exits[0]
        try:
            text: str = await self._blocking(lambda: controller.get_info("ns/all"))
        except (TimeoutError, stem.ControllerError, stem.SocketError, OSError):
            return None
        self._exits = (count_exits(text), now + EXITS_SECONDS)
        return self._exits[0]

    # -- shell: everything below talks to tor ---------------------------------------------

    async def _blocking(self, fn: Callable[[], Any]) -> Any:
        """Run a stem call in a thread; TimeoutError after CONTROL_SECONDS."""
        with trio.fail_after(CONTROL_SECONDS):
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)

    async def _attach(self, token: trio.lowlevel.TrioToken) -> None:
        problems = []
        if self.mode is TorMode.SYSTEM or (self.mode is TorMode.AUTO and not self._private_alive()):
            problem = await self._connect(parse_endpoint(self._cfg.tor.control), "system Tor")
            if problem is None:
                self.socks_endpoint = parse_endpoint(self._cfg.tor.socks)
            else:
                problems.append(problem)
        if self._controller is None and self.mode in (TorMode.LAUNCH, TorMode.AUTO):
            problem = await self._launch()
            if problem is None:
                assert self._run_dir is not None
                control = Endpoint(path=str(self._run_dir / "control"))
                problem = await self._connect(control, "private Tor")
            if problem is None:
                assert self._run_dir is not None
                self.socks_endpoint = Endpoint(path=str(self._run_dir / "socks"))
            else:
                problems.append(problem)
        if self._controller is None:
            self.socks_endpoint = None
            self._set(Facts(reachable=False, problem="; ".join(problems)))
            return
        await self._listen(token)

    async def _connect(self, endpoint: Endpoint, label: str) -> str | None:
        """Open and authenticate a controller; None on success, else what went wrong."""

        def connect() -> stem.control.Controller:
            _probe(endpoint)
            if endpoint.path:
                controller = QuietController(stem.socket.ControlSocketFile(endpoint.path))
            else:
                controller = QuietController(
                    stem.socket.ControlPort(address=endpoint.host, port=endpoint.port)
                )
            try:
                controller.authenticate()
            except BaseException:
                controller.close()
                raise
            return controller

        try:
            self._controller = await self._blocking(connect)
        except TimeoutError:
            return f"{label}: control port {endpoint} did not answer within {CONTROL_SECONDS:.0f} s"
        except stem.connection.MissingPassword:
            return f"{label}: control port {endpoint} wants a password (use cookie authentication)"
        except stem.connection.AuthenticationFailure as exc:
            return f"{label}: authentication at control port {endpoint} failed ({exc})"
        except (stem.SocketError, ValueError, OSError) as exc:
            return f"{label}: control port {endpoint} unreachable ({exc})"
        self._label = label
        return None

    def _private_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def _launch(self) -> str | None:
        """Start the private tor unless it is still running; None on success."""
        if self._private_alive():
            return None
        data_dir = self._cfg.daemon.state_dir / "tor"
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        run_dir = self._cfg.daemon.socket.parent / "tor"
        if len(str(run_dir / "control")) > _MAX_SOCKET_PATH:
            run_dir = Path(tempfile.mkdtemp(prefix="refreshd-tor-"))
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_dir.chmod(0o700)
        config = launch_config(data_dir, run_dir)

        def launch() -> subprocess.Popen[bytes]:
            return stem.process.launch_tor_with_config(
                config,
                tor_cmd=self._tor_cmd,
                completion_percent=0,
                timeout=None,
                take_ownership=True,
            )

        try:
            self._process = await self._blocking(launch)
        except TimeoutError:
            return f"private Tor did not start within {CONTROL_SECONDS:.0f} s"
        except OSError as exc:
            return f"private Tor could not start ({exc})"
        self._run_dir = run_dir
        self._emit("tor.launched", pid=self._process.pid, data_dir=str(data_dir))
        return None

    async def _listen(self, token: trio.lowlevel.TrioToken) -> None:
        """Wake the poll loop on STATUS_CLIENT events (bootstrap, circuits, network liveness)."""
        controller = self._controller
        assert controller is not None

        def on_event(_event: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._wake.set, trio_token=token)

        def on_status(_controller: object, state: object, _when: float) -> None:
            if state == stem.control.State.CLOSED:  # tor went away: look at once
                on_event(state)

        controller.add_status_listener(on_status, spawn=False)
        with contextlib.suppress(TimeoutError, stem.ControllerError, stem.SocketError):
            await self._blocking(
                lambda: controller.add_event_listener(
                    on_event, stem.control.EventType.STATUS_CLIENT
                )
            )

    async def _observe(self) -> None:
        controller = self._controller
        assert controller is not None

        def look() -> tuple[str, str]:
            return (
                controller.get_info("status/bootstrap-phase"),
                controller.get_info("status/circuit-established"),
            )

        try:
            phase, circuit = await self._blocking(look)
        except (TimeoutError, stem.ControllerError, stem.SocketError) as exc:
            await self._drop_controller()
            problem = str(exc) or "no answer"
            self._set(
                Facts(
                    reachable=False, problem=f"{self._label}: control connection lost ({problem})"
                )
            )
            return
        percent, summary = parse_bootstrap(phase)
        self._set(Facts(reachable=True, bootstrap=percent, summary=summary, circuit=circuit == "1"))

    def _set(self, facts: Facts) -> None:
        now = trio.current_time()
        self._progress = advance(self._progress, facts.bootstrap, now) if facts.reachable else None
        status = assess(facts, self._progress, now, self._label)
        if status.state != self.status.state:
            self._emit(
                "tor.state", mode=self.mode.value, state=status.state.value, detail=status.detail
            )
        if status != self.status:
            self.status = status
            self._changed.set()
            self._changed = trio.Event()

    async def _drop_controller(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            with contextlib.suppress(TimeoutError, stem.ControllerError, stem.SocketError, OSError):
                await self._blocking(controller.close)

    async def _shutdown(self) -> None:
        """Close the controller and stop the private tor (by its own pid)."""
        await self._drop_controller()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await self._blocking(lambda: process.wait(timeout=10))
            except (TimeoutError, subprocess.TimeoutExpired):
                process.kill()
        if self._run_dir is not None and self._run_dir.name.startswith("refreshd-tor-"):
            for name in ("socks", "control"):
                with contextlib.suppress(OSError):
                    (self._run_dir / name).unlink()
            with contextlib.suppress(OSError):
                os.rmdir(self._run_dir)
