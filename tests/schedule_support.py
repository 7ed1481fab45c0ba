"""The schedule driven the way a test states it: "these are the registered keys now"."""

from __future__ import annotations

import random
from collections.abc import Collection

from refreshd.core import schedule


def reconcile(
    state: schedule.CycleState | None,
    keys: Collection[schedule.Key],
    rng: random.Random,
    now: float,
) -> schedule.CycleState:
    """The state for the registered `keys`: the change from `state` applied as a delta."""
    if state is None:
        return schedule.update(None, keys, (), rng, now)
    wanted, present = set(keys), set(state.order)
    return schedule.update(state, wanted - present, present - wanted, rng, now)
