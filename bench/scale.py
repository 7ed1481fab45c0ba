"""Scale: what the daemon's loop costs at 1,000, 10,000 and 100,000 registered keys.

Why: every request and every refresh step runs on the daemon's one trio thread, so anything
that grows with the number of keys makes every client wait. Each figure here should be flat
in N (target: within 2x of its 1,000-key value at 100,000 keys).

The store is synthetic, so that 100,000 keys take seconds to make: each address has its own
registered fingerprint (random), all sharing the bytes of one real minimal key, written
through Store.put_key / Store.apply / Store.put_source as first contact over WKD leaves them
(the store's triggers keep their ids, counters and change log as in real use). No figure
here parses key bytes.

Against a `refreshd run` subprocess (tests/daemon_proc, Tor pointed nowhere as in the lookup
case), started STARTS times on a fresh copy of the store (once in quick mode), from a client
on the socket (each figure pools the starts: the median start for READY and the loop
blocked, every start's calls for the p50s, the largest RSS):
- start to READY: seconds from the process start to its first `status` answer;
- loop blocked after READY: the longest `lookup` (discover false) of those sent back to back
  during the first 2 s after READY (the refresh loop's first step, first save included);
- `status` and `refresh` (by fingerprint): p50 and max over 30 calls each;
- idle RSS: VmRSS from /proc after the calls and 3 s of rest.

In process (bench/engine.py: the daemon's parts without the socket), with the refresh fetch
stubbed (a coroutine that says "refreshed") and trio's MockClock skipping the lapses; a step's
figure is the CPU time of the loop's thread (time.thread_time), the loop's own work, which
leaves out what a worker thread does meanwhile:
- one refresh-loop step: p50 and max over 30 steps;
- the step that draws a new cycle (the shuffle and packing in a worker thread, then the
  save): p50 over 5, with the state moved to the end of its cycle first: the loop's CPU for
  the draw, under the real clock (MockClock's autojump would make the idle loop spin while
  the worker thread shuffles), plus the plain step's p50 for the rest of the step. Each draw
  comes after a real lapse of LAPSE seconds, as every step of the daemon comes after its
  lapse (at least minimum_lapse, 30 s by default). That matters on this machine: a thread
  that has been idle for more than a few milliseconds wakes cold, and the loop's first
  ~0.3 ms of work after any such wait costs that much CPU whatever the wait was for
  (trio.sleep or a worker thread alike; a wait of 1 ms costs about 0.1 ms). Drawn with no
  lapse before it, the 1,000-key draw found the loop warm (its worker answers in 0.2 ms)
  and the 100,000-key one cold (the shuffle takes 25 ms): a difference of wake-ups, not of
  work (0.42 ms at 1,000 keys, 0.92 ms at 100,000 in one such run). Drawn right after
  another draw, with no lapse between, is a row of its own without a target;
- while that step runs with the real clock, a concurrent task on the loop answers
  `KeyManager.describe` (the lookup RPC's work) back to back: the longest answer.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from bench import keyset
from bench.engine import engine
from bench.report import Row, spread
from refreshd.core.levels import Level, Way
from refreshd.core.rules import Decision, DecisionKind, Rule
from refreshd.keymanager import facts_of
from refreshd.net import wkd
from refreshd.openpgp.keyview import read_key
from refreshd.store import Source, Store, iso
from tests.daemon_proc import Daemon, write_config

SIZES = (1_000, 10_000, 100_000)
SIZES_QUICK = (1_000, 10_000)
CALLS = 30
STARTS = 3  # daemon starts per size: a burst of the host's noise spoils one start, not a figure
DRAWS = 5
LAPSE = 0.05  # seconds of real lapse before each new cycle's step (the daemon's are >= 30 s)


def build(state_dir: Path, n: int) -> list[tuple[str, str]]:
    """A store with n registered keys; returns (address, fingerprint) of each."""
    raw = keyset.minimal_key("scale@example.org", int(time.time()) - 86400)
    facts = facts_of(read_key(raw, datetime.now(UTC)))
    rng = random.Random(n)
    now = datetime.now(UTC)
    out = []
    store = Store(state_dir / "refreshd.sqlite3")
    try:
        with store.transaction():
            for i in range(n):
                address = f"user{i:06d}@scale{i % 97}.example.org"
                fpr = f"{rng.getrandbits(160):040X}"
                store.put_key(replace(facts, fingerprint=fpr), raw, now)
                reason = f"First key found for {address}, at level provider-trust from wkd."
                store.apply(
                    address,
                    Decision(
                        DecisionKind.REGISTERED,
                        fpr,
                        Level.PROVIDER_TRUST,
                        Way.WKD,
                        True,
                        Rule.FIRST_CONTACT,
                        reason,
                    ),
                    now,
                )
                store.put_source(
                    Source(
                        url=wkd.requests_for(address)[0].url,
                        kind=Way.WKD,
                        address=address,
                        fingerprint=fpr,
                        last_fetch=iso(now),
                        last_status="200",
                    )
                )
                out.append((address, fpr))
        store.maintain()
    finally:
        store.close()
    return out


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    began = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - began


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def daemon_figures(template: Path, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-scale-"))
    rng = random.Random(1)
    try:
        shutil.copytree(template, root / "state")
        config = write_config(root, {})
        began = time.perf_counter()
        daemon = Daemon(config)  # returns at the first `status` answer
        ready = time.perf_counter() - began
        try:
            blocked = []
            until = time.perf_counter() + 2.0
            while time.perf_counter() < until:
                address = rng.choice(pairs)[0]
                blocked.append(_timed(daemon.call, "lookup", address=address, discover=False))
            status = [_timed(daemon.call, "status") for _ in range(CALLS)]
            refresh = [
                _timed(daemon.call, "refresh", fingerprint=rng.choice(pairs)[1])
                for _ in range(CALLS)
            ]
            keys = daemon.call("status")["keys"]
            time.sleep(3)
            rss = _rss_mb(daemon.proc.pid)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "keys": keys,
        "ready_seconds": ready,
        "blocked_after_ready_seconds": max(blocked),
        "lookups_after_ready": len(blocked),
        "status_seconds": status,
        "refresh_seconds": refresh,
        "idle_rss_mb": rss,
    }


def engine_figures(template: Path, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-scale-"))
    try:
        shutil.copytree(template, root / "state")
        eng = engine(root / "state", {"tor": {"mode": "off", "allow_clearnet": True}})
        try:
            refresher = eng.refresher

            async def refreshed(fingerprint: str) -> bool:
                return True

            refresher.refresh = refreshed  # type: ignore[method-assign]

            async def steps() -> list[float]:
                return [await _atimed(refresher._step) for _ in range(CALLS)]

            plain = trio.run(steps, clock=trio.testing.MockClock(autojump_threshold=0))

            async def draw() -> float:
                refresher.state = replace(refresher.state, position=len(refresher.state.order))
                return await _atimed(refresher._new_cycle)

            async def draws() -> tuple[list[float], list[float]]:
                after_lapse, at_once = [], []
                for _ in range(DRAWS):
                    await trio.sleep(LAPSE)
                    after_lapse.append(await draw())
                    at_once.append(await draw())
                return after_lapse, at_once

            # the real clock: with the mock one's autojump the idle loop spins while the
            # worker thread shuffles, and that spin is no work of the step
            step = statistics.median(plain)
            after_lapse, at_once = trio.run(draws)
            new_cycle = [draw + step for draw in after_lapse]
            new_cycle_at_once = [draw + step for draw in at_once]

            async def concurrent() -> list[float]:
                answers: list[float] = []
                rng = random.Random(2)
                refresher.state = replace(refresher.state, position=len(refresher.state.order))
                async with trio.open_nursery() as nursery:
                    done = trio.Event()

                    async def new_cycle() -> None:
                        await refresher._new_cycle()
                        done.set()

                    nursery.start_soon(new_cycle)
                    while not done.is_set():
                        began = time.perf_counter()
                        await trio.lowlevel.checkpoint()
                        eng.keys.describe(rng.choice(pairs)[0], with_key=False)
                        answers.append(time.perf_counter() - began)
                return answers

            answers = trio.run(concurrent)
        finally:
            eng.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "step_seconds": plain,
        "new_cycle_seconds": new_cycle,
        "new_cycle_at_once_seconds": new_cycle_at_once,
        "lookup_during_new_cycle_max_seconds": max(answers),
        "lookups_during_new_cycle": len(answers),
    }


async def _atimed(fn: Any) -> float:
    """CPU seconds of the loop's own thread (a worker thread's share is not the loop's)."""
    began = time.thread_time()
    await fn()
    return time.thread_time() - began


def run(quick: bool = False) -> dict[str, Any]:
    sizes = SIZES_QUICK if quick else SIZES
    details: dict[int, dict[str, Any]] = {}
    for n in sizes:
        template = Path(tempfile.mkdtemp(prefix=f"refreshd-bench-scale-{n}-"))
        try:
            pairs = build(template, n)
            starts = [daemon_figures(template, pairs) for _ in range(1 if quick else STARTS)]
            details[n] = {
                **{key: [value for one in starts for value in _listed(one[key])]
                   for key in starts[0]},
                **engine_figures(template, pairs),
            }  # fmt: skip
        finally:
            shutil.rmtree(template, ignore_errors=True)
    return {"rows": rows(details), "details": {str(n): d for n, d in details.items()}}


FIGURES = [  # key in details, label, unit, how a run's list becomes one value, 2x target
    ("ready_seconds", "start to READY (median of the starts)", "seconds", statistics.median,
     True),
    ("blocked_after_ready_seconds", "loop blocked after READY (longest lookup of a start; "
     "median of the starts)", "seconds", statistics.median, True),
    ("status_seconds", "`status` (p50 of every start's calls)", "seconds", statistics.median,
     True),
    ("refresh_seconds", "`refresh` by fingerprint (p50 of every start's calls)", "seconds",
     statistics.median, True),
    ("step_seconds", "one refresh-loop step, fetch stubbed (p50)", "seconds", statistics.median,
     True),
    ("new_cycle_seconds", "the step that draws a new cycle, after its lapse (p50)", "seconds",
     statistics.median, True),
    ("new_cycle_at_once_seconds", "the same step right after another draw, no lapse between "
     "(p50)", "seconds", statistics.median, False),
    ("idle_rss_mb", "idle RSS (the largest of the starts)", "mb", max, True),
]  # fmt: skip


def rows(details: dict[int, dict[str, Any]]) -> list[Row]:
    first = min(details)
    out = []
    for key, label, unit, reduce, targeted in FIGURES:
        base = _value(details[first][key], reduce)
        for n, d in details.items():
            value = _value(d[key], reduce)
            target, met = "", None
            if n == first:
                note = "the reference for the larger stores"
            else:
                if targeted:
                    target, met = f"<= 2x the {first:,}-key value", value <= 2 * base
                note = f"{value / base:.2f}x the {first:,}-key value"
            if key == "idle_rss_mb" and n == max(SIZES):
                target, met = "< 60 MB", value < 60
            out.append(Row(f"{label}, {n:,} keys", unit, spread([value]), target, met,
                           "", None, note))  # fmt: skip
    for n, d in details.items():
        if n == max(SIZES):
            worst = d["lookup_during_new_cycle_max_seconds"]
            out.append(Row(f"lookup while a new cycle is drawn, {n:,} keys (longest of "
                           f"{d['lookups_during_new_cycle']})", "seconds", spread([worst]),
                           "< 20 ms", worst < 0.020))  # fmt: skip
    return out


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _value(raw: Any, reduce: Any) -> float:
    return float(reduce(raw) if reduce else raw)


def main() -> None:
    result = run(quick=bool(os.environ.get("QUICK")))
    for row in result["rows"]:
        print(row)


if __name__ == "__main__":
    main()
