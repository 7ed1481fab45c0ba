"""`python -m bench [--quick] [--only CASE ...] [--out DIR]`: every case of the benchmark in one
run, refreshd and its peers side by side; prints the Markdown table and writes results.json
and results.md (into bench/ for a full run; a quick run writes elsewhere unless --out says
so, so its smaller figures never replace published ones).

Cases (see bench/README.md): wire, cpu, flood, lookup, idle, startup, staleness, tor, door,
scale, corpus, perspectives, hostile. Servers and data are made fresh on loopback (tests/world,
tests/keyfactory) and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.engine import discard_logs
from bench.report import Row, spread
from refreshd.config import RefreshConfig

BENCH_DIR = Path(__file__).resolve().parent
TITLES = {
    "wire": "1. bytes for one refresh cycle",
    "cpu": "2. CPU per refreshed key",
    "flood": "3. flooded key",
    "lookup": "4. socket lookup",
    "idle": "5. idle daemon",
    "startup": "6. start to socket-ready",
    "staleness": "7. worst key staleness",
    "tor": "8. refresh over the private Tor network",
    "door": "9. keyserver door lookup",
    "scale": "10. the loop's cost at 1k / 10k / 100k keys",
    "corpus": "11. strip + read per real-world key",
    "perspectives": "12. first contact over two network paths",
    "hostile": "13. hostile and persistent clients",
}
POPULATION = 10_000
POPULATION_QUICK = 300


def flood_case(quick: bool) -> dict[str, Any]:
    """bench.flood's figures as rows (one run: the 150,000-certification key is built once)."""
    from bench import flood

    sizes = {"certifications": 20_000, "pgpy_certifications": 2_000} if quick else {}
    result = flood.run(**sizes)
    n = result["certifications"]
    strip, gpg, pgpy = result["strip_and_read"], result["gpg_import"], result["pgpy_parse"]
    cap = result["over_cap"]
    rows = [
        Row(f"strip + read, {n:,} certifications ({result['armored_mb']:.0f} MB armored)",
            "seconds", spread([strip["seconds"]]), "< 2 s", strip["seconds"] < 2,
            "gpg --import", spread([gpg["seconds"]])),
        Row("peak RSS of that process", "mb", spread([strip["peak_rss_mb"]]), "< 200 MB",
            strip["peak_rss_mb"] < 200, "gpg --import", spread([gpg["peak_rss_mb"]]),
            "upper bound: a child's ru_maxrss"),
        Row(f"pgpy parse alone, {pgpy['certifications']:,} certifications (smaller: pgpy is "
            "slow)", "seconds", None, "", None, "pgpy", spread([pgpy["seconds"]]),
            f"peak {pgpy['peak_rss_mb']:.0f} MB"),
        Row("blob over the response cap", "count", None, "refused", cap["rejected"], "",
            None, f"refused: {cap['reason']}" if cap["rejected"] else "NOT refused"),
    ]  # fmt: skip
    return {"rows": rows, "details": result}


def staleness_case(quick: bool) -> dict[str, Any]:
    from bench import staleness

    seeds = range(1, 3 if quick else 6)
    rows, details = [], {}
    default = float(RefreshConfig().minimum_lapse)
    scenarios = [(2000, 180.0, ""), (2000, 600.0, ""), (10_000, default, ", the default config")]
    for n_keys, minimum_lapse, note in scenarios:
        runs = [
            staleness.run(n_keys=n_keys, minimum_lapse=minimum_lapse, seed=seed) for seed in seeds
        ]
        details[f"keys_{n_keys}_minimum_lapse_{minimum_lapse:.0f}"] = runs
        first = runs[0]
        worst = spread(r["refreshd"]["worst"] for r in runs)
        peer = spread(r["parcimonie"]["worst"] for r in runs)
        stretched = first["effective_period_days"] > first["period_days"]
        # The target holds where N * minimum_lapse fits the period; beyond it both stretch.
        target, met = ("", None) if stretched else ("<= 2 periods", worst.max <= 2)
        rows.append(
            Row(f"worst staleness: {first['keys']:,} keys, {first['days']:g} d, period "
                f"{first['period_days']:g} d, minimum lapse {minimum_lapse:.0f} s "
                f"(refreshd's cycle: {first['effective_period_days']:.1f} d; {len(runs)} seeds)"
                f"{note}",
                "periods", worst, target, met, "parcimonie's sampling with replacement", peer)
        )  # fmt: skip
    return {"rows": rows, "details": details}


def _case(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"bench: {TITLES[name]} ...", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        result = fn()
        out = {
            "name": name,
            "title": TITLES[name],
            "rows": [report.row_json(r) for r in result["rows"]],
            "details": result.get("details", {}),
        }
    except Exception as exc:  # a failed case is reported, the others still run
        traceback.print_exc()
        out = {"name": name, "title": TITLES[name], "rows": [], "error": f"{exc}"[:300]}
    out["seconds"] = time.monotonic() - began
    print(f"bench: {name} took {out['seconds']:.0f} s", file=sys.stderr, flush=True)
    return out


ORDER = (
    "wire",
    "cpu",
    "flood",
    "corpus",
    "lookup",
    "door",
    "startup",
    "staleness",
    "scale",
    "idle",
    "hostile",
    "tor",
    "perspectives",
)


def run_cases(selected: list[str], quick: bool) -> list[dict[str, Any]]:
    """Cases in ORDER; the Tor world starts only for the last three, so its relays' CPU does not
    share the machine with the other cases."""
    from bench import (
        corpus,
        cpu,
        door,
        hostile,
        idle,
        lookup,
        perspectives,
        population,
        scale,
        startup,
        tor_refresh,
        wire,
    )
    from tests.world import World

    results = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="refreshd-bench-")))
        pop = None
        if {"lookup", "door", "idle", "startup"} & set(selected):
            print("bench: building the daemon population ...", file=sys.stderr, flush=True)
            pop = population.build(tmp / "population", POPULATION_QUICK if quick else POPULATION)
        world: World | None = None

        def tor_world() -> World:
            nonlocal world
            if world is None:
                print("bench: starting the private Tor network ...", file=sys.stderr, flush=True)
                world = stack.enter_context(World(tmp, with_tor=True))
            return world

        def tor_section() -> dict[str, str]:
            tor = tor_world().tor
            assert tor is not None
            return tor.daemon_config()

        cases: dict[str, Callable[[], dict[str, Any]]] = {
            "wire": lambda: wire.run(quick),
            "cpu": lambda: cpu.run(quick),
            "flood": lambda: flood_case(quick),
            "corpus": lambda: corpus.run(quick),
            "lookup": lambda: lookup.run(pop, quick),
            "door": lambda: door.run(pop, quick),
            "startup": lambda: startup.run(pop, quick),
            "staleness": lambda: staleness_case(quick),
            "scale": lambda: scale.run(quick),
            "idle": lambda: idle.run(pop, tor_section(), quick),
            "tor": lambda: tor_refresh.run(tor_world(), quick),
            "perspectives": lambda: perspectives.run(tor_world(), quick),
            "hostile": lambda: hostile.run(quick),
        }
        for name in ORDER:
            if name in selected:
                results.append(_case(name, cases[name]))
    return sorted(results, key=lambda case: list(TITLES).index(case["name"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    parser.add_argument("--only", nargs="+", choices=list(TITLES), help="run only these cases")
    parser.add_argument("--out", type=Path, help="where results.json and results.md go")
    args = parser.parse_args(argv)
    out = args.out or (
        Path(tempfile.gettempdir()) / "refreshd-bench-quick" if args.quick else BENCH_DIR
    )
    discard_logs()
    selected = args.only or list(TITLES)
    info = report.machine()
    began = time.monotonic()
    info["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    info["versions"] = report.versions()
    cases = run_cases(selected, args.quick)
    info["run_seconds"] = time.monotonic() - began
    info["quick"] = args.quick
    info["load_after"] = os.getloadavg()[0]
    table = report.markdown(cases, info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"machine": info, "cases": cases}, indent=1, default=_json_default) + "\n"
    )
    (out / "results.md").write_text(table)
    print(table)
    print(f"bench: wrote {out / 'results.json'} and {out / 'results.md'}", file=sys.stderr)
    return 1 if any(c.get("error") for c in cases) else 0


def _json_default(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[arg-type]
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
