"""Staleness benchmark: how long keys go unrefreshed under refreshd's cycle and parcimonie's draw.

Simulated 30 days, 2,000 keys, a 7-day period, every key fresh at the start, fetches taking no
time. Staleness of a key = the longest stretch it went without a fetch (counting from the start
and up to the end of the run), in periods; the table gives its worst, 99th percentile and median
over the keys, and the mean time between fetches times the number of keys (the cycle length
actually achieved), in days.

refreshd: refreshd.core.schedule as the daemon drives it (a fresh random permutation each
cycle, lapses drawn from the cycle's remaining budget, never below minimum_lapse).

parcimonie, as its 0.12 code does it (App::Parcimonie::Daemon, Debian package):
- each iteration reads the keyring and picks ONE key uniformly at random from it
  (pickRandomItems(1, ...): shuffle, take the first); nothing is remembered between iterations,
  so keys are drawn with replacement;
- after fetching it sleeps next_sleep_time: with average = 604800 / number of keys
  (averageLapseTime; one week, unless --average-lapse-time is given), it draws
  rand(2 * average), uniform on [0, 2 * average); if that is below --minimum-lapse-time
  (default 600 s) it sleeps minimum_lapse_time + rand(minimum_lapse_time) instead, uniform on
  [minimum, 2 * minimum). The mean lapse is therefore average + minimum**2 / (2 * average)
  while 2 * average > minimum, and 1.5 * minimum beyond: the cycle stretches silently, by half
  already at about 1,000 keys with the default floor. (Without D-Bus, Perl's sleep also drops
  the fraction of a second; the simulation ignores that.)

Both run with the same minimum lapse. The first scenario uses 180 s, the longest whole minute
for which 2,000 keys fit in a week under refreshd's rule (2,000 * 180 s * 1.5 <= 7 days); the
second uses parcimonie's default 600 s, where both stretch (refreshd says so in `status`). The
third is refreshd's default config (a 30 s floor) with 10,000 keys, which fits the period.

    python -m bench.staleness
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator

from refreshd.core import schedule
from tests.schedule_support import reconcile

DAY = 86400.0
WEEK = 7 * DAY


def refreshd_fetches(
    n_keys: int, *, until: float, period: float, minimum_lapse: float, rng: random.Random
) -> Iterator[tuple[float, int]]:
    """(time, key) of each fetch by refreshd's schedule."""
    state = reconcile(None, [f"{i:05d}" for i in range(n_keys)], rng, 0.0)
    now = 0.0
    while True:
        step = schedule.next_refresh(
            state, now=now, period=period, minimum_lapse=minimum_lapse, rng=rng
        )
        assert step.key is not None
        now += step.lapse
        if now > until:
            return
        yield now, int(step.key)
        state = schedule.mark_done(step.state, step.key)


def parcimonie_lapse(
    n_keys: int, *, period: float, minimum_lapse: float, rng: random.Random
) -> float:
    """next_sleep_time of App::Parcimonie::Daemon, with its one week replaced by `period`."""
    average = period / n_keys
    lapse = rng.uniform(0.0, 2 * average)
    if lapse < minimum_lapse:
        lapse = minimum_lapse + rng.uniform(0.0, minimum_lapse)
    return lapse


def parcimonie_fetches(
    n_keys: int, *, until: float, period: float, minimum_lapse: float, rng: random.Random
) -> Iterator[tuple[float, int]]:
    """(time, key) of each fetch by parcimonie: fetch a random key, then sleep."""
    now = 0.0
    while now <= until:
        yield now, rng.randrange(n_keys)
        now += parcimonie_lapse(n_keys, period=period, minimum_lapse=minimum_lapse, rng=rng)


def staleness(
    fetches: Iterator[tuple[float, int]], n_keys: int, *, until: float, period: float
) -> dict[str, float]:
    last = [0.0] * n_keys
    longest = [0.0] * n_keys
    count = 0
    for at, key in fetches:
        longest[key] = max(longest[key], at - last[key])
        last[key] = at
        count += 1
    worst = sorted(max(gap, until - seen) / period for gap, seen in zip(longest, last, strict=True))
    return {
        "worst": worst[-1],
        "p99": statistics.quantiles(worst, n=100)[98],
        "median": statistics.median(worst),
        "never_fetched": sum(seen == 0.0 for seen in last),
        "fetches": count,
        "cycle_days": until / count * n_keys / DAY,
    }


def run(
    n_keys: int = 2000,
    days: float = 30,
    period: float = WEEK,
    minimum_lapse: float = 180.0,
    seed: int = 1,
) -> dict[str, object]:
    until = days * DAY
    common = {"until": until, "period": period, "minimum_lapse": minimum_lapse}
    ours = refreshd_fetches(n_keys, rng=random.Random(seed), **common)
    theirs = parcimonie_fetches(n_keys, rng=random.Random(seed + 1), **common)
    return {
        "keys": n_keys,
        "days": days,
        "period_days": period / DAY,
        "minimum_lapse": minimum_lapse,
        "effective_period_days": schedule.effective_period(period, minimum_lapse, n_keys) / DAY,
        "refreshd": staleness(ours, n_keys, until=until, period=period),
        "parcimonie": staleness(theirs, n_keys, until=until, period=period),
    }


def main() -> None:
    for minimum_lapse in (180.0, 600.0):
        result = run(minimum_lapse=minimum_lapse)
        print(
            f"{result['keys']} keys, {result['days']:g} days, period {result['period_days']:g} d,"
            f" minimum lapse {minimum_lapse:g} s"
            f" (refreshd's effective period {result['effective_period_days']:.2f} d)"
        )
        print(
            f"  {'staleness in periods':<20} {'worst':>7} {'p99':>6} {'median':>7}"
            f" {'never':>6} {'fetches':>8} {'cycle (d)':>10}"
        )
        for name in ("refreshd", "parcimonie"):
            r = result[name]
            assert isinstance(r, dict)
            print(
                f"  {name:<20} {r['worst']:7.3f} {r['p99']:6.3f} {r['median']:7.3f}"
                f" {r['never_fetched']:6d} {r['fetches']:8d} {r['cycle_days']:10.2f}"
            )


if __name__ == "__main__":
    main()
