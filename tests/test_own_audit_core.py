"""The own-key audit's pure core: the lapse law and what each directory's answer means."""

from __future__ import annotations

import math
import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd.core import ownaudit
from refreshd.core.ownaudit import Answer, Observation, OwnFacts, Result, Served, State

DAY = 86400.0
NOW = datetime(2027, 3, 1, 12, tzinfo=UTC)
OWN = OwnFacts("A" * 40, "alice@example.org", NOW + timedelta(days=120))
OTHER = "B" * 40


# -- the lapse law --------------------------------------------------------------------------


def _ks_uniform(values: list[float]) -> float:
    """Kolmogorov-Smirnov distance of values in [0, 1) from the uniform law."""
    xs = sorted(values)
    n = len(xs)
    return max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(xs))


def _ks_exponential(values: list[float], mean: float) -> float:
    return _ks_uniform([1.0 - math.exp(-v / mean) for v in values])


def _moments(lapses: list[float], start: float = 0.0) -> list[float]:
    t, out = start, []
    for lapse in lapses:
        t += lapse
        out.append(t)
    return out


N = 20000
KS_1_PERCENT = 1.63 / math.sqrt(N)  # the 1% critical value for this many samples


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lapses_have_the_configured_mean_and_an_exponential_spread(seed: int) -> None:
    rng = random.Random(seed)
    lapses = [ownaudit.next_lapse(DAY, rng) for _ in range(N)]

    mean = statistics.fmean(lapses)
    spread = statistics.pstdev(lapses)
    assert abs(mean - DAY) < 4 * DAY / math.sqrt(N)  # the mean is the period
    assert 0.95 < spread / mean < 1.05  # as wide as the mean: no cadence to link audits
    assert _ks_exponential(lapses, DAY) < KS_1_PERCENT
    assert min(lapses) < 0.01 * DAY and max(lapses) > 5 * DAY


@pytest.mark.parametrize("seed", [4, 5])
def test_audit_moments_have_no_phase_against_the_clock(seed: int) -> None:
    rng = random.Random(seed)
    moments = _moments([ownaudit.next_lapse(DAY, rng) for _ in range(N)], start=9 * 3600.0)

    # the time of day of the audits is uniform (no hour betrays the user's schedule) ...
    assert _ks_uniform([(t % DAY) / DAY for t in moments]) < KS_1_PERCENT
    # ... and so is the phase against the period itself and against the hour
    assert _ks_uniform([(t % 3600.0) / 3600.0 for t in moments]) < KS_1_PERCENT


def test_the_phase_check_catches_a_schedule_with_a_fixed_hour() -> None:
    """The check above can fail: a daily audit with an hour of jitter has a visible phase."""
    rng = random.Random(6)
    moments = [k * DAY + 9 * 3600.0 + rng.uniform(-1800, 1800) for k in range(N)]
    assert _ks_uniform([(t % DAY) / DAY for t in moments]) > 10 * KS_1_PERCENT


def test_each_address_draws_its_own_moments() -> None:
    rng = random.Random(7)
    a = _moments([ownaudit.next_lapse(DAY, rng) for _ in range(200)])
    b = _moments([ownaudit.next_lapse(DAY, rng) for _ in range(200)])
    assert a != b
    assert len({round(t) for t in a} & {round(t) for t in b}) < 5


def test_a_non_positive_mean_is_refused() -> None:
    with pytest.raises(ValueError):
        ownaudit.next_lapse(0, random.Random(1))


# -- findings -------------------------------------------------------------------------------


def obs(answer: Answer, *served: Served, source: str = "wkd", **kw: object) -> Observation:
    return Observation(source, f"https://{source}.example/x", answer, tuple(served), **kw)  # type: ignore[arg-type]


def served(fpr: str = OWN.fingerprint, days: float = 120, **kw: object) -> Served:
    return Served(fpr, NOW + timedelta(days=days), **kw)  # type: ignore[arg-type]


def test_the_own_key_with_the_current_expiry_is_ok() -> None:
    f = ownaudit.finding(OWN, obs(Answer.KEYS, served()))
    assert f.result is Result.OK and not f.mismatch
    assert f.served == (OWN.fingerprint,)


def test_another_key_for_the_own_address_is_a_mismatch_naming_it() -> None:
    f = ownaudit.finding(OWN, obs(Answer.KEYS, served(OTHER)))
    assert f.result is Result.OTHER_KEY and f.mismatch
    assert OTHER in f.detail and f.served == (OTHER,)


def test_another_key_next_to_the_own_key_is_a_mismatch_too() -> None:
    f = ownaudit.finding(OWN, obs(Answer.KEYS, served(), served(OTHER)))
    assert f.result is Result.OTHER_KEY
    assert f.served == (OWN.fingerprint, OTHER)


@pytest.mark.parametrize("days", [60, None])
def test_an_older_expiry_or_none_is_stale(days: float | None) -> None:
    key = Served(OWN.fingerprint, None if days is None else NOW + timedelta(days=days))
    f = ownaudit.finding(OWN, obs(Answer.KEYS, key, source="vks"))
    assert f.result is Result.STALE_EXPIRY and f.mismatch


def test_a_later_expiry_than_ours_is_not_stale() -> None:
    assert ownaudit.finding(OWN, obs(Answer.KEYS, served(days=200))).result is Result.OK


@pytest.mark.parametrize(
    ("endorsed", "result"),
    [(True, Result.OK), (False, Result.NOT_ENDORSED), (None, Result.NOT_ENDORSED)],
)
def test_an_endorsing_provider_must_endorse_the_own_key(
    endorsed: bool | None, result: Result
) -> None:
    f = ownaudit.finding(OWN, obs(Answer.KEYS, served(endorsed=endorsed), endorses=True))
    assert f.result is result


def test_an_endorsed_other_key_is_an_other_key_finding() -> None:
    f = ownaudit.finding(OWN, obs(Answer.KEYS, served(OTHER, endorsed=True), endorses=True))
    assert f.result is Result.OTHER_KEY


def test_not_found_is_a_mismatch_only_where_the_address_should_be_served() -> None:
    assert ownaudit.finding(OWN, obs(Answer.NOT_FOUND, expected=True)).result is Result.NOT_FOUND
    absent = ownaudit.finding(OWN, obs(Answer.NOT_FOUND))
    assert absent.result is Result.ABSENT and not absent.mismatch


def test_an_unreachable_directory_is_no_evidence() -> None:
    f = ownaudit.finding(OWN, obs(Answer.UNREACHABLE, reason="Tor unavailable", expected=True))
    assert f.result is Result.UNREACHABLE and not f.mismatch
    assert "Tor unavailable" in f.detail


def test_an_unreadable_answer_is_a_mismatch() -> None:
    f = ownaudit.finding(OWN, obs(Answer.UNREADABLE, reason="bad packet"))
    assert f.result is Result.UNREADABLE and f.mismatch


def _assess(*observations: Observation, last_upload: datetime | None = None) -> ownaudit.Audit:
    return ownaudit.assess(
        OWN,
        observations,
        upload=["vks"],
        last_upload=last_upload,
        now=NOW,
        grace=timedelta(hours=1),
    )


def test_state_is_mismatch_if_any_directory_mismatches() -> None:
    audit = _assess(obs(Answer.KEYS, served()), obs(Answer.KEYS, served(OTHER), source="vks"))
    assert audit.state is State.MISMATCH
    assert [f.result for f in audit.findings] == [Result.OK, Result.OTHER_KEY]


def test_state_is_ok_when_what_answered_is_right_and_unchecked_when_nothing_answered() -> None:
    assert _assess(obs(Answer.KEYS, served()), obs(Answer.UNREACHABLE)).state is State.OK
    assert _assess(obs(Answer.UNREACHABLE), obs(Answer.UNREACHABLE)).state is State.UNCHECKED
    assert _assess().state is State.UNCHECKED


def test_stale_expiry_asks_for_a_new_upload_after_the_grace_period_only() -> None:
    stale = obs(Answer.KEYS, served(days=10), source="vks")
    assert _assess(stale, last_upload=NOW - timedelta(minutes=10)).reupload == ()
    assert _assess(stale, last_upload=NOW - timedelta(hours=2)).reupload == ("vks",)
    assert _assess(stale, stale, last_upload=None).reupload == ("vks",)


def test_stale_expiry_at_a_directory_not_uploaded_to_asks_for_no_upload() -> None:
    stale = obs(Answer.KEYS, served(days=10), source="hkp")
    audit = _assess(stale)
    assert audit.state is State.MISMATCH and audit.reupload == ()


def test_the_hook_hears_of_each_mismatch_once() -> None:
    first = _assess(obs(Answer.KEYS, served(OTHER))).findings
    again = _assess(obs(Answer.KEYS, served(OTHER)), obs(Answer.NOT_FOUND, expected=True)).findings
    assert [f.result for f in ownaudit.new_mismatches((), first)] == [Result.OTHER_KEY]
    assert [f.result for f in ownaudit.new_mismatches(first, again)] == [Result.NOT_FOUND]
    assert ownaudit.new_mismatches(again, again) == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Answer)),
            st.sampled_from([OWN.fingerprint, OTHER]),
            st.integers(-200, 200),
            st.booleans(),
        ),
        max_size=6,
    )
)
def test_the_state_follows_the_findings(rows: list[tuple[Answer, str, int, bool]]) -> None:
    observations = [
        obs(answer, served(fpr, days), expected=expected) if answer is Answer.KEYS else obs(answer)
        for answer, fpr, days, expected in rows
    ]
    audit = _assess(*observations)
    if any(f.mismatch for f in audit.findings):
        assert audit.state is State.MISMATCH
    if any(o.served and o.served[0].fingerprint == OTHER for o in observations):
        assert audit.state is State.MISMATCH
    if all(o.answer is Answer.UNREACHABLE for o in observations):
        assert audit.state is State.UNCHECKED
