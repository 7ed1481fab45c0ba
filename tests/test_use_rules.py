"""SPEC 5.4 and the `use` rule on a registered key: revoked or expired keys are not usable;
a usable key is for encryption only with a live encryption subkey and a positive indication
(never from an HKP keyserver alone), and the answer says which of these is missing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from refreshd.core.rules import use_of

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER, EARLIER = NOW + timedelta(days=30), NOW - timedelta(days=1)


def use(**changes):
    facts = {
        "revoked": False,
        "expires": LATER,
        "can_encrypt": True,
        "encrypt_until": LATER,
        "positive": True,
        "now": NOW,
    }
    return use_of(**{**facts, **changes})


def test_a_live_key_with_a_positive_indication_is_for_encryption():
    assert (use().usable, use().encrypt, use().why_not) == (True, True, "")
    assert use(expires=None, encrypt_until=None).encrypt  # no expiry at all


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"revoked": True}, "Not usable: the key is revoked."),
        ({"expires": EARLIER}, "Not usable: the key is expired."),
        ({"expires": NOW}, "Not usable: the key is expired."),  # expiry is the last moment
        ({"revoked": True, "expires": EARLIER}, "Not usable: the key is revoked."),
    ],
)
def test_revoked_or_expired_is_not_usable_nor_for_encryption(changes, why):
    got = use(**changes)
    assert (got.usable, got.encrypt, got.why_not) == (False, False, why)


def test_hkp_alone_gives_no_positive_indication():
    got = use(positive=False)
    assert (got.usable, got.encrypt) == (True, False)
    assert "not positively indicated" in got.why_not and "HKP" in got.why_not


@pytest.mark.parametrize("changes", [{"can_encrypt": False}, {"encrypt_until": EARLIER}])
def test_no_live_encryption_subkey_is_not_for_encryption(changes):
    got = use(**changes)
    assert (got.usable, got.encrypt) == (True, False)
    assert got.why_not == "Not for encryption: the key has no valid encryption subkey."


def test_the_missing_indication_is_named_first():
    assert "not positively indicated" in use(positive=False, can_encrypt=False).why_not
