"""A long undisturbed run of the schedule: once per cycle, the lapse law, fresh orders.

Seeded random sources and a simulated clock (each fetch is instantaneous); no sleeping.
"""

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest

from refreshd.core import schedule
from tests.schedule_support import reconcile

DAY = 86400.0
PERIOD = 7 * DAY
FLOOR = 20.0  # 10,000 keys * 20 s * 1.5 fits in a week, so the period is not stretched
N_KEYS = 10_000
CYCLES = 3


@dataclass(frozen=True)
class Fetch:
    cycle: int
    key: str
    at: float
    lapse: float
    law: schedule.LapseLaw
    cycle_start: float


def walk(
    n_keys: int, cycles: int, *, period: float, minimum_lapse: float, seed: int
) -> list[Fetch]:
    rng = random.Random(seed)
    state = reconcile(None, [f"key{i:05d}" for i in range(n_keys)], rng, 0.0)
    now, fetches = 0.0, []
    while True:
        step = schedule.next_refresh(
            state, now=now, period=period, minimum_lapse=minimum_lapse, rng=rng
        )
        if step.state.cycle > cycles:
            return fetches
        assert step.kind == "cycle" and step.key is not None and step.law is not None
        now += step.lapse
        fetches.append(
            Fetch(step.state.cycle, step.key, now, step.lapse, step.law, step.state.started_at)
        )
        state = schedule.mark_done(step.state, step.key)


@pytest.fixture(scope="module")
def run() -> list[Fetch]:
    return walk(N_KEYS, CYCLES, period=PERIOD, minimum_lapse=FLOOR, seed=20240605)


def ks_pvalue(samples: Sequence[float], cdf: Callable[[float], float]) -> float:
    """One-sample Kolmogorov-Smirnov test, asymptotic p-value (Stephens' small-n correction)."""
    u = sorted(cdf(x) for x in samples)
    n = len(u)
    d = max(max((i + 1) / n - v, v - i / n) for i, v in enumerate(u))
    x = d * (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n))
    if x < 0.2:
        return 1.0
    p = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, 101))
    return min(1.0, max(0.0, p))


def order_of(fetches: list[Fetch], cycle: int) -> list[str]:
    return [f.key for f in fetches if f.cycle == cycle]


def spearman(a: list[str], b: list[str]) -> float:
    """Rank correlation of the positions of the same keys in two orders."""
    where = {k: i for i, k in enumerate(b)}
    n = len(a)
    d2 = sum((i - where[k]) ** 2 for i, k in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))


def kept_successors(a: list[str], b: list[str]) -> int:
    """How many keys have the same successor in both orders (about 1 for independent orders)."""
    after = dict(pairwise(b))
    return sum(after.get(x) == y for x, y in pairwise(a))


def commonest_shift(a: list[str], b: list[str]) -> int:
    """How many keys moved by the same offset (mod n): n for any rotation, a few if random."""
    where = {k: i for i, k in enumerate(b)}
    return Counter((where[k] - i) % len(a) for i, k in enumerate(a)).most_common(1)[0][1]


def test_every_key_once_per_cycle(run: list[Fetch]) -> None:
    keys = {f"key{i:05d}" for i in range(N_KEYS)}
    for cycle in range(1, CYCLES + 1):
        order = order_of(run, cycle)
        assert len(order) == N_KEYS
        assert set(order) == keys


def test_each_cycle_ends_by_its_deadline(run: list[Fetch]) -> None:
    for cycle in range(1, CYCLES + 1):
        start = (cycle - 1) * PERIOD
        times = [f.at for f in run if f.cycle == cycle]
        assert start + FLOOR <= min(times)
        assert max(times) <= start + PERIOD


def test_mean_lapse_is_period_over_n(run: list[Fetch]) -> None:
    mean = sum(f.lapse for f in run) / len(run)
    assert mean == pytest.approx(PERIOD / N_KEYS, rel=0.02)


def test_no_lapse_below_minimum(run: list[Fetch]) -> None:
    assert min(f.lapse for f in run) >= FLOOR


def test_each_lapse_follows_its_stated_law(run: list[Fetch]) -> None:
    """Probability integral transform: law.cdf(lapse) must be uniform on [0, 1]."""
    transformed = [f.law.cdf(f.lapse) for f in run]
    assert ks_pvalue(transformed, lambda u: u) > 0.01


def truncated_exponential(mean: float, floor: float) -> Callable[[float], float]:
    return lambda x: 0.0 if x < floor else -math.expm1(-(x - floor) / (mean - floor))


def test_lapses_are_exponential_truncated_at_the_floor(run: list[Fetch]) -> None:
    """Measured from the cycle's start for each cycle's first fetch (the rest is waiting)."""
    lapses = [min(f.lapse, f.at - f.cycle_start) for f in run]
    assert ks_pvalue(lapses, truncated_exponential(PERIOD / N_KEYS, FLOOR)) > 0.01


def test_the_distribution_test_rejects_other_laws_with_the_same_mean_and_floor() -> None:
    rng = random.Random(7)
    mean = PERIOD / N_KEYS
    uniform = [rng.uniform(FLOOR, 2 * mean - FLOOR) for _ in range(N_KEYS * CYCLES)]
    regular = [mean + rng.gauss(0, math.sqrt(mean)) for _ in range(N_KEYS * CYCLES)]
    for lapses in (uniform, regular):
        assert ks_pvalue(lapses, truncated_exponential(mean, FLOOR)) < 1e-6


def test_consecutive_orders_are_uncorrelated(run: list[Fetch]) -> None:
    bound = 4 / math.sqrt(N_KEYS)  # four standard deviations of rho for independent orders
    for cycle in range(1, CYCLES):
        a, b = order_of(run, cycle), order_of(run, cycle + 1)
        assert abs(spearman(a, b)) < bound
        assert kept_successors(a, b) <= 6
        assert commonest_shift(a, b) <= 12


def test_the_order_statistics_catch_fixed_and_rotated_orders() -> None:
    a = [f"key{i:05d}" for i in range(N_KEYS)]
    shuffled = a[:]
    random.Random(3).shuffle(shuffled)
    assert abs(spearman(a, a[::-1]) + 1) < 1e-9
    assert spearman(shuffled, shuffled) == pytest.approx(1.0)
    for shift in (1, N_KEYS // 5, N_KEYS // 2):
        rotated = shuffled[shift:] + shuffled[:shift]
        assert kept_successors(shuffled, rotated) > N_KEYS // 2
        assert commonest_shift(shuffled, rotated) == N_KEYS


def test_too_many_keys_for_the_period_lengthen_the_cycle() -> None:
    n, floor = 1000, 600.0  # 1,000 ten-minute floors alone take 6.9 days of a 7-day period
    stretched = schedule.effective_period(PERIOD, floor, n)
    assert stretched == n * floor * (1 + schedule.JITTER) > PERIOD
    fetches = walk(n, CYCLES, period=PERIOD, minimum_lapse=floor, seed=11)
    for cycle in range(1, CYCLES + 1):
        order = order_of(fetches, cycle)
        assert sorted(order) == sorted(f"key{i:05d}" for i in range(n))
        span = fetches[cycle * n - 1].at - fetches[(cycle - 1) * n].cycle_start
        assert span == pytest.approx(stretched, rel=0.05)
    assert min(f.lapse for f in fetches) >= floor
    assert sum(f.lapse for f in fetches) / len(fetches) == pytest.approx(stretched / n, rel=0.02)


def test_effective_period_is_the_period_when_the_floors_fit() -> None:
    assert schedule.effective_period(PERIOD, 600.0, 600) == PERIOD
    assert schedule.effective_period(PERIOD, 600.0, 0) == PERIOD
    assert schedule.effective_period(PERIOD, 0.0, 10**9) == PERIOD
