"""The own-key expiry policy over simulated clocks: never lapses, fixed steps, random moments."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.core.ownpolicy import OwnComponent, Role, plan, planned_moment, sig_time, window

DAY = timedelta(days=1)
EXTEND_BY = timedelta(days=90)
WHEN_LEFT = timedelta(days=60)
NEW_KEY = timedelta(days=180)
T0 = datetime(2024, 3, 5, 14, 27, 13, tzinfo=UTC)


def fresh_key(created: datetime = T0) -> list[OwnComponent]:
    return [
        OwnComponent("P" * 40, Role.PRIMARY, created, created + NEW_KEY),
        OwnComponent("E" * 40, Role.ENCRYPT, created, created + NEW_KEY),
    ]


def apply(components: list[OwnComponent], new: dict[str, datetime]) -> list[OwnComponent]:
    return [
        OwnComponent(c.fingerprint, c.role, c.created, new.get(c.fingerprint, c.expires), c.revoked)
        for c in components
    ]


def run_policy(*, seed: bytes, years: int, offline: set[int] = frozenset()) -> list[dict]:
    """Walk the clock like the daemon: a daily check, and a timer at each planned moment.
    Days in `offline` have no check at all."""
    components, previous, now = fresh_key(), T0, T0
    events = []
    end = T0 + timedelta(days=365 * years)
    while now < end:
        decision = plan(
            components,
            now=now,
            extend_by=EXTEND_BY,
            extend_when_left=WHEN_LEFT,
            previous_signature=previous,
            seed=seed,
        )
        if decision.extend_now:
            before = {c.fingerprint: c.expires for c in components}
            events.append({"now": now, "before": before, "plan": decision})
            components = apply(components, dict(decision.new_expiries))
            previous = decision.signature_time
        for c in components:
            assert c.expires > now, f"{c.role} lapsed at {now}"
        step = now + DAY
        if decision.planned_at and now < decision.planned_at < step:
            step = decision.planned_at
        now = step
        while (now - T0).days in offline:
            now += DAY
    return events


@pytest.mark.parametrize("seed", [b"a", b"b", b"\x00" * 32, bytes(range(32))])
def test_two_years_never_lapse_and_step_by_extend_by(seed: bytes) -> None:
    events = run_policy(seed=seed, years=2)
    assert len(events) >= 7  # 2 years of 90-day steps after the first 6 months
    for event in events:
        new = event["plan"].new_expiries
        assert set(new) == {"P" * 40, "E" * 40}
        for fpr, old in event["before"].items():
            assert new[fpr] - old == EXTEND_BY
            left = old - event["now"]
            assert WHEN_LEFT - window(WHEN_LEFT) <= left <= WHEN_LEFT
        signed = event["plan"].signature_time
        assert signed <= event["now"]
        assert signed == event["now"].replace(hour=0, minute=0, second=0, microsecond=0)


def test_days_offline_still_never_lapse_and_extend_on_return() -> None:
    offline = set(range(100, 170))  # the whole first window and beyond
    events = run_policy(seed=b"offline", years=1, offline=offline)
    first = events[0]
    assert (first["now"] - T0).days == 170
    for fpr, old in first["before"].items():
        assert first["plan"].new_expiries[fpr] == old + EXTEND_BY


def test_planned_moments_spread_over_the_window() -> None:
    expiry = T0 + NEW_KEY
    start = expiry - WHEN_LEFT
    offsets = [
        (
            planned_moment(expiry, extend_when_left=WHEN_LEFT, seed=bytes([i]), fingerprint="F")
            - start
        )
        / window(WHEN_LEFT)
        for i in range(200)
    ]
    assert all(0 <= o < 1 for o in offsets)
    assert min(offsets) < 0.1 and max(offsets) > 0.9
    assert sum(o < 0.5 for o in offsets) in range(70, 131)


def test_planned_moment_is_stable_and_changes_with_the_expiry() -> None:
    expiry = T0 + NEW_KEY
    a = planned_moment(expiry, extend_when_left=WHEN_LEFT, seed=b"s", fingerprint="ab")
    again = planned_moment(expiry, extend_when_left=WHEN_LEFT, seed=b"s", fingerprint="AB")
    later = [
        planned_moment(
            expiry + EXTEND_BY * n, extend_when_left=WHEN_LEFT, seed=b"s", fingerprint="AB"
        )
        - EXTEND_BY * n
        for n in range(1, 6)
    ]
    assert a == again
    assert len({a, *later}) == 6


def test_expired_components_are_extended_at_once_from_today() -> None:
    now = datetime(2025, 1, 20, 9, 30, tzinfo=UTC)
    created = now - timedelta(days=200)
    components = [
        OwnComponent("P" * 40, Role.PRIMARY, created, now - timedelta(days=10)),
        OwnComponent("E" * 40, Role.ENCRYPT, created, now - timedelta(days=10)),
    ]
    decision = plan(
        components,
        now=now,
        extend_by=EXTEND_BY,
        extend_when_left=WHEN_LEFT,
        previous_signature=created,
        seed=b"x",
    )
    today = datetime(2025, 1, 20, tzinfo=UTC)
    assert decision.extend_now and decision.signature_time == today
    assert dict(decision.new_expiries) == {"P" * 40: today + EXTEND_BY, "E" * 40: today + EXTEND_BY}


def test_rotated_out_subkey_is_not_revived_but_a_lone_expired_one_is() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    old = OwnComponent("O" * 40, Role.ENCRYPT, now - 400 * DAY, now - 200 * DAY)
    components = [
        OwnComponent("P" * 40, Role.PRIMARY, now - 400 * DAY, now + 30 * DAY),
        old,
        OwnComponent("N" * 40, Role.ENCRYPT, now - 190 * DAY, now + 30 * DAY),
    ]
    args = {
        "now": now,
        "extend_by": EXTEND_BY,
        "extend_when_left": WHEN_LEFT,
        "previous_signature": now - DAY,
    }
    decision = plan(components, seed=b"r", **args)
    assert decision.extend_now and set(decision.new_expiries) == {"P" * 40, "N" * 40}
    lone = plan([components[0], old], seed=b"r", **args)
    assert set(lone.new_expiries) == {"P" * 40, "O" * 40}


def test_no_expiry_revoked_and_far_components() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    args = {
        "now": now,
        "extend_by": EXTEND_BY,
        "extend_when_left": WHEN_LEFT,
        "previous_signature": now - DAY,
    }
    never = [OwnComponent("P" * 40, Role.PRIMARY, now - DAY, None)]
    assert not plan(never, seed=b"", **args).extend_now
    assert plan(never, seed=b"", **args).planned_at is None
    revoked = [OwnComponent("P" * 40, Role.PRIMARY, now - DAY, now - DAY, revoked=True)]
    assert not plan(revoked, seed=b"", **args).extend_now
    mixed = [
        OwnComponent("P" * 40, Role.PRIMARY, now - 300 * DAY, now + 400 * DAY),
        OwnComponent("E" * 40, Role.ENCRYPT, now - 300 * DAY, now + 5 * DAY),
        OwnComponent("R" * 40, Role.ENCRYPT, now - 300 * DAY, now + 5 * DAY, revoked=True),
    ]
    decision = plan(mixed, seed=b"", **args)
    assert dict(decision.new_expiries) == {"E" * 40: now + 5 * DAY + EXTEND_BY}


def test_clock_behind_the_newest_signature_extends_nothing() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    components = [OwnComponent("P" * 40, Role.PRIMARY, now - 300 * DAY, now - DAY)]
    decision = plan(
        components,
        now=now,
        extend_by=EXTEND_BY,
        extend_when_left=WHEN_LEFT,
        previous_signature=now + DAY,
        seed=b"",
    )
    assert not decision.extend_now and "clock" in decision.reason


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        sig_time(datetime(2025, 1, 1), T0)


@settings(max_examples=300)
@given(
    now=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    back=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
)
def test_signature_time_is_day_rounded_after_the_previous_and_never_ahead(
    now: datetime, back: timedelta
) -> None:
    previous = now - back
    signed = sig_time(now, previous)
    if signed is None:
        assert previous.replace(microsecond=0) + timedelta(seconds=1) > now
        return
    assert previous < signed <= now
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert signed == day or signed == previous.replace(microsecond=0) + timedelta(seconds=1)


@settings(max_examples=200)
@given(
    seed=st.binary(max_size=32),
    when_left=st.integers(min_value=0, max_value=400),
    by=st.integers(min_value=1, max_value=400),
    offset=st.integers(min_value=-500 * 86400, max_value=500 * 86400),
)
def test_plan_invariants(seed: bytes, when_left: int, by: int, offset: int) -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    expires = now + timedelta(seconds=offset)
    components = [
        OwnComponent("P" * 40, Role.PRIMARY, now - 900 * DAY, expires),
        OwnComponent("E" * 40, Role.ENCRYPT, now - 900 * DAY, expires),
    ]
    decision = plan(
        components,
        now=now,
        extend_by=timedelta(days=by),
        extend_when_left=timedelta(days=when_left),
        previous_signature=now - 900 * DAY,
        seed=seed,
    )
    if not decision.extend_now:
        assert decision.planned_at > now
        assert expires - decision.planned_at >= timedelta(days=when_left) * 3 / 4
        return
    for new in decision.new_expiries.values():
        assert new > now
        assert new - expires == timedelta(days=by) or expires <= now


def test_random_seeds_keep_the_floor() -> None:
    rng = random.Random(7)
    for _ in range(20):
        for event in run_policy(seed=rng.randbytes(16), years=1):
            for old in event["before"].values():
                assert old - event["now"] >= WHEN_LEFT - window(WHEN_LEFT)
