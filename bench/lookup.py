"""Socket `lookup` throughput and latency: a real `refreshd run` holding N registered keys,
32 concurrent clients.

The daemon runs as users run it (tests/daemon_proc.py: a subprocess with a config file) on a
copy of bench/population.py's state. Each client is a separate process (fork) with one plain
Unix socket connection, sending one JSON-RPC `lookup` for a random registered address, waiting
for the answer line, and again, for a fixed time; latency is measured around each request.
All clients start at the same moment. Lookups/s is all answers over the time from that moment
to the last answer. Daemon CPU per lookup is the daemon process's utime + stime (every thread)
over a run, divided by the lookups it answered.

The peer is the instrument's floor, measured in the same run with the same clients: a trio
server that answers every line with one constant `registered` answer (no parsing, no store,
no Python beyond the wait, the read and the write). It shows what the 32 client processes and
the machine allow at that moment: on a 2-core machine the clients compete with the server
for the cores, so the floor's p99 is far above its own cost per request.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from bench.idle import sample
from bench.population import Population, copy_state
from bench.report import Row, spread
from tests.daemon_proc import Daemon, write_config

CLIENTS = 32
# issue 16's table (the same case before the socket was reworked), 1k / 10k / 100k keys
BEFORE_CPU = "0.16 / 0.15 / 0.19 ms at 1k / 10k / 100k keys"
BEFORE_P99 = "13 / 15 / 16 ms at 1k / 10k / 100k keys"
FLOOR = "floor server, same clients"


def _client(
    path: str, addresses: list[str], start_at: float, seconds: float, seed: int, out: Any
) -> None:
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        while time.monotonic() < start_at:
            time.sleep(0.0005)
        end = start_at + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            request = {"jsonrpc": "2.0", "id": n, "method": "lookup",
                       "params": {"address": rng.choice(addresses)}}  # fmt: skip
            line = json.dumps(request).encode() + b"\n"
            began = time.perf_counter()
            sock.sendall(line)
            answer = reader.readline()
            latencies.append(time.perf_counter() - began)
            if b'"state":"registered"' not in answer.replace(b" ", b""):
                errors += 1
    out.put({"latencies": latencies, "errors": errors, "finished": time.monotonic()})


FLOOR_ANSWER = (
    b'{"jsonrpc":"2.0","id":1,"result":{"address":"floor@example.org","state":"registered",'
    b'"fingerprint":"' + b"0" * 40 + b'"}}\n'
)


def _floor_server(path: str, ready: Any) -> None:
    async def conversation(sock: socket.socket) -> None:
        with sock:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(16384)
                except BlockingIOError:
                    continue
                if not data:
                    return
                sock.sendall(FLOOR_ANSWER * data.count(b"\n"))

    async def main() -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(4096)
        listener.setblocking(False)
        ready.set()
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(listener)
                sock, _ = listener.accept()
                sock.setblocking(False)
                nursery.start_soon(conversation, sock)

    trio.run(main)


def floor(addresses: list[str], seconds: float, repeats: int) -> list[dict[str, Any]]:
    """The floor server's runs, as `load` returns them (cpu_per_lookup included)."""
    ctx = multiprocessing.get_context("fork")
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-floor-"))
    path = root / "socket"
    ready = ctx.Event()
    server = ctx.Process(target=_floor_server, args=(str(path), ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the floor server did not start")
        assert server.pid is not None
        return measured(server.pid, path, addresses, seconds, repeats)
    finally:
        server.kill()
        server.join(10)
        shutil.rmtree(root, ignore_errors=True)


def measured(
    pid: int, path: Path, addresses: list[str], seconds: float, repeats: int
) -> list[dict[str, Any]]:
    """`repeats` runs of `load` against the server `pid` listening on `path`, after a short
    one that warms its caches and imports; each with the server's CPU per lookup."""
    load(path, addresses, 2, 0.5)
    runs = []
    for _ in range(repeats):
        before = sample(pid)["cpu"]
        run = load(path, addresses, CLIENTS, seconds)
        run["cpu_per_lookup"] = (sample(pid)["cpu"] - before) / run["lookups"]
        runs.append(run)
    return runs


def _cpu_ticks() -> tuple[int, int]:
    """(steal, all) ticks of the machine's cores so far (/proc/stat): steal is time the
    hypervisor ran something else while one of our cores wanted to run."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[7], sum(fields)


def load(path: Path, addresses: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """One run: `clients` processes for `seconds`; p50/p99 latency, answers per second, and
    the share of the cores' time stolen by the host meanwhile."""
    steal_before, all_before = _cpu_ticks()
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start_at = time.monotonic() + 1.0 + clients * 0.02
    procs = [
        ctx.Process(target=_client, args=(str(path), addresses, start_at, seconds, i, results))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    steal_after, all_after = _cpu_ticks()
    latencies = sorted(x for g in got for x in g["latencies"])
    elapsed = max(g["finished"] for g in got) - start_at
    q = statistics.quantiles(latencies, n=100)
    return {
        "lookups": len(latencies),
        "errors": sum(g["errors"] for g in got),
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p99": q[98],
        "max": latencies[-1],
        "steal": (steal_after - steal_before) / max(1, all_after - all_before),
    }


def run(population: Population, quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    seconds = 3.0 if quick else 10.0
    repeats = 1 if quick else repeats
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-lookup-"))
    try:
        copy_state(population, root)
        daemon = Daemon(write_config(root, {}))
        try:
            if daemon.call("status")["addresses"] != len(population.addresses):
                raise RuntimeError("the daemon does not hold the population")
            runs = measured(daemon.proc.pid, daemon.socket, population.addresses, seconds,
                            repeats)  # fmt: skip
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    floors = floor(population.addresses, seconds, repeats)
    n = len(population.addresses)

    def figure(key: str, of: list[dict[str, Any]]) -> Any:
        return spread(r[key] for r in of)

    rows = [
        Row(f"lookup p50, {n:,} keys, {CLIENTS} clients", "seconds", figure("p50", runs),
            peer_name=FLOOR, peer=figure("p50", floors)),
        Row("lookup p99", "seconds", figure("p99", runs), "< 2 ms",
            figure("p99", runs).median < 0.002, FLOOR, figure("p99", floors),
            f"before: {BEFORE_P99}"),
        Row("daemon CPU per lookup", "seconds", figure("cpu_per_lookup", runs), "<= 0.05 ms",
            figure("cpu_per_lookup", runs).median <= 0.00005, FLOOR,
            figure("cpu_per_lookup", floors), f"before: {BEFORE_CPU}"),
        Row("lookups per second", "per-s", figure("per_second", runs), "> 5,000/s",
            figure("per_second", runs).median > 5000, FLOOR, figure("per_second", floors)),
        Row("share of the cores' time the host stole during the runs", "ratio",
            figure("steal", runs), peer_name=FLOOR, peer=figure("steal", floors)),
    ]  # fmt: skip
    return {"rows": rows, "details": {"keys": n, "clients": CLIENTS, "seconds": seconds,
                                      "runs": runs, "floor_runs": floors}}  # fmt: skip
