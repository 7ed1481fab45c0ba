"""Thirty simulated days of 2,000 keys with a 7-day period: no key waits over two periods.

The comparison with parcimonie's sampling with replacement is in bench/staleness.py.
"""

import random

import pytest

from refreshd.core import schedule

DAY = 86400.0
PERIOD = 7 * DAY
FLOOR = 180.0  # the longest whole-minute floor for which 2,000 keys fit in a week
N_KEYS = 2000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_key_goes_unrefreshed_for_more_than_two_periods(seed: int) -> None:
    assert schedule.effective_period(PERIOD, FLOOR, N_KEYS) == PERIOD
    rng = random.Random(seed)
    keys = [f"key{i:04d}" for i in range(N_KEYS)]
    state = schedule.reconcile(None, keys, rng, 0.0)
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
