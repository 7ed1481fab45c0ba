"""A private Tor network on 127.0.0.1: three directory authorities, a relay, exits, a client.

Why: refreshd must be tested against a real Tor (circuits, SOCKS isolation, control port)
without touching the internet. Every file is generated here from scratch in a temp dir:
authority keys with `tor-gencert`, relay identities with `tor --list-fingerprint`, torrc
files with the options that proved necessary on this kind of machine (each one below was
found by a failure). Test domains reach their servers through the client's `MapAddress`,
so no name ever meets a resolver; the exits may only connect to the mapped addresses.

Loopback targets: the client carries a stream to a loopback address only to the relay whose
own address that is (`exit_address`): Tor pins such a stream to that relay (target
`<address>.<exit fingerprint>.exit`), while ordinary exit selection finds no relay for a
loopback target. So the world's servers listen on the exit's address and every name maps to it.

Several exits (`more_exits`, each on its own loopback address): for a path that Tor chooses by
policy, map names to a target outside loopback that lives only in a network namespace of ours
(tests/world/netns.py) and give each exit its own source address there (`outbound`, Tor's
OutboundBindAddressExit, which Tor honours only for non-loopback destinations). A client picks
an exit for a stream by the consensus's policy summary, which lists only ports accepted for
(nearly) every address: an exit accepting just our target's address summarises as reject-all
(hence "All routers are down or won't exit"). So with `outbound` the exits also accept *:443,
fenced by the namespace's policy rules: from those source addresses only our server is
reachable, and the client maps every test name. Only the directory authorities and the middle
relay are voted Guard, so that no client circuit has an exit as its guard (that would leave one
exit for all the client's circuits). Once such a client has bootstrapped it stops building
circuits ahead of need (__DisablePredictedCircuits): a fresh SOCKS identity then gets a circuit
built for it with an exit drawn afresh, instead of a clean one built earlier (those are closed) that
often ends at the exit the previous path had.

Start order: keys, then authorities and relays, then (once the consensus lists every relay and
flags the exits) the client, then a real fetch through SOCKS to a loopback probe server. A start
that misses its deadline is torn down and retried once from scratch.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import stem
from stem.control import Controller, EventType
from stem.response.events import CircuitEvent, StreamEvent

from tests.world import names, procs
from tests.world.threaded import Running

TOR = "tor"
TOR_GENCERT = "tor-gencert"
DEFAULT_DOMAINS = names.all_names()
START_TIMEOUT = 90.0
N_AUTHORITIES = 3

# Options every node needs to form a network of its own.
_COMMON = (
    "TestingTorNetwork 1",
    "UseDefaultFallbackDirs 0",
    "AssumeReachable 1",
    "PathsNeededToBuildCircuits 0.25",
    "V3AuthNIntervalsValid 2",
    "SafeLogging 0",
    "Log notice stdout",
    "RunAsDaemon 0",
    "ContactInfo refreshd-tests@127.0.0.1",
)
# Nodes with an ORPort: stay on IPv4 loopback, never ask the host's resolver, keep descriptors
# stable, and accept extends to exits whose descriptor the exit has not seen yet.
_RELAY = (
    "AddressDisableIPv6 1",
    "ServerDNSDetectHijacking 0",
    "TestingMinTimeToReportBandwidth 1 day",
    "RefuseUnknownExits 0",
    "ShutdownWaitLength 0",
    "SocksPort 0",
)
# Authorities: vote fast, flag our exit as Exit (not `*`, or clients end circuits at non-exits).
_AUTHORITY = (
    "AuthoritativeDirectory 1",
    "V3AuthoritativeDirectory 1",
    "TestingV3AuthInitialVotingInterval 5",
    "TestingV3AuthInitialVoteDelay 2",
    "TestingV3AuthInitialDistDelay 2",
    "V3AuthVotingInterval 10",
    "V3AuthVoteDelay 2",
    "V3AuthDistDelay 2",
    "MaxConsensusAgeForDiffs 60 seconds",
    "ExitPolicy reject *:*",
)
# The client: full descriptors (the exit policy summarises to reject-all in microdescriptors)
# and a fixed circuit build timeout (a learned ~20 ms one fails on any hiccup).
_CLIENT = (
    "UseMicrodescriptors 0",
    "LearnCircuitBuildTimeout 0",
    "CircuitBuildTimeout 30",
    "CookieAuthentication 1",
)


class TorStartError(RuntimeError):
    """The network did not come up in time; the message carries the relevant log tails."""


@dataclass
class Node:
    """One tor process: its role, directory, ports and identity."""

    name: str
    role: str  # "authority", "relay", "exit" or "client"
    data_dir: Path
    or_port: int = 0
    dir_port: int = 0
    address: str = "127.0.0.1"
    fingerprint: str = ""
    v3ident: str = ""
    torrc: Path = field(init=False)
    proc: procs.Proc | None = None

    def __post_init__(self) -> None:
        self.torrc = self.data_dir / "torrc"


@dataclass(frozen=True)
class StreamRecord:
    """A STREAM event as Tor reported it."""

    id: str
    status: str
    circ_id: str
    target: str
    purpose: str | None
    socks_username: str | None
    socks_password: str | None
    raw: str


@dataclass(frozen=True)
class CircuitRecord:
    """A CIRC event as Tor reported it."""

    id: str
    status: str
    purpose: str | None
    path: tuple[str, ...]
    socks_username: str | None
    socks_password: str | None
    raw: str


class EventLog:
    """STREAM and CIRC events collected by `TorNetwork.record_events()` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: list[StreamRecord] = []
        self._circuits: list[CircuitRecord] = []

    @property
    def streams(self) -> list[StreamRecord]:
        with self._lock:
            return list(self._streams)

    @property
    def circuits(self) -> list[CircuitRecord]:
        with self._lock:
            return list(self._circuits)

    def on_stream(self, event: StreamEvent) -> None:
        kw = event.keyword_args
        record = StreamRecord(
            id=event.id,
            status=event.status,
            circ_id=event.circ_id,
            target=event.target,
            purpose=event.purpose,
            socks_username=kw.get("SOCKS_USERNAME"),
            socks_password=kw.get("SOCKS_PASSWORD"),
            raw=str(event),
        )
        with self._lock:
            self._streams.append(record)

    def on_circuit(self, event: CircuitEvent) -> None:
        record = CircuitRecord(
            id=event.id,
            status=event.status,
            purpose=event.purpose,
            path=tuple(fp for fp, _nick in event.path),
            socks_username=event.socks_username,
            socks_password=event.socks_password,
            raw=str(event),
        )
        with self._lock:
            self._circuits.append(record)

    def wait_until(self, predicate: Callable[[EventLog], bool], timeout: float = 10.0) -> bool:
        """Events arrive asynchronously: poll until `predicate(self)` holds."""
        return procs.wait_for(lambda: predicate(self), timeout, interval=0.05)


class TorNetwork:
    """The private network; use as a context manager (stopped by PID on exit, always).

    `mapping` gives each test domain the loopback address it maps to (default: the exit's
    own `exit_address`, the only kind of target this network carries, see the module doc).
    """

    def __init__(
        self,
        domains: Iterable[str] = DEFAULT_DOMAINS,
        *,
        mapping: Mapping[str, str] | None = None,
        exit_address: str = "127.0.0.1",
        more_exits: Sequence[str] = (),
        outbound: Sequence[str] = (),
        base_dir: Path | None = None,
        timeout: float = START_TIMEOUT,
        attempts: int = 2,
    ) -> None:
        self.exit_address = exit_address
        self.exit_node_addresses = (exit_address, *more_exits)
        if outbound and len(outbound) != len(self.exit_node_addresses):
            raise ValueError("outbound needs one source address per exit")
        self.outbound = tuple(outbound)  # each exit's OutboundBindAddressExit, in order
        self.mapping: dict[str, str] = dict.fromkeys(domains, exit_address)
        self.mapping.update(mapping or {})
        self._base_parent = base_dir
        self._own_base = False
        self.timeout = timeout
        self.attempts = attempts
        self.base_dir = Path()
        self.nodes: list[Node] = []
        self.client: Node | None = None
        self.socks_port = 0
        self.control_port = 0
        self.start_seconds = 0.0
        self.phase_seconds: dict[str, float] = {}

    # -- public API -------------------------------------------------------------------------

    def __enter__(self) -> TorNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def cookie_path(self) -> Path:
        return self._client().data_dir / "control_auth_cookie"

    @property
    def data_dirs(self) -> dict[str, Path]:
        nodes = [*self.nodes, self.client] if self.client is not None else self.nodes
        return {node.name: node.data_dir for node in nodes}

    @property
    def exit_fingerprint(self) -> str:
        """The first exit's fingerprint (the one on `exit_address`)."""
        return self.exit_fingerprints[0]

    @property
    def exit_fingerprints(self) -> tuple[str, ...]:
        return tuple(node.fingerprint for node in self.nodes if node.role == "exit")

    @property
    def exits_by_fingerprint(self) -> dict[str, str]:
        """Each exit's fingerprint to the address it connects from to a non-loopback target
        (its `outbound` address; its own address when it has none)."""
        exits = [node for node in self.nodes if node.role == "exit"]
        sources = self.outbound or tuple(node.address for node in exits)
        return {node.fingerprint: source for node, source in zip(exits, sources, strict=True)}

    @property
    def exit_addresses(self) -> tuple[str, ...]:
        """Addresses an exit may connect to: the exits', 127.0.0.1, every mapping target."""
        return tuple(sorted({*self.exit_node_addresses, "127.0.0.1", *self.mapping.values()}))

    def daemon_config(self) -> dict[str, str]:
        """refreshd's `[tor]` section for this network: its client Tor, used as a system Tor."""
        return {
            "mode": "system",
            "socks": f"127.0.0.1:{self.socks_port}",
            "control": f"127.0.0.1:{self.control_port}",
        }

    def socks_url(self, username: str, password: str) -> str:
        """A proxy URL for httpx: Tor resolves the name (socks5h), credentials isolate."""
        return f"socks5h://{username}:{password}@127.0.0.1:{self.socks_port}"

    def start(self) -> None:
        began = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                self._start_once()
            except BaseException as error:
                self.stop()
                if attempt >= self.attempts or not isinstance(error, TorStartError):
                    raise
            else:
                self.start_seconds = time.monotonic() - began
                return

    def stop(self) -> None:
        """Stop every tor by PID (client first) and remove the generated files."""
        for node in [n for n in (self.client, *reversed(self.nodes)) if n is not None]:
            if node.proc is not None:
                procs.stop(node.proc)
                node.proc = None
        if self._own_base and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def stop_client(self, sig: int = signal.SIGKILL) -> None:
        """Kill the client tor (default SIGKILL, as a crash): SOCKS and control ports vanish."""
        client = self._client()
        if client.proc is not None:
            procs.stop(client.proc, sig=sig)
            client.proc = None

    def start_client(self, timeout: float | None = None) -> None:
        """Start the client again with the same ports and data dir; return once it carries."""
        client = self._client()
        if client.proc is not None and client.proc.running():
            return
        deadline = time.monotonic() + (timeout or self.timeout)
        client.proc = procs.start(client.name, _tor_argv(client.torrc), client.data_dir / "log")
        self._await_client(deadline)

    def controller(self) -> Controller:
        """A stem Controller on the client's ControlPort, cookie-authenticated; caller closes.

        Raises ConnectionRefusedError when the port is closed (checked first: stem leaks its
        socket on a refused connection).
        """
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5):
            pass
        ctl = Controller.from_port(address="127.0.0.1", port=self.control_port)
        try:
            ctl.authenticate()
        except BaseException:
            ctl.close()
            raise
        return ctl

    @contextlib.contextmanager
    def record_events(self) -> Iterator[EventLog]:
        """Collect STREAM and CIRC events while the block runs (see `EventLog.wait_until`),
        starting with the circuits Tor already has (a stream may ride one built earlier)."""
        log = EventLog()
        with self.controller() as ctl:
            ctl.add_event_listener(log.on_stream, EventType.STREAM)
            ctl.add_event_listener(log.on_circuit, EventType.CIRC)
            for circuit in ctl.get_circuits():  # circuit-status lines, parsed as CIRC events
                log.on_circuit(circuit)
            yield log

    def fetch_probe(self, url: str, timeout: float = 30.0) -> httpx.Response:
        """GET `url` through Tor on a fresh circuit (random SOCKS credentials)."""
        proxy = self.socks_url(secrets.token_hex(8), secrets.token_hex(8))
        with httpx.Client(proxy=proxy, trust_env=False, timeout=timeout) as client:
            return client.get(url)

    # -- start ------------------------------------------------------------------------------

    def _client(self) -> Node:
        if self.client is None:
            raise RuntimeError("the Tor network is not started")
        return self.client

    def _start_once(self) -> None:
        began = time.monotonic()
        deadline = began + self.timeout
        if self._base_parent is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="refreshd-tornet-"))
            self._own_base = True
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="tornet-", dir=self._base_parent))
        empty = self.base_dir / "empty"
        empty.write_text("")
        resolv = self.base_dir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        self.nodes = self._plan_nodes()
        self._make_identities()
        keys_done = time.monotonic()
        for node in self.nodes:
            node.torrc.write_text(self._torrc(node, empty, resolv))
        for node in self.nodes:
            node.proc = procs.start(node.name, _tor_argv(node.torrc), node.data_dir / "log")
        self._await_consensus(deadline)
        consensus_done = time.monotonic()
        client = self._client()
        client.torrc.write_text(self._torrc(client, empty, resolv))
        client.proc = procs.start(client.name, _tor_argv(client.torrc), client.data_dir / "log")
        self._await_client(deadline)
        if self.outbound:  # from now on each stream's circuit is built for it (module doc)
            with self.controller() as ctl:
                ctl.set_conf("__DisablePredictedCircuits", "1")
                for circuit in ctl.get_circuits():  # and the clean ones built so far go
                    with contextlib.suppress(stem.InvalidRequest):
                        ctl.close_circuit(circuit.id)
        self.phase_seconds = {
            "keys": keys_done - began,
            "consensus": consensus_done - keys_done,
            "client": time.monotonic() - consensus_done,
        }

    def _plan_nodes(self) -> list[Node]:
        def node(name: str, role: str) -> Node:
            data_dir = self.base_dir / name
            data_dir.mkdir(mode=0o700)
            return Node(name, role, data_dir, or_port=procs.free_port())

        nodes = [node(f"auth{i}", "authority") for i in range(N_AUTHORITIES)]
        for auth in nodes:
            auth.dir_port = procs.free_port()
        nodes.append(node("relay0", "relay"))
        for i, address in enumerate(self.exit_node_addresses):
            exit_node = Node(f"exit{i}", "exit", self.base_dir / f"exit{i}", address=address)
            exit_node.data_dir.mkdir(mode=0o700)
            exit_node.or_port = procs.free_port(address)
            nodes.append(exit_node)
        self.client = Node("client", "client", self.base_dir / "client")
        self.client.data_dir.mkdir(mode=0o700)
        self.socks_port = procs.free_port()
        self.control_port = procs.free_port()
        return nodes

    def _make_identities(self) -> None:
        """Authority certificates and relay identity keys, generated in parallel."""
        gencerts = []
        for auth in (n for n in self.nodes if n.role == "authority"):
            keys = auth.data_dir / "keys"
            keys.mkdir(mode=0o700)
            argv = [
                TOR_GENCERT,
                "--create-identity-key",
                "-m",
                "12",
                "-a",
                f"127.0.0.1:{auth.dir_port}",
                "-i",
                str(keys / "authority_identity_key"),
                "-s",
                str(keys / "authority_signing_key"),
                "-c",
                str(keys / "authority_certificate"),
                "--passphrase-fd",
                "0",
            ]
            gencerts.append(
                procs.start(
                    f"{auth.name}-gencert", argv, auth.data_dir / "gencert.log", stdin_data=b""
                )
            )
        _wait_ok(gencerts)
        empty = self.base_dir / "empty"
        listings = []
        for node in self.nodes:
            argv = [
                TOR,
                "--list-fingerprint",
                "--defaults-torrc",
                str(empty),
                "-f",
                str(empty),
                "--DataDirectory",
                str(node.data_dir),
                "--ORPort",
                f"{node.address}:{node.or_port}",
                "--GeoIPFile",
                str(empty),
                "--GeoIPv6File",
                str(empty),
                "--Log",
                "err stderr",
            ]
            listings.append(procs.start(f"{node.name}-fpr", argv, node.data_dir / "fpr.log"))
        _wait_ok(listings)
        for node, listing in zip(self.nodes, listings, strict=True):
            last = listing.log_path.read_text().strip().splitlines()[-1]
            node.fingerprint = "".join(last.split()[1:])
            if node.role == "authority":
                cert = (node.data_dir / "keys" / "authority_certificate").read_text()
                node.v3ident = next(
                    line.split()[1] for line in cert.splitlines() if line.startswith("fingerprint ")
                )

    def _torrc(self, node: Node, empty: Path, resolv: Path) -> str:
        lines = [
            *_COMMON,
            f"Nickname {node.name}",
            f"DataDirectory {node.data_dir}",
            f"GeoIPFile {empty}",
            f"GeoIPv6File {empty}",
        ]
        lines += [
            f"DirAuthority {a.name} orport={a.or_port} v3ident={a.v3ident} "
            f"127.0.0.1:{a.dir_port} {a.fingerprint}"
            for a in self.nodes
            if a.role == "authority"
        ]
        if node.role != "client":
            lines += [
                *_RELAY,
                f"Address {node.address}",
                f"ORPort {node.address}:{node.or_port}",
                f"ServerDNSResolvConfFile {resolv}",
            ]
        if node.role == "authority":
            lines += [*_AUTHORITY, f"DirPort 127.0.0.1:{node.dir_port}"]
            lines.append(f"TestingDirAuthVoteExit {','.join(self.exit_fingerprints)}")
            guards = [n.fingerprint for n in self.nodes if n.role in ("authority", "relay")]
            lines += [
                f"TestingDirAuthVoteGuard {','.join(guards)}",
                "TestingDirAuthVoteGuardIsStrict 1",
            ]
        elif node.role == "relay":
            lines += ["DirCache 0", "ExitRelay 0", "ExitPolicy reject *:*"]
        elif node.role == "exit":
            lines += [
                "DirCache 0",
                "ExitRelay 1",
                "ExitPolicyRejectPrivate 0",
                "ExitPolicyRejectLocalInterfaces 0",
            ]
            lines += [f"ExitPolicy accept {addr}:*" for addr in self.exit_addresses]
            exits = [n for n in self.nodes if n.role == "exit"]
            if self.outbound:  # see the module docstring: policy by summary, fenced by netns
                lines.append("ExitPolicy accept *:443")
                lines.append(f"OutboundBindAddressExit {self.outbound[exits.index(node)]}")
            lines.append("ExitPolicy reject *:*")
        elif node.role == "client":
            lines += [
                *_CLIENT,
                f"SocksPort 127.0.0.1:{self.socks_port}",
                f"ControlPort 127.0.0.1:{self.control_port}",
            ]
            lines += [f"MapAddress {name} {addr}" for name, addr in sorted(self.mapping.items())]
        return "\n".join(lines) + "\n"

    def _await_consensus(self, deadline: float) -> None:
        """Wait until an authority's consensus lists every relay, the exit flagged Exit."""
        auth = self.nodes[0]
        url = f"http://127.0.0.1:{auth.dir_port}/tor/status-vote/current/consensus"
        wanted = {node.fingerprint for node in self.nodes}

        def ready() -> bool:
            self._check_alive()
            try:
                with _no_proxy_opener().open(url, timeout=2) as answer:
                    text = answer.read().decode("ascii", "replace")
            except OSError:
                return False
            flags = _consensus_flags(text)
            return wanted <= set(flags) and all(
                "Exit" in flags[fpr] for fpr in self.exit_fingerprints
            )

        if not procs.wait_for(ready, deadline - time.monotonic(), interval=0.5):
            raise TorStartError("no complete consensus in time\n" + self._log_tails())

    def _await_client(self, deadline: float) -> None:
        """Wait for 100% bootstrap via the control port, then a real fetch through the exit."""
        client = self._client()

        def bootstrapped() -> bool:
            self._check_alive()
            try:
                with self.controller() as ctl:
                    phase = ctl.get_info("status/bootstrap-phase")
            except Exception:
                return False
            return "PROGRESS=100" in phase

        if not procs.wait_for(bootstrapped, deadline - time.monotonic(), interval=0.2):
            raise TorStartError("client did not bootstrap in time\n" + _client_log(client))
        with _ProbeServer(self.exit_address) as probe:
            while True:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TorStartError(
                        "no circuit through the exit in time\n" + _client_log(client)
                    )
                try:
                    answer = self.fetch_probe(probe.url, timeout=min(30.0, remaining))
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                if answer.status_code == 200 and answer.content == probe.body:
                    return

    def _check_alive(self) -> None:
        for node in [*self.nodes, self._client()]:
            if node.proc is not None and not node.proc.running():
                raise TorStartError(f"{node.name} exited\n{node.proc.log_tail()}")

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- {node.name}\n{node.proc.log_tail(8)}" for node in self.nodes if node.proc
        )


def _client_log(client: Node) -> str:
    return client.proc.log_tail() if client.proc else ""


def _tor_argv(torrc: Path) -> list[str]:
    empty = torrc.parent.parent / "empty"
    return [TOR, "--defaults-torrc", str(empty), "-f", str(torrc)]


def _wait_ok(started: list[procs.Proc], timeout: float = 60.0) -> None:
    for proc in started:
        try:
            code = proc.popen.wait(timeout=timeout)
        finally:
            procs.stop(proc)
        if code != 0:
            raise TorStartError(f"{proc.name} failed ({code})\n{proc.log_tail()}")


def _consensus_flags(text: str) -> dict[str, set[str]]:
    """Map each router's hex fingerprint to its flags, from a plain-text consensus."""
    flags: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("r "):
            identity = line.split()[2]
            raw = base64.b64decode(identity + "=" * (-len(identity) % 4))
            current = raw.hex().upper()
            flags[current] = set()
        elif line.startswith("s ") and current:
            flags[current] = set(line.split()[1:])
    return flags


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _ProbeHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body: bytes = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""


class _ProbeServer:
    """A one-purpose HTTP server on 127.0.0.1 proving a circuit reaches loopback via the exit."""

    def __init__(self, address: str) -> None:
        self.body = secrets.token_hex(16).encode()
        server = ThreadingHTTPServer((address, 0), _ProbeHandler)
        server.body = self.body  # type: ignore[attr-defined]
        self.url = f"http://{address}:{server.server_address[1]}/probe"
        self._running = Running(server)

    def __enter__(self) -> _ProbeServer:
        self._running.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.stop()
