"""Rule 4 of the transitional key validation rules (SPEC 5.2): "Previously registered keys must
be retained by the key manager, for the purpose of signature authentication. These old keys are
never used for sending messages." core/history.py states it for an address's history; these
cases say it in those words, and the store is checked to apply it."""

from __future__ import annotations

from datetime import UTC, datetime

from refreshd.core.history import Entry, Status, after
from refreshd.core.levels import Level, Way
from refreshd.core.rules import Decision, DecisionKind, Rule
from refreshd.store import KeyFacts, Store

OLD, NEW = "A" * 40, "B" * 40
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def decision(kind: DecisionKind, fingerprint: str, rule: Rule, *, level=Level.PROVIDER_TRUST,
             source=Way.WKD, reason="why") -> Decision:  # fmt: skip
    return Decision(kind, fingerprint, level, source, True, rule, reason)


def registered_old() -> Entry:
    return Entry(Status.REGISTERED, Level.WEAK_CHAIN, Way.HKP, "first contact")


def test_a_replaced_key_is_retained_as_retired_with_how_it_was_registered() -> None:
    d = decision(DecisionKind.REPLACED, NEW, Rule.CERTIFIED, reason="certified by the old key")
    changed = after(d, None, (OLD, registered_old()))
    assert changed[OLD] == Entry(
        Status.RETIRED, Level.WEAK_CHAIN, Way.HKP, "Retired: certified by the old key"
    )
    assert changed[NEW] == Entry(
        Status.REGISTERED, Level.PROVIDER_TRUST, Way.WKD, "certified by the old key"
    )


def test_a_rejected_newcomer_leaves_the_registered_key_alone() -> None:
    d = decision(DecisionKind.REJECTED, NEW, Rule.NO_REPLACEMENT, reason="no rule allows it")
    changed = after(d, None, (OLD, registered_old()))
    assert set(changed) == {NEW}
    assert changed[NEW].status is Status.REJECTED


def test_an_old_key_seen_again_and_rejected_is_still_retained() -> None:
    retired = Entry(Status.RETIRED, Level.WEAK_CHAIN, Way.HKP, "Retired: replaced")
    d = decision(DecisionKind.REJECTED, OLD, Rule.NO_REPLACEMENT, level=Level.PROVIDER_TRUST,
                 source=Way.VKS, reason="a copy of the old key again")  # fmt: skip
    changed = after(d, retired, (NEW, Entry(Status.REGISTERED, Level.PROVIDER_TRUST, Way.WKD, "")))
    assert changed == {
        OLD: Entry(Status.RETIRED, Level.WEAK_CHAIN, Way.HKP, "a copy of the old key again")
    }


def test_a_rejected_copy_of_the_registered_key_leaves_it_registered() -> None:
    d = decision(DecisionKind.REJECTED, OLD, Rule.ADDRESS, source=Way.VKS,
                 reason="this copy has no user ID for the address")  # fmt: skip
    changed = after(d, registered_old(), (OLD, registered_old()))
    assert changed == {
        OLD: Entry(
            Status.REGISTERED, Level.WEAK_CHAIN, Way.HKP, "this copy has no user ID for the address"
        )
    }


def test_an_old_key_the_user_verifies_again_is_registered_again() -> None:
    retired = Entry(Status.RETIRED, Level.WEAK_CHAIN, Way.HKP, "Retired: replaced")
    d = decision(DecisionKind.REPLACED, OLD, Rule.USER_VERIFIED, level=Level.FINGERPRINT,
                 source=Way.USER, reason="verified")  # fmt: skip
    now_registered = Entry(Status.REGISTERED, Level.PROVIDER_TRUST, Way.WKD, "")
    changed = after(d, retired, (NEW, now_registered))
    assert changed[OLD] == Entry(Status.REGISTERED, Level.FINGERPRINT, Way.USER, "verified")
    assert changed[NEW].status is Status.RETIRED and changed[NEW].level is Level.PROVIDER_TRUST


def test_a_rejection_records_only_its_reason_on_a_key_seen_before() -> None:
    rejected = Entry(Status.REJECTED, Level.WEAK_CHAIN, Way.HKP, "first reason")
    d = decision(DecisionKind.REJECTED, NEW, Rule.NO_REPLACEMENT, level=Level.PROVIDER_TRUST,
                 source=Way.WKD, reason="second reason")  # fmt: skip
    assert after(d, rejected, (OLD, registered_old())) == {
        NEW: Entry(Status.REJECTED, Level.WEAK_CHAIN, Way.HKP, "second reason")
    }


def test_the_store_keeps_a_replaced_key_for_old_signatures_and_never_for_sending(tmp_path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        address = "bob@example.org"
        for fingerprint in (OLD, NEW):
            store.put_key(KeyFacts(fingerprint, None, False, True, None), b"key", NOW)
        first = decision(DecisionKind.REGISTERED, OLD, Rule.FIRST_CONTACT, level=Level.WEAK_CHAIN,
                         source=Way.HKP, reason="first contact")  # fmt: skip
        store.apply(address, first, NOW)
        replaced = decision(DecisionKind.REPLACED, NEW, Rule.CERTIFIED, reason="certified")
        store.apply(address, replaced, NOW)
        again = decision(DecisionKind.REJECTED, OLD, Rule.NO_REPLACEMENT, reason="old copy")
        store.apply(address, again, NOW)
        rows = {r["fingerprint"]: r for r in store.history(address)}
        assert (rows[OLD]["status"], rows[OLD]["validation"], rows[OLD]["source"]) == (
            "retired",
            "weak-chain",
            "hkp",
        )
        assert rows[NEW]["status"] == "registered"
        registration = store.registration(address)
        assert registration is not None and registration.fingerprint == NEW  # what sending uses
        assert store.served_status(OLD) == "retired"  # still handed out for old signatures
    finally:
        store.close()
