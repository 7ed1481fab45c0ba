"""Start to socket-ready: seconds from starting `refreshd run` to its first `status` answer,
with N registered keys in the store (a fresh copy of bench/population.py's state each time)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.population import Population, copy_state
from bench.report import Row, spread
from tests.daemon_proc import Daemon, write_config

POLL = 0.002


class TimedDaemon(Daemon):
    """A Daemon that notes when its socket first answered, polling every POLL seconds."""

    def __init__(self, config: Path) -> None:
        self.began = time.perf_counter()
        self.ready_seconds = 0.0
        super().__init__(config)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = self.began + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"refreshd exited with {self.proc.returncode}")
            try:
                self.call("status")
            except OSError:
                time.sleep(POLL)
                continue
            self.ready_seconds = time.perf_counter() - self.began
            return
        raise TimeoutError("refreshd did not serve its socket")


def run(population: Population, quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    times = []
    keys = 0
    for _ in range(2 if quick else repeats):
        root = Path(tempfile.mkdtemp(prefix="refreshd-bench-start-"))
        try:
            copy_state(population, root)
            daemon = TimedDaemon(write_config(root, {}))
            try:
                keys = daemon.call("status")["keys"]
            finally:
                daemon.stop()
            times.append(daemon.ready_seconds)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    s = spread(times)
    row = Row(f"start to socket-ready, {keys:,} keys", "seconds", s, "< 1 s", s.median < 1.0)
    return {"rows": [row], "details": {"keys": keys, "seconds": times}}
