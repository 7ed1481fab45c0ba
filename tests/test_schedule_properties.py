"""Properties of the schedule under arbitrary sequences of changes, requests and restarts."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from refreshd.core import schedule
from tests.schedule_support import reconcile

UNIVERSE = [f"k{i}" for i in range(12)]
KEY_SETS = st.frozensets(st.sampled_from(UNIVERSE))
PERIOD = 3600.0
BASE = 30.0  # first retry after 15 to 30 s


class Schedule(RuleBasedStateMachine):
    """A shell that registers and drops keys, gets requests, fails, crashes and restarts.

    The model: the keys attempted in the current cycle. A cycle turn never picks one of them;
    when a new cycle starts every registered key has been attempted in the one that ended;
    between two retries the cycle moved on.
    """

    @initialize(keys=KEY_SETS, seed=st.integers(0, 2**64), floor=st.sampled_from([0, 60, 400]))
    def start(self, keys: frozenset[str], seed: int, floor: float) -> None:
        self.rng = random.Random(seed)
        self.floor = float(floor)  # 400 s: 9 keys or more stretch the cycle
        self.now = 0.0
        self.registered = set(keys)
        self.state = reconcile(None, keys, self.rng, self.now)
        self.cycle = self.state.cycle
        self.attempted: set[str] = set()
        self.moved_on = True  # the cycle moved on since the last retry

    @rule(keys=KEY_SETS)
    def change(self, keys: frozenset[str]) -> None:
        self._change(keys)

    def _change(self, keys: frozenset[str]) -> None:
        self.state = reconcile(self.state, keys, self.rng, self.now)
        self.attempted &= keys  # a key dropped and registered again is a new key
        self.registered = set(keys)

    @rule(data=st.data())
    def request(self, data: st.DataObject) -> None:
        if not self.registered:
            return
        key = data.draw(st.sampled_from(sorted(self.registered)))
        queued = {u.key: u.due for u in self.state.urgent}
        due, self.state = schedule.request(
            self.state, key, now=self.now, minimum_lapse=self.floor, rng=self.rng
        )
        if key in queued:  # asked again: still due when first asked
            assert due == queued[key]
        else:
            assert self.now <= due <= self.now + self.floor

    @rule()
    def restart(self) -> None:
        restored = schedule.from_json(schedule.to_json(self.state), self.state.order)
        assert restored == self.state
        self.state = restored
        self.rng = random.Random(self.rng.getrandbits(64))

    @rule(pause=st.floats(0, 3 * PERIOD))
    def downtime(self, pause: float) -> None:
        self.now += pause

    @rule(
        outcomes=st.lists(st.tuples(st.booleans(), st.floats(0, 120)), min_size=1, max_size=30),
        during=st.none() | KEY_SETS,
    )
    def fetch(self, outcomes: list[tuple[bool, float]], during: frozenset[str] | None) -> None:
        """Fetches one after another (failed?, seconds each took); keys may change in the first."""
        for i, (failed, duration) in enumerate(outcomes):
            self._fetch(failed, duration, during if i == 0 else None)

    def _fetch(self, failed: bool, duration: float, during: frozenset[str] | None) -> None:
        step = schedule.next_refresh(
            self.state, now=self.now, period=PERIOD, minimum_lapse=self.floor, rng=self.rng
        )
        if not self.registered:
            assert step.key is None and step.lapse == float("inf")
            return
        assert step.key in self.registered
        if step.state.cycle != self.cycle:
            assert step.state.cycle == self.cycle + 1
            assert self.attempted >= self.registered
            self.cycle, self.attempted = step.state.cycle, set()
        if step.kind == "urgent":
            assert 0 <= step.lapse <= self.floor
        else:
            assert step.lapse >= self.floor
        if step.kind == "cycle":
            assert step.key not in self.attempted
        if step.kind == "retry":
            assert self.moved_on
            self.moved_on = False
        self.now += step.lapse + duration
        self.state = step.state
        if during is not None:  # the keys changed while the fetch was under way
            self._change(during)
        if failed:
            self.state = schedule.mark_failed(
                self.state, step.key, now=self.now, base=BASE, cap=PERIOD, rng=self.rng
            )
        else:
            self.state = schedule.mark_done(self.state, step.key)
        if step.key in self.registered:
            self.moved_on |= step.key not in self.attempted
            self.attempted.add(step.key)

    @invariant()
    def consistent(self) -> None:
        state = self.state
        assert sorted(state.order) == sorted(self.registered)
        assert 0 <= state.position <= len(state.order)
        assert {u.key for u in state.urgent} <= self.registered
        assert {r.key for r in state.retries} <= self.registered
        assert set(state.order[: state.position]) <= self.attempted


TestSchedule = Schedule.TestCase
TestSchedule.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@settings(deadline=None)
@given(
    before=st.lists(st.sampled_from(UNIVERSE), unique=True),
    position=st.integers(0, len(UNIVERSE)),
    after=KEY_SETS,
    seed=st.integers(0, 2**32),
)
def test_reconcile_keeps_what_was_done_and_the_order_of_what_was_not(
    before: list[str], position: int, after: frozenset[str], seed: int
) -> None:
    position = min(position, len(before))
    state = schedule.CycleState(1, tuple(before), position, 0.0)
    new = reconcile(state, after, random.Random(seed), 10.0)
    assert sorted(new.order) == sorted(after)
    assert new.order[: new.position] == tuple(k for k in before[:position] if k in after)
    pending = new.order[new.position :]
    assert tuple(k for k in pending if k in before) == tuple(
        k for k in before[position:] if k in after
    )
    # an empty cycle's clock restarts when keys arrive; otherwise the cycle keeps its start
    restarted = not before and bool(after)
    assert (new.cycle, new.started_at) == (1, 10.0 if restarted else 0.0)
