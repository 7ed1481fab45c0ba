"""What a hostile or merely persistent world costs a real `refreshd run` (issue 14):

- lookup latency of an address observed N times with the same key (30,000 in a full run)
  against a freshly registered one: a repeated observation updates one decision row, so the
  two should be alike (target: p99 within 2x);
- a second client's `status` latency while a key with 3,500 subkeys is observed (the key is
  checked in a worker process, so the socket keeps answering; target: max < 100 ms);
- the socket fuzz target's rate (tests/test_socket_hostile.py), 100,000 lines, 0 crashes.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.report import Row, spread
from refreshd.openpgp.packets import armor
from tests.daemon_proc import Daemon, write_config
from tests.keyfactory import many_subkeys, pgpy_key
from tests.test_socket_hostile import run_fuzz

PIPELINE = 200  # observes sent on one connection before reading their answers


def _observe_many(d: Daemon, address: str, key: str, times: int) -> None:
    line = (
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "observe",
                "params": {"address": address, "key": key, "origin": "autocrypt"},
            }
        ).encode()
        + b"\n"
    )
    sent = 0
    while sent < times:
        n = min(PIPELINE, times - sent)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(d.socket))
            writer = threading.Thread(target=s.sendall, args=(line * n,))
            writer.start()
            answers, buf = 0, b""
            while answers < n:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed")
                answers += chunk.count(b"\n")
                buf += chunk
            writer.join()
        sent += n


def _latencies(d: Daemon, address: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        d.call("lookup", address=address, discover=False)
        out.append(time.perf_counter() - started)
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def run(quick: bool = False) -> dict[str, Any]:
    observes = 1_000 if quick else 30_000
    fuzz_lines = 10_000 if quick else 100_000
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-hostile-"))
    try:
        d = Daemon(write_config(root, {}))
        try:
            seen = armor(pgpy_key("Seen <seen@example.org>", expires=timedelta(days=400)))
            fresh = armor(pgpy_key("Fresh <fresh@example.org>", expires=timedelta(days=400)))
            began = time.monotonic()
            _observe_many(d, "seen@example.org", seen, observes)
            observe_seconds = time.monotonic() - began
            _observe_many(d, "fresh@example.org", fresh, 1)
            often, once = (
                _latencies(d, a, 1000) for a in ("seen@example.org", "fresh@example.org")
            )
            rows_after = len(d.call("history", address="seen@example.org")["decisions"])
            status = _status_while_big_key(d)
            began = time.monotonic()
            codes = run_fuzz(d, fuzz_lines, seed=14)
            fuzz_seconds = time.monotonic() - began
            alive = d.proc.poll() is None
        finally:
            d.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = p99(often) / p99(once)
    rows = [
        Row(f"lookup p99 after {observes:,} unchanged observes", "seconds", spread([p99(often)])),
        Row("lookup p99 of a fresh address", "seconds", spread([p99(once)])),
        Row("ratio of the two", "ratio", spread([ratio]), "< 2", ratio < 2),
        Row(f"decision rows after {observes:,} observes", "count", spread([rows_after])),
        Row(
            "status while a 3,500-subkey key is checked (max)",
            "seconds",
            spread([max(status)]),
            "< 100 ms",
            max(status) < 0.1,
        ),
        Row(
            f"fuzz: {fuzz_lines:,} socket lines",
            "per-s",
            spread([fuzz_lines / fuzz_seconds]),
            "0 crashes",
            alive,
        ),
    ]
    details = {
        "observes_per_s": observes / observe_seconds,
        "status_answers_during_big_key": len(status),
        "fuzz_answers": codes,
    }
    return {"rows": rows, "details": details}


def _status_while_big_key(d: Daemon) -> list[float]:
    key = armor(many_subkeys(pgpy_key("Big <big@example.org>", expires=timedelta(days=400)), 3500))
    latencies: list[float] = []
    done = threading.Event()

    def observe() -> None:
        try:
            d.call("observe", address="big@example.org", key=key, origin="autocrypt")
        finally:
            done.set()

    worker = threading.Thread(target=observe)
    worker.start()
    while not done.is_set():
        started = time.perf_counter()
        d.call("status")
        latencies.append(time.perf_counter() - started)
        time.sleep(0.01)
    worker.join()
    return latencies
