"""Thirty simulated days of 2,000 keys with a 7-day period: no key waits over two periods.

The comparison with parcimonie's sampling with replacement is in bench/staleness.py.
"""

import random

import pytest

from refreshd.config import RefreshConfig
from refreshd.core import schedule
from tests.schedule_support import reconcile

DAY = 86400.0
PERIOD = 7 * DAY
FLOOR = 180.0  # the longest whole-minute floor for which 2,000 keys fit in a week
N_KEYS = 2000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_key_goes_unrefreshed_for_more_than_two_periods(seed: int) -> None:
    assert schedule.effective_period(PERIOD, FLOOR, N_KEYS) == PERIOD
    rng = random.Random(seed)
    keys = [f"key{i:04d}" for i in range(N_KEYS)]
    state = reconcile(None, keys, rng, 0.0)
    last = dict.fromkeys(keys, 0.0)  # every key fresh when the run starts
    longest = dict.fromkeys(keys, 0.0)
    now, end = 0.0, 30 * DAY
    while True:
        step = schedule.next_refresh(state, now=now, period=PERIOD, minimum_lapse=FLOOR, rng=rng)
        assert step.key is not None
        now += step.lapse
        if now > end:
            break
        longest[step.key] = max(longest[step.key], now - last[step.key])
        last[step.key] = now
        state = schedule.mark_done(step.state, step.key)
    worst = max(max(longest[k], end - last[k]) for k in keys)
    assert worst <= 2 * PERIOD
    assert worst > 1.5 * PERIOD  # a key early in one cycle and late in the next: as expected
    assert state.cycle == 5  # 30 days hold four full weeks and part of a fifth


def test_with_the_default_config_ten_thousand_keys_are_refreshed_once_per_period() -> None:
    """The default floor (config.RefreshConfig) lets 10,000 keys fit the default 7-day period:
    the cycle is not lengthened, each 7-day cycle fetches every key once, none waits more than
    two periods."""
    defaults = RefreshConfig()
    period, floor, n = float(defaults.period), float(defaults.minimum_lapse), 10_000
    assert period == PERIOD
    assert schedule.effective_period(period, floor, n) == period
    rng = random.Random(7)
    state = reconcile(None, range(n), rng, 0.0)
    last = [0.0] * n
    longest = [0.0] * n
    per_cycle: dict[int, list[int]] = {}
    now, end = 0.0, 3 * PERIOD
    while True:
        step = schedule.next_refresh(state, now=now, period=period, minimum_lapse=floor, rng=rng)
        assert isinstance(step.key, int)
        now += step.lapse
        if now > end:
            break
        assert step.lapse >= floor
        longest[step.key] = max(longest[step.key], now - last[step.key])
        last[step.key] = now
        per_cycle.setdefault(step.state.cycle, []).append(step.key)
        state = schedule.mark_done(step.state, step.key)
    for cycle in (1, 2):
        assert sorted(per_cycle[cycle]) == list(range(n))
    assert max(max(g, end - t) for g, t in zip(longest, last, strict=True)) <= 2 * PERIOD
    assert state.cycle in (3, 4)  # three 7-day cycles, the fourth begun or about to
