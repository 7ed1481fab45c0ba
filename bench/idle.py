"""An idle daemon holding N keys: resident memory and CPU over a fixed window, refreshd against
parcimonie.

Both are watched through /proc/PID: CPU = utime + stime of the process itself (children
waited for are reported apart), resident set = VmRSS, peak = VmHWM. The window starts once
each is settled: refreshd when its socket answers and Tor is ready (the private Tor network of
the run, when there is one); parcimonie when it has read its keyring, tried its first fetch
and printed that it is sleeping. The window is cut into slices; each slice is one value of
the CPU figure.

parcimonie runs as packaged (/usr/bin/parcimonie) on a GnuPG home holding the same keys, with
a keyserver on the command line; it turns on dirmngr's use-tor, which expects Tor on
127.0.0.1:9050, so its fetch fails there unless a system Tor runs, and it then sleeps, which is
what is measured.
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import subprocess
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench import population as pop
from bench.report import Row, spread
from tests.daemon_proc import Daemon, write_config

TICK = os.sysconf("SC_CLK_TCK")
PARCIMONIE = "parcimonie"


def sample(pid: int) -> dict[str, float]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key] = int(value.split()[0]) / 1024
    return {
        "at": time.monotonic(),
        "cpu": (int(fields[11]) + int(fields[12])) / TICK,
        "children_cpu": (int(fields[13]) + int(fields[14])) / TICK,
        "rss_mb": status["VmRSS"],
        "hwm_mb": status["VmHWM"],
    }


def watch(pid: int, seconds: float, slices: int) -> dict[str, Any]:
    points = [sample(pid)]
    for _ in range(slices):
        time.sleep(seconds / slices)
        points.append(sample(pid))
    rates = [(b["cpu"] - a["cpu"]) / (b["at"] - a["at"]) * 60 for a, b in pairwise(points)]
    first, last = points[0], points[-1]
    return {
        "cpu_per_min_slices": rates,
        "cpu_seconds": last["cpu"] - first["cpu"],
        "children_cpu_seconds": last["children_cpu"] - first["children_cpu"],
        "window_seconds": last["at"] - first["at"],
        "rss_mb": [p["rss_mb"] for p in points],
        "peak_mb": last["hwm_mb"],
        "cpu_before_window": first["cpu"],
    }


def _refreshd(
    population: pop.Population, root: Path, tor: dict[str, str] | None, seconds: float, slices: int
) -> dict[str, Any]:
    pop.copy_state(population, root)
    sections: dict[str, dict[str, Any]] = {"tor": tor} if tor else {}
    daemon = Daemon(write_config(root, sections))
    try:
        deadline = time.monotonic() + 60
        state = daemon.call("status")["tor"]["state"]
        while tor and state != "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
            state = daemon.call("status")["tor"]["state"]
        time.sleep(2)
        out = watch(daemon.proc.pid, seconds, slices)
        status = daemon.call("status")
        out["tor_state"] = status["tor"]["state"]
        out["keys"] = status["keys"]
        out["fetches_during_run"] = sum(
            1 for e in daemon.audit() if e["event"] in ("refresh.fetched", "refresh.failed")
        )
        return out
    finally:
        daemon.stop()


def _parcimonie(home: Path, seconds: float, slices: int, timeout: float) -> dict[str, Any]:
    """Its stdout is a terminal so that Perl flushes each line (a pipe would hold the
    'Sleeping' line in a buffer)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [PARCIMONIE, "--gnupg_homedir", str(home), "--gnupg_extra_args=--keyserver=hkp://127.0.0.1:9"],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(follower)
    sleeping = threading.Event()

    def read() -> None:
        with open(leader, "rb", buffering=0) as terminal:
            buffered = b""
            with contextlib.suppress(OSError):  # EIO once parcimonie is gone
                while chunk := terminal.read(4096):
                    buffered = (buffered + chunk)[-4096:]
                    if b'"Sleeping"' in buffered:
                        sleeping.set()

    threading.Thread(target=read, daemon=True).start()
    started = time.monotonic()
    try:
        if not sleeping.wait(timeout):
            raise RuntimeError(f"parcimonie did not reach its first sleep in {timeout:.0f} s")
        settle = time.monotonic() - started
        time.sleep(2)
        out = watch(proc.pid, seconds, slices)
        out["seconds_to_first_sleep"] = settle
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def run(
    population: pop.Population,
    tor: dict[str, str] | None,
    quick: bool = False,
    parcimonie_keys: int | None = None,
) -> dict[str, Any]:
    seconds, slices = (6.0, 2) if quick else (60.0, 3)
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-idle-"))
    try:
        ours = _refreshd(population, root / "refreshd", tor, seconds, slices)
        theirs: dict[str, Any] | None = None
        note = ""
        if shutil.which(PARCIMONIE) is None:
            note = "peer cannot run this case (parcimonie is not installed)"
        else:
            began = time.monotonic()
            n = pop.gnupg_home(population, root / "gnupg", parcimonie_keys)
            theirs = {"keys": n, "keyring_import_seconds": time.monotonic() - began}
            theirs.update(_parcimonie(root / "gnupg", seconds, slices, 120 if quick else 900))
            if n != len(population.addresses):
                note = f"keyring of {n:,} keys"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = ours["keys"]
    tor_note = "Tor ready" if ours["tor_state"] == "ready" else f"Tor {ours['tor_state']}"
    rss = spread(ours["rss_mb"])
    cpu = spread(ours["cpu_per_min_slices"])
    peak = spread([ours["peak_mb"]])
    name = "parcimonie idle"
    p_rss = spread(theirs["rss_mb"]) if theirs else None
    p_cpu = spread(theirs["cpu_per_min_slices"]) if theirs else None
    p_peak = spread([theirs["peak_mb"]]) if theirs else None
    rows = [
        Row(f"idle RSS, {n:,} keys, {seconds:.0f} s ({tor_note})", "mb", rss, "< 60 MB",
            rss.max < 60, name, p_rss, note),
        Row("idle peak RSS (VmHWM, start included)", "mb", peak, "", None, name, p_peak, note),
        Row(f"idle CPU ({slices} slices of {seconds / slices:.0f} s)", "cpu-s/min", cpu,
            "< 0.1 CPU-s/min", cpu.median < 0.1, name, p_cpu, note),
    ]  # fmt: skip
    return {"rows": rows, "details": {"refreshd": ours, "parcimonie": theirs}}
