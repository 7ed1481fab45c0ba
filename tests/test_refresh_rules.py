"""The refresh rules of core/refreshing.py, stated as SPEC section 6 states them: a key is refreshed
from where it was found (WKD and nicknym by address, VKS and HKP by fingerprint); a key met in
mail or a keyring is offered the configured servers; a host that fails for several keys is left
alone for a while, and Tor's absence is never the host's fault."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from refreshd.core.refreshing import (
    HostState,
    asked_fingerprint,
    by_address,
    choose_source,
    fallback_kinds,
    host_after,
    offers_fallback,
)

FPR = "AB" * 20
DAY = 86400.0


@dataclass(frozen=True)
class Place:
    url: str
    failures: int = 0


@pytest.mark.parametrize(
    ("source", "asked"), [("wkd", None), ("nicknym", None), ("vks", FPR), ("hkp", FPR)]
)
def test_wkd_and_nicknym_are_asked_by_address_vks_and_hkp_by_fingerprint(source, asked):
    assert asked_fingerprint(source, FPR) == asked
    assert by_address(source) is (asked is None)


def test_a_key_a_directory_gave_is_asked_only_there():
    assert not offers_fallback(1, {"wkd"})
    assert not offers_fallback(2, {"hkp", "autocrypt"})


def test_a_key_met_in_mail_or_a_keyring_is_offered_the_configured_servers():
    assert offers_fallback(0, {"wkd"})  # no stored URL at all
    assert offers_fallback(1, {"autocrypt"})  # stored, but registered from mail only
    assert offers_fallback(1, {"gnupg"})
    assert offers_fallback(0, set())


def test_fallback_order_is_by_fingerprint_first_in_discovery_order_then_wkd():
    assert fallback_kinds(["nicknym", "wkd", "vks", "hkp"]) == ("vks", "hkp", "wkd")
    assert fallback_kinds(["hkp", "wkd", "vks"]) == ("hkp", "vks", "wkd")
    assert fallback_kinds(["nicknym", "vks"]) == ("vks",)  # nicknym needs an address's domain
    assert fallback_kinds([]) == ()


def test_the_place_with_fewest_failures_in_a_row_is_asked_stored_first_on_a_tie():
    stored = [Place("https://wkd/a", 2), Place("https://vks/a", 0)]
    fallback = [Place("https://hkp/a", 0), Place("https://vks/a", 0)]
    assert choose_source(stored, fallback) == Place("https://vks/a", 0)
    assert choose_source([Place("https://wkd/a", 1)], fallback) == Place("https://hkp/a", 0)
    tied = [Place("https://first", 0), Place("https://second", 0)]
    assert choose_source(tied, []) == Place("https://first", 0)
    assert choose_source([], []) is None


def fail(state, fingerprint, *, now=0.0, no_tor=False, failed=True, seed=1):
    return host_after(
        state,
        fingerprint,
        failed=failed,
        no_tor=no_tor,
        now=now,
        period=7 * DAY,
        rng=random.Random(seed),
    )


def test_three_different_keys_failing_in_a_row_leave_the_host_alone():
    state = fail(None, "k1")
    state = fail(state, "k2")
    assert state is not None and not state.left_alone(0.0)
    state = fail(state, "k3", now=100.0)
    assert state is not None and state.left_alone(100.0)
    # the first backoff is between half the base and the base (60 s) after the third failure
    assert 100.0 + 30.0 <= state.not_before <= 100.0 + 60.0
    assert not state.left_alone(state.not_before)


def test_one_key_failing_again_and_again_is_that_keys_business():
    state = None
    for _ in range(10):
        state = fail(state, "k1")
    assert state == HostState(frozenset({"k1"}))


def test_tor_being_absent_is_not_the_hosts_fault():
    state = fail(fail(None, "k1"), "k2")
    assert fail(state, "k3", no_tor=True) == state
    assert fail(None, "k1", no_tor=True) is None


def test_any_usable_answer_clears_the_host():
    state = fail(fail(fail(None, "k1"), "k2"), "k3")
    assert fail(state, "k4", failed=False) is None


def test_a_host_that_keeps_failing_waits_longer_up_to_the_period():
    state = fail(fail(fail(None, "k1"), "k2"), "k3")
    waits = []
    for n in range(20):
        assert state is not None
        now = state.not_before
        state = fail(state, f"k{n + 4}", now=now, seed=n)
        assert state is not None
        waits.append(state.not_before - now)
    assert waits[0] >= 60.0 / 2 * 2  # the second strike: at least half of twice the base
    assert max(waits) <= 7 * DAY and waits[-1] >= 7 * DAY / 2
