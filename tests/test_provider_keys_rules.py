"""The provider-key pinning rules (core/providerkeys.py), both ways, on the pure function."""

from __future__ import annotations

import pytest

from refreshd.core.providerkeys import Offered, Rule, review, review_response_key

A, B, C = "A" * 40, "B" * 40, "C" * 40


@pytest.mark.parametrize(
    ("pinned", "configured", "offered", "rule"),
    [
        (set(), set(), Offered(A, frozenset()), Rule.FIRST_USE),
        ({A}, set(), Offered(A, frozenset()), Rule.PINNED),
        ({A}, set(), Offered(B, frozenset({A})), Rule.FORWARD),
        ({A}, set(), Offered(B, frozenset({C})), Rule.REFUSED),  # certified, not by a pin
        ({A}, set(), Offered(B, frozenset()), Rule.REFUSED),
        (set(), {B}, Offered(B, frozenset()), Rule.CONFIGURED),
        (set(), {B}, Offered(A, frozenset()), Rule.REFUSED),  # configured: no first use
        (set(), {B}, Offered(A, frozenset({B})), Rule.FORWARD),
    ],
)
def test_endorsement_keys(pinned, configured, offered, rule):
    (verdict,) = review("example.org", frozenset(pinned), frozenset(configured), [offered])
    assert (verdict.fingerprint, verdict.rule) == (offered.fingerprint, rule)
    assert verdict.rule.pins is (rule is not Rule.REFUSED) and verdict.reason


def test_response_key_is_pinned_once_and_never_replaced():
    assert review_response_key("example.org", None, "ed25519:x").rule is Rule.FIRST_USE
    assert review_response_key("example.org", "ed25519:x", "ed25519:x").rule is Rule.PINNED
    refused = review_response_key("example.org", "ed25519:x", "ed25519:y")
    assert refused.rule is Rule.REFUSED and "stays" in refused.reason
