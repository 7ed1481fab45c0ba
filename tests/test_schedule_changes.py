"""The schedule under change: keys come and go, restarts, refresh requests, failing sources."""

import contextlib
import json
import random
from array import array
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.core import schedule
from refreshd.core.schedule import CycleState, Retry, Urgent
from tests.schedule_support import reconcile

PERIOD = 86400.0
FLOOR = 60.0


def round_trip(state: CycleState) -> CycleState:
    """What a restart reads back: the saved small part and the order kept beside it."""
    return schedule.from_json(schedule.to_json(state), state.order)


def names(start: int, stop: int) -> list[str]:
    return [f"key{i:04d}" for i in range(start, stop)]


class Sim:
    """A simulated shell: a clock, a random source and the state it keeps between fetches."""

    def __init__(self, keys: list[str], seed: int, period: float = PERIOD) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.period = period
        self.state = reconcile(None, keys, self.rng, self.now)
        self.log: list[tuple[int, str, str, float]] = []  # cycle, kind, key, lapse
        self.times: list[tuple[int, float]] = []  # cycle, time of the fetch

    def step(self, fails: frozenset[str] = frozenset()) -> schedule.Step:
        step = schedule.next_refresh(
            self.state, now=self.now, period=self.period, minimum_lapse=FLOOR, rng=self.rng
        )
        assert step.key is not None and step.kind is not None
        self.now += step.lapse
        self.log.append((step.state.cycle, step.kind, step.key, step.lapse))
        self.times.append((step.state.cycle, self.now))
        if step.key in fails:
            self.state = schedule.mark_failed(
                step.state, step.key, now=self.now, base=FLOOR, cap=self.period, rng=self.rng
            )
        else:
            self.state = schedule.mark_done(step.state, step.key)
        return step

    def finish_cycle(self, fails: frozenset[str] = frozenset()) -> list[str]:
        """Fetch to the end of the current cycle (the next one if this one is done): its keys."""
        first = len(self.log)
        cycle = self.step(fails).state.cycle
        while self.state.position < len(self.state.order) or self.state.urgent:
            self.step(fails)
        assert self.state.cycle == cycle
        return [key for _, _, key, _ in self.log[first:]]

    def change(self, keys: list[str]) -> None:
        self.state = reconcile(self.state, keys, self.rng, self.now)


def test_keys_added_mid_cycle_are_refreshed_in_that_cycle() -> None:
    sim = Sim(names(0, 200), seed=1)
    for _ in range(80):
        sim.step()
    pending = set(sim.state.order[sim.state.position :])
    sim.change(names(0, 230))
    rest = sim.finish_cycle()
    assert sorted(rest) == sorted(pending | set(names(200, 230)))
    places = [i for i, key in enumerate(rest) if key in set(names(200, 230))]
    assert places[0] < len(rest) // 3 and places[-1] > 2 * len(rest) // 3  # spread, not appended
    assert sorted(sim.finish_cycle()) == names(0, 230)


def test_removed_keys_are_not_refreshed() -> None:
    sim = Sim(names(0, 200), seed=2)
    for _ in range(100):
        sim.step()
    done, pending = sim.state.order[: sim.state.position], sim.state.order[sim.state.position :]
    removed = set(done[:20]) | set(pending[:20])
    kept = sorted(set(names(0, 200)) - removed)
    sim.change(kept)
    first = len(sim.log)
    rest = sim.finish_cycle()
    assert sorted(rest) == sorted(set(pending) - removed)
    assert sorted(sim.finish_cycle()) == kept
    assert removed.isdisjoint(key for _, _, key, _ in sim.log[first:])


def test_a_restart_mid_cycle_continues_the_cycle() -> None:
    sim = Sim(names(0, 300), seed=3)
    for _ in range(120):
        sim.step()
    done = set(sim.state.order[: sim.state.position])
    restored = round_trip(sim.state)
    assert restored == sim.state
    after = Sim([], seed=99)  # a new process: another random source, an hour later
    after.state, after.now = restored, sim.now + 3600
    rest = after.finish_cycle()
    assert len(rest) == 180 and done.isdisjoint(rest)
    assert sorted(after.finish_cycle()) == names(0, 300)


def test_a_cycle_behind_after_downtime_catches_up_then_starts_afresh() -> None:
    sim = Sim(names(0, 100), seed=4)
    for _ in range(30):
        sim.step()
    sim.now += 2 * PERIOD  # down past the deadline
    late = sim.now
    rest = sim.finish_cycle()
    lapses = [lapse for _, _, _, lapse in sim.log[30:]]
    assert len(rest) == 70 and min(lapses) >= FLOOR
    assert sum(lapses) / len(lapses) == pytest.approx(FLOOR * (1 + schedule.JITTER), rel=0.25)
    sim.step()
    assert sim.state.cycle == 2 and sim.state.started_at >= late


def test_a_refresh_request_goes_first_and_counts_as_the_cycle_turn() -> None:
    sim = Sim(names(0, 100), seed=5)
    for _ in range(10):
        sim.step()
    wanted = sim.state.order[-1]  # the last key of the cycle
    due, sim.state = schedule.request(
        sim.state, wanted, now=sim.now, minimum_lapse=FLOOR, rng=sim.rng
    )
    assert sim.now <= due <= sim.now + FLOOR
    again, sim.state = schedule.request(
        sim.state, wanted, now=sim.now + 1, minimum_lapse=FLOOR, rng=sim.rng
    )
    assert again == due
    step = sim.step()
    assert (step.key, step.kind, step.law) == (wanted, "urgent", None)
    assert sim.now == pytest.approx(due) and 0 <= step.lapse <= FLOOR
    rest = sim.finish_cycle()
    assert wanted not in rest and len(rest) == 89


def test_a_refresh_request_for_a_key_done_this_cycle_is_an_extra_fetch() -> None:
    sim = Sim(names(0, 100), seed=6)
    for _ in range(10):
        sim.step()
    done = sim.state.order[3]
    _, sim.state = schedule.request(sim.state, done, now=sim.now, minimum_lapse=FLOOR, rng=sim.rng)
    assert sim.step().key == done
    rest = sim.finish_cycle()
    assert done not in rest and len(rest) == 90
    assert done in sim.finish_cycle()


def test_urgent_lapses_are_spread_over_zero_to_the_minimum_lapse() -> None:
    sim = Sim(names(0, 50), seed=7)
    lapses = []
    for i in range(400):
        _, sim.state = schedule.request(
            sim.state, f"key{i % 50:04d}", now=sim.now, minimum_lapse=FLOOR, rng=sim.rng
        )
        lapses.append(sim.step().lapse)
    assert 0 <= min(lapses) < 0.05 * FLOOR and 0.95 * FLOOR < max(lapses) <= FLOOR
    assert sum(lapses) / len(lapses) == pytest.approx(FLOOR / 2, rel=0.1)


def test_a_failing_key_backs_off_while_the_others_keep_their_schedule() -> None:
    sim = Sim(names(0, 50), seed=9)
    bad = sim.state.order[0]
    delays: list[tuple[int, float]] = []  # failures so far, delay before the next retry
    windows: dict[int, float] = {}
    while sim.state.cycle <= 4:
        step = sim.step(fails=frozenset({bad}))
        windows[step.state.cycle] = step.state.started_at
        if step.key == bad:
            (retry,) = sim.state.retries
            delays.append((retry.failures, retry.due - sim.now))
    for cycle in range(1, 5):
        fetched = [(key, kind) for c, kind, key, _ in sim.log if c == cycle]
        others = sorted(key for key, _ in fetched if key != bad)
        assert others == sorted(set(names(0, 50)) - {bad})
    attempts = [(c, kind) for c, kind, key, _ in sim.log if key == bad]
    assert {kind for _, kind in attempts} == {"cycle", "retry"}
    assert [f for f, _ in delays] == list(range(1, len(delays) + 1))
    waits = [d for f, d in delays if FLOOR * 2 ** (f - 1) <= PERIOD]  # below the cap: growing
    assert all(b >= a for a, b in pairwise(waits)) and waits[-1] > 100 * waits[0]
    assert max(d for _, d in delays) <= PERIOD
    ends = {c: max(at for c2, at in sim.times if c2 == c) for c in range(1, 5)}
    for cycle in range(1, 4):  # the others kept each cycle's deadline despite the retries
        assert ends[cycle] <= windows[cycle] + PERIOD
        assert windows[cycle + 1] == pytest.approx(windows[cycle] + PERIOD)


def test_many_failing_keys_cannot_stall_the_cycle() -> None:
    sim = Sim(names(0, 50), seed=13)
    failing = frozenset(names(0, 20))
    for cycle in range(1, 4):
        fetched = sim.finish_cycle(fails=failing)
        assert sim.state.cycle == cycle
        assert sorted(k for k in fetched if k not in failing) == names(20, 50)
        assert 50 < len(fetched) <= 2 * 50  # retries, but never two without the cycle moving on


def test_success_clears_the_failure_count() -> None:
    sim = Sim(names(0, 10), seed=10)
    key = sim.state.order[0]
    for _ in range(3):
        sim.state = schedule.mark_failed(
            sim.state, key, now=sim.now, base=FLOOR, cap=PERIOD, rng=sim.rng
        )
    assert [(r.key, r.failures) for r in sim.state.retries] == [(key, 3)]
    sim.state = schedule.mark_done(sim.state, key)
    assert sim.state.retries == ()
    sim.state = schedule.mark_failed(
        sim.state, key, now=sim.now, base=FLOOR, cap=PERIOD, rng=sim.rng
    )
    assert [r.failures for r in sim.state.retries] == [1]


def test_a_failure_reported_after_the_key_was_removed_leaves_no_retry() -> None:
    sim = Sim(names(0, 10), seed=11)
    step = schedule.next_refresh(
        sim.state, now=0.0, period=PERIOD, minimum_lapse=FLOOR, rng=sim.rng
    )
    assert step.key is not None
    kept = [k for k in names(0, 10) if k != step.key]
    gone = reconcile(step.state, kept, sim.rng, 1.0)
    after = schedule.mark_failed(gone, step.key, now=2.0, base=FLOOR, cap=PERIOD, rng=sim.rng)
    assert after.retries == () and step.key not in after.order
    assert round_trip(after) == after


@pytest.mark.parametrize("failures", [1, 2, 3, 7, 20, 10**6])
def test_backoff_grows_is_jittered_and_capped(failures: int) -> None:
    rng = random.Random(failures)
    base, cap = 60.0, 86400.0
    ceiling = min(cap, base * 2 ** min(failures - 1, 64))
    draws = [schedule.backoff(failures, base=base, cap=cap, rng=rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in draws)
    assert max(draws) - min(draws) > ceiling / 4  # jittered, not a fixed delay
    if failures > 1:
        previous = min(cap, base * 2 ** min(failures - 2, 64))
        assert min(draws) >= previous / 2 and ceiling / 2 >= previous / 2


@pytest.mark.parametrize(
    ("failures", "base", "cap"), [(0, 60.0, 600.0), (1, 0.0, 600.0), (1, 60.0, 30.0)]
)
def test_backoff_refuses_nonsense(failures: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        schedule.backoff(failures, base=base, cap=cap, rng=random.Random(0))


def test_no_keys_means_nothing_to_fetch_until_keys_arrive() -> None:
    rng = random.Random(12)
    empty = reconcile(None, [], rng, 0.0)
    step = schedule.next_refresh(empty, now=0.0, period=PERIOD, minimum_lapse=FLOOR, rng=rng)
    assert (step.key, step.lapse, step.kind) == (None, float("inf"), None)
    filled = reconcile(empty, ["a", "b"], rng, 10.0)
    step = schedule.next_refresh(filled, now=10.0, period=PERIOD, minimum_lapse=FLOOR, rng=rng)
    assert step.key in {"a", "b"} and step.kind == "cycle" and step.lapse >= FLOOR


def test_state_round_trips_through_json() -> None:
    state = CycleState(
        cycle=7,
        order=("a", "b", 'c\u00e9"\n'),
        position=1,
        started_at=1.5e9,
        urgent=(Urgent('c\u00e9"\n', 1.5e9 + 3),),
        retries=(Retry("a", 1.5e9 + 600.25, 4),),
        owed=True,
    )
    assert round_trip(state) == state
    assert schedule.from_json(schedule.to_json(state).encode(), state.order) == state


GOOD = json.loads(
    schedule.to_json(CycleState(1, ("a", "b"), 1, 0.0, (Urgent("b", 5.0),), (Retry("a", 9.0, 2),)))
)


@pytest.mark.parametrize(
    "change",
    [
        {"version": 1},
        {"version": 3},
        {"keys": 3},
        {"keys": -1},
        {"version": True},
        {"cycle": 0},
        {"cycle": True},
        {"cycle": 1.5},
        {"position": 3},
        {"position": -1},
        {"started_at": "0"},
        {"started_at": None},
        {"started_at": 10**400},
        {"urgent": [["z", 1.0]]},
        {"urgent": [["b", 1.0], ["b", 2.0]]},
        {"urgent": [["b"]]},
        {"urgent": {"b": 1.0}},
        {"retries": [["a", 1.0, 0]]},
        {"retries": [["a", 1.0, 2.0]]},
        {"retries": [["a", 1.0]]},
        {"owed": 1},
        {"owed": None},
    ],
)
def test_malformed_state_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        schedule.from_json(json.dumps({**GOOD, **change}), ("a", "b"))


@pytest.mark.parametrize("order", [("a", "a"), ("a",), ("a", "b", "c"), ("b", "c")])
def test_an_order_that_does_not_fit_the_state_is_refused(order: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        schedule.from_json(json.dumps(GOOD), order)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        '{"version": 2}',
        json.dumps({**GOOD, "extra": 1}),
        json.dumps(GOOD).replace("0.0", "NaN"),
        json.dumps(GOOD).replace("0.0", "1e999"),
        json.dumps(GOOD).replace("9.0", "-Infinity"),
        b"\xff\xfe\x00",
    ],
)
def test_garbage_is_refused(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        schedule.from_json(text, ("a", "b"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(deadline=None)  # the machine may be busy; speed is not what is tested
@given(st.fixed_dictionaries(dict.fromkeys(GOOD, JSON_VALUES)) | JSON_VALUES)
def test_any_json_is_parsed_or_refused_with_value_error(value: object) -> None:
    try:
        state = schedule.from_json(json.dumps(value), ("a", "b"))
    except ValueError:
        return
    assert round_trip(state) == state


@settings(deadline=None)
@given(st.text() | st.binary())
def test_any_text_is_parsed_or_refused_with_value_error(text: str | bytes) -> None:
    with contextlib.suppress(ValueError):
        schedule.from_json(text, ("a", "b"))


@pytest.mark.parametrize(("n_added", "n_dropped"), [(1, 1), (3, 2), (100, 50)])
def test_a_change_applied_as_a_delta_keeps_the_cycle(n_added: int, n_dropped: int) -> None:
    """Small changes (a scan per key) and large ones (an index of the order) alike: what was
    done stays done in its order, what waits keeps its order, new keys join what waits."""
    sim = Sim(names(0, 300), seed=21)
    for _ in range(100):
        sim.step()
    before = sim.state
    dropped = set(before.order[50 : 50 + n_dropped // 2]) | set(
        before.order[200 : 200 + n_dropped - n_dropped // 2]
    )
    added = names(1000, 1000 + n_added)
    after = schedule.update(before, added, dropped, sim.rng, sim.now)
    kept_done = [k for k in before.order[: before.position] if k not in dropped]
    kept_pending = [k for k in before.order[before.position :] if k not in dropped]
    assert list(after.order[: after.position]) == kept_done
    pending = list(after.order[after.position :])
    assert [k for k in pending if k not in added] == kept_pending
    assert sorted(k for k in pending if k in added) == added
    assert len(set(after.order)) == len(after.order) == 300 - n_dropped + n_added
    # applying the same change again changes nothing
    assert schedule.update(after, added, dropped, sim.rng, sim.now) is after


def test_an_order_of_integer_ids_stays_an_array_through_every_change() -> None:
    """The daemon's order is an array("q") (8 bytes a key); each function keeps that kind and
    behaves as with a tuple."""
    rng = random.Random(31)
    as_tuple = reconcile(None, range(200), random.Random(5), 0.0)
    state = replace(as_tuple, order=array("q", as_tuple.order))
    for _ in range(50):
        step = schedule.next_refresh(state, now=0.0, period=PERIOD, minimum_lapse=FLOOR, rng=rng)
        state = schedule.mark_done(step.state, step.key)
    _, state = schedule.request(state, state.order[-1], now=0.0, minimum_lapse=FLOOR, rng=rng)
    step = schedule.next_refresh(state, now=0.0, period=PERIOD, minimum_lapse=FLOOR, rng=rng)
    assert step.kind == "urgent"
    state = schedule.mark_done(step.state, step.key)  # out of turn: the order is rebuilt
    assert isinstance(state.order, array) and state.order[state.position - 1] == step.key
    state = schedule.update(state, [500, 501], [state.order[0], state.order[-1]], rng, 1.0)
    assert isinstance(state.order, array) and sorted(state.order) == sorted(set(state.order))
    assert len(state.order) == 200 and {500, 501} <= set(state.order[state.position :])
    new = schedule.next_cycle(state, now=2.0, period=PERIOD, minimum_lapse=FLOOR, rng=rng)
    assert isinstance(new.order, array) and sorted(new.order) == sorted(state.order)
    assert new.order != state.order and new.position == 0
    assert schedule.from_json(schedule.to_json(new), new.order) == new
