"""Keyserver door lookup latency: a registered address asked by gpg, by sq and over plain
HTTP at the door, beside the same answer from the JSON-RPC socket.

The daemon runs as users run it (tests/daemon_proc.py) on a copy of bench/population.py's
state with `serve.keyserver` on a free loopback port. One client at a time (gpg and sq are
one process per lookup, as a mail client runs them), random registered addresses:
- gpg: `gpg --auto-key-locate clear,keyserver --locate-external-keys ADDRESS`, the whole
  command's wall time (gpg start, its dirmngr asking the door, the import), dirmngr kept
  running between lookups as on a desktop;
- sq: `sq keyserver get ADDRESS`, the whole command;
- HTTP: one GET of `/pks/lookup?op=get&search=ADDRESS` on a fresh connection, the door alone;
- socket: `lookup` with `armor` (the same key bytes) over one Unix socket connection.
p50 and p99 of each, over all lookups of the run. Beside them: the time to read the kernel's
TCP table once (the door reads it for every connection to learn the peer's user), which grows
with the number of TCP sockets on the machine.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.population import Population, copy_state
from bench.report import Row, spread
from refreshd.door import TABLES
from tests.daemon_proc import Daemon, free_port, write_config


def _table_read() -> dict[str, Any]:
    """What one peer check costs here: reading /proc/net/tcp and tcp6 (the door stops at the
    first table that names the peer; a loopback IPv4 client is in the first)."""
    rows = sum(len(t.read_text().splitlines()) - 1 for t in TABLES if t.exists())
    times = []
    for _ in range(50):
        began = time.perf_counter()
        TABLES[0].read_text()
        times.append(time.perf_counter() - began)
    return {"rows": rows, "p50": statistics.median(times)}


def _timed(fn: Callable[[str], bool], addresses: list[str], n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    latencies, errors = [], 0
    for _ in range(n):
        address = rng.choice(addresses)
        began = time.perf_counter()
        ok = fn(address)
        latencies.append(time.perf_counter() - began)
        errors += not ok
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"n": n, "errors": errors, "p50": statistics.median(latencies), "p99": q[98],
            "max": latencies[-1]}  # fmt: skip


def _http_get(port: int) -> Callable[[str], bool]:
    def get(address: str) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"GET /pks/lookup?op=get&search={address} HTTP/1.0\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") and b"BEGIN PGP PUBLIC KEY" in data

    return get


def _socket_lookup(path: Path) -> tuple[Callable[[str], bool], socket.socket]:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    reader = sock.makefile("rb")

    def lookup(address: str) -> bool:
        request = {"jsonrpc": "2.0", "id": 1, "method": "lookup",
                   "params": {"address": address, "armor": True}}  # fmt: skip
        sock.sendall(json.dumps(request).encode() + b"\n")
        return b"BEGIN PGP PUBLIC KEY" in reader.readline()

    return lookup, sock


def _command(argv: Callable[[str], list[str]], env: dict[str, str]) -> Callable[[str], bool]:
    def run(address: str) -> bool:
        done = subprocess.run(argv(address), capture_output=True, env=env, timeout=120)
        return done.returncode == 0

    return run


def run(population: Population, quick: bool = False) -> dict[str, Any]:
    n_proc, n_fast = (10, 100) if quick else (100, 2000)
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-door-"))
    home = root / "gnupg"
    home.mkdir(mode=0o700)
    port = free_port()
    (home / "dirmngr.conf").write_text(f"standard-resolver\nkeyserver hkp://127.0.0.1:{port}\n")
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    gpg = _command(lambda a: ["gpg", "--batch", "--no-tty", "--auto-key-locate",
                              "clear,keyserver", "--locate-external-keys", a], env)  # fmt: skip
    sq = _command(lambda a: ["sq", "keyserver", "--policy", "insecure", "--server",
                             f"hkp://127.0.0.1:{port}", "get", a], env)  # fmt: skip
    addresses = population.addresses
    try:
        copy_state(population, root)
        daemon = Daemon(write_config(root, {"serve": {"keyserver": f"127.0.0.1:{port}"}}))
        try:
            for fn in (gpg, sq, _http_get(port)):  # warm: dirmngr, imports, caches
                fn(addresses[0])
            views = {
                "gpg": _timed(gpg, addresses, n_proc, 1),
                "sq": _timed(sq, addresses, n_proc, 2),
                "http": _timed(_http_get(port), addresses, n_fast, 3),
            }
            # opened now: the daemon closes a connection idle for 30 s
            lookup, sock = _socket_lookup(daemon.socket)
            try:
                lookup(addresses[0])
                views["socket"] = _timed(lookup, addresses, n_fast, 4)
            finally:
                sock.close()
        finally:
            daemon.stop()
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = _table_read()
    if any(v["errors"] for v in views.values()):
        raise RuntimeError(f"lookups failed: { {k: v['errors'] for k, v in views.items()} }")
    sock_view = views["socket"]
    keys = len(addresses)
    rows = []
    for name, label in (("gpg", "gpg --locate-external-keys, whole command"),
                        ("sq", "sq keyserver get, whole command"),
                        ("http", "HTTP GET at the door, fresh connection")):  # fmt: skip
        v = views[name]
        for q in ("p50", "p99"):
            rows.append(Row(f"door {q}, {label} ({v['n']} lookups, {keys:,} keys)", "seconds",
                            spread([v[q]]), "", None, f"socket lookup with armor, {q}",
                            spread([sock_view[q]])))  # fmt: skip
    rows.append(Row(f"of which: one read of /proc/net/tcp ({table['rows']:,} sockets on this "
                    "machine), p50", "seconds", spread([table["p50"]])))  # fmt: skip
    return {"rows": rows, "details": {"keys": keys, "views": views, "tcp_table": table}}
