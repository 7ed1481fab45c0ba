"""Figures, the machine they came from, and the table that shows them.

Rules:
- A figure is every repeat's value plus min/median/max; the table shows the median with the
  range, so one noisy repeat cannot pass for the result.
- A ratio is refreshd's median over the peer's median of the same figure in the same run.
- A row whose peer did not run says why in the peer column; it never shows a number from
  elsewhere.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import refreshd


@dataclass(frozen=True)
class Spread:
    min: float
    median: float
    max: float
    values: tuple[float, ...]


def spread(values: Iterable[float]) -> Spread:
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("a figure needs at least one value")
    return Spread(min(vals), statistics.median(vals), max(vals), vals)


@dataclass(frozen=True)
class Row:
    """One line of the table: a measure of refreshd and, when there is one, of its peer."""

    measure: str
    unit: str  # bytes | seconds | count | ratio | mb | cpu-s/min | per-s | periods
    refreshd: Spread | None
    target: str = ""
    met: bool | None = None
    peer_name: str = ""
    peer: Spread | None = None
    peer_note: str = ""  # why the peer has no number, or how it was run

    @property
    def ratio(self) -> float | None:
        if self.refreshd is None or self.peer is None or self.peer.median == 0:
            return None
        return self.refreshd.median / self.peer.median


def row_json(row: Row) -> dict[str, Any]:
    out = asdict(row)
    out["ratio"] = row.ratio
    return out


# -- formatting ----------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if unit == "bytes":
        for size, name in ((1e6, "MB"), (1e3, "kB")):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.0f} B"
    if unit == "seconds":
        if abs(value) < 1:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"
    if unit == "mb":
        return f"{value:.1f} MB"
    if unit in ("count", "per-s"):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:.3g}"


def fmt_spread(s: Spread | None, unit: str) -> str:
    if s is None:
        return "—"
    suffix = {"per-s": "/s", "cpu-s/min": " CPU-s/min", "periods": " periods"}.get(unit, "")
    low, high = fmt(s.min, unit), fmt(s.max, unit)
    if low == high:
        return fmt(s.median, unit) + suffix
    return f"{fmt(s.median, unit)}{suffix} ({low}–{high})"


def markdown(cases: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """The README table: one row per measure; median (min–max) over the repeats."""
    lines = [
        "| case | measure | refreshd | compared with | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        if case.get("error"):
            lines.append(f"| {case['title']} | did not run: {case['error']} | | | | | |")
            continue
        for i, row in enumerate(case["rows"]):
            unit = row["unit"]
            r = _spread_of(row["refreshd"])
            p = _spread_of(row["peer"])
            if row["peer_name"]:
                peer = f"{row['peer_name']}: " + (
                    fmt_spread(p, unit) if p is not None else row["peer_note"]
                )
                if p is not None and row["peer_note"]:
                    peer += f" ({row['peer_note']})"
            else:
                peer = row["peer_note"] or "—"
            ratio = f"{row['ratio']:.3g}×" if row["ratio"] is not None else "—"
            met = {True: "yes", False: "**no**", None: ""}[row["met"]]
            title = case["title"] if i == 0 else ""
            lines.append(
                f"| {title} | {row['measure']} | {fmt_spread(r, unit)} | {peer} | {ratio} "
                f"| {row['target']} | {met} |"
            )
    quick = " (quick mode: smaller sizes, not figures to publish)" if machine["quick"] else ""
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']:.1f} GB RAM, "
        f"{machine['os']}; load average {machine['load_before']:.1f} before the run. "
        f"Date: {machine['date']}. Whole run: {machine['run_seconds']:.0f} s{quick}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _spread_of(raw: dict[str, Any] | None) -> Spread | None:
    if raw is None:
        return None
    return Spread(raw["min"], raw["median"], raw["max"], tuple(raw["values"]))


# -- the machine -----------------------------------------------------------------------------


def _first_line(argv: list[str], pattern: str) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = done.stdout + done.stderr
    found = re.search(pattern, text)
    return found.group(1) if found else text.strip().splitlines()[0] if text.strip() else "?"


def _package_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return "unknown"
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
    )
    return done.stdout.strip() or "not installed"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "refreshd": refreshd.__version__,
        "gpg": _first_line(["gpg", "--version"], r"gpg \(GnuPG\) (\S+)"),
        "sq": _first_line(["sq", "--version"], r"sq (\S+)"),
        "tor": _first_line(["tor", "--version"], r"Tor version ([\d.]*\d)"),
        "nginx": _first_line(["nginx", "-v"], r"nginx/(\S+)"),
        "sks": _first_line(["sks", "version"], r"SKS version (\S+)"),
        "parcimonie": _package_version("parcimonie"),
    }


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    found = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M)
    return found.group(1) if found else platform.system()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": mem_kb / 1024 / 1024,
        "os": f"{_os_name()}, {platform.system()} {platform.release()}",
        "python_executable": sys.executable,
        "load_before": os.getloadavg()[0],
    }
