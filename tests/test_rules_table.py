"""Every key manager rule, both ways, on the pure decision function."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.core import levels, rules
from refreshd.core.levels import LEVELS, Dkim, Level, Vouched, Way
from refreshd.core.rules import Candidate, Registration

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=200)
ADDR = "bob@example.org"
OLD, NEW = "A" * 40, "B" * 40

REG = Registration(OLD, Level.PROVIDER_TRUST, Way.WKD, True, LATER, False, successfully_used=True)
CAND = Candidate(
    NEW, Level.PROVIDER_TRUST, Way.WKD, True, has_address=True, expires=LATER, revoked=False
)


def decide(reg: Registration | None, cand: Candidate, minimum: Level = Level.WEAK_CHAIN):
    return rules.decide(reg, cand, ADDR, now=NOW, minimum=minimum)


# (name, registration changes, candidate changes, expected decision, expected rule)
REPLACEMENT_CASES = [
    ("3.1 transition certified", {}, {"certified_by_registered": True}, "replaced", "3.1"),
    ("3.1 not certified", {}, {}, "rejected", "3"),
    ("3.2 user verified", {}, {"source": Way.USER, "level": Level.FINGERPRINT}, "replaced", "3.2"),
    ("3.3 expired, equal level", {"expires": NOW - timedelta(days=1)}, {}, "replaced", "3.3"),
    (
        "3.3 expired, higher level",
        {"expires": NOW - timedelta(days=1)},
        {"level": Level.THIRD_PARTY_CONSENSUS},
        "replaced",
        "3.3",
    ),
    (
        "3.3 expired, lower level",
        {"expires": NOW - timedelta(days=1)},
        {"level": Level.WEAK_CHAIN},
        "rejected",
        "3",
    ),
    ("3.3 revoked, equal level", {"revoked": True}, {}, "replaced", "3.3"),
    ("3.3 revoked, lower level", {"revoked": True}, {"level": Level.WEAK_CHAIN}, "rejected", "3"),
    (
        "3.4 never used, higher",
        {"successfully_used": False},
        {"level": Level.PROVIDER_ENDORSEMENT},
        "replaced",
        "3.4",
    ),
    ("3.4 never used, equal", {"successfully_used": False}, {}, "rejected", "3"),
    ("3.4 used, higher", {}, {"level": Level.PROVIDER_ENDORSEMENT}, "rejected", "3"),
    ("3.5 no expiry", {"expires": None}, {"level": Level.WEAK_CHAIN}, "replaced", "3.5"),
    ("3.5 has expiry", {}, {"level": Level.WEAK_CHAIN}, "rejected", "3"),
]


@pytest.mark.parametrize(
    ("name", "reg_change", "cand_change", "decision", "rule"),
    REPLACEMENT_CASES,
    ids=[c[0] for c in REPLACEMENT_CASES],
)
def test_replacement_rules(name, reg_change, cand_change, decision, rule):
    d = decide(replace(REG, **reg_change), replace(CAND, **cand_change))
    assert (d.decision, d.rule) == (decision, rule)
    assert d.reason.endswith(".") and ("rule" in d.reason or "rules" in d.reason)
    if decision == "rejected":
        assert d.fingerprint == NEW


def test_first_contact_registers():
    d = decide(None, CAND)
    assert (d.decision, d.rule, d.level) == ("registered", "1", Level.PROVIDER_TRUST)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"has_address": False}, "no valid self-signed user ID"),
        ({"asked_fingerprint": "C" * 40}, "not the fingerprint"),
        ({"revoked": True}, "revoked"),
        ({"expires": NOW}, "expired"),
    ],
)
def test_admissibility(change, why):
    for reg in (None, REG):
        d = decide(reg, replace(CAND, **change, certified_by_registered=True))
        assert d.decision == "rejected" and why in d.reason


def test_minimum_validation_refuses_even_transitions():
    d = decide(
        REG,
        replace(CAND, level=Level.WEAK_CHAIN, certified_by_registered=True),
        minimum=Level.PROVIDER_TRUST,
    )
    assert d.decision == "rejected" and d.rule == "min"


def test_same_key_merged_or_kept():
    same = replace(CAND, fingerprint=OLD)
    assert decide(REG, same).decision == "kept"
    assert decide(REG, replace(same, adds_to_stored=True)).decision == "merged"
    up = decide(REG, replace(same, level=Level.FINGERPRINT, source=Way.USER))
    assert (up.decision, up.level) == ("merged", Level.FINGERPRINT)
    down = decide(REG, replace(same, level=Level.WEAK_CHAIN, source=Way.HKP, positive=False))
    assert (down.decision, down.level, down.positive) == ("kept", Level.PROVIDER_TRUST, True)
    assert decide(REG, replace(same, has_address=False)).decision == "rejected"


def test_successfully_used_needs_both_directions():
    assert rules.successfully_used(True, True)
    assert not rules.successfully_used(True, False)
    assert not rules.successfully_used(False, True)


def test_first_contact_picks_highest_and_reports_others():
    hkp = replace(
        CAND, fingerprint="C" * 40, level=Level.WEAK_CHAIN, source=Way.HKP, positive=False
    )
    wkd = replace(CAND, source=Way.WKD)
    chosen, rejected = rules.first_contact([hkp, wkd], ADDR, now=NOW, minimum=Level.WEAK_CHAIN)
    assert chosen is not None and chosen.fingerprint == NEW and chosen.source == "wkd"
    assert [r.fingerprint for r in rejected] == ["C" * 40]


def test_directories_agreeing_is_not_consensus():
    hkp = replace(CAND, level=Level.WEAK_CHAIN, source=Way.HKP, positive=False)
    vks = replace(CAND, level=Level.WEAK_CHAIN, source=Way.VKS)
    wkd = replace(CAND, source=Way.WKD)
    chosen, rejected = rules.first_contact([hkp, vks], ADDR, now=NOW, minimum=Level.WEAK_CHAIN)
    assert chosen is not None and chosen.level is Level.WEAK_CHAIN and chosen.positive
    assert rejected == []
    chosen, _ = rules.first_contact([wkd, hkp, vks], ADDR, now=NOW, minimum=Level.WEAK_CHAIN)
    assert chosen is not None and (chosen.level, chosen.source) == (Level.PROVIDER_TRUST, "wkd")


DIRECTORY_WAYS = st.sampled_from([Way.WKD, Way.NICKNYM, Way.VKS, Way.HKP])


@settings(deadline=None)  # pure, but a loaded machine can take longer than 200 ms
@given(st.lists(st.tuples(DIRECTORY_WAYS, st.sampled_from([OLD, NEW])), min_size=1, max_size=8))
def test_no_sequence_of_directory_answers_rises_above_provider_trust(answers):
    """First contact over any answers, then every further answer as a refresh: the level
    never goes above provider-trust, whoever agrees with whom."""

    def candidate(way, fpr):
        level, positive = levels.for_source(way)
        return replace(CAND, fingerprint=fpr, level=level, source=way, positive=positive)

    first = [candidate(w, f) for w, f in answers[:4]]
    chosen, _ = rules.first_contact(first, ADDR, now=NOW, minimum=Level.WEAK_CHAIN)
    assert chosen is not None and chosen.level <= Level.PROVIDER_TRUST
    reg = Registration(chosen.fingerprint, chosen.level, chosen.source, chosen.positive, LATER,
                       False, False, chosen.base_level)  # fmt: skip
    for way, fpr in answers[4:]:
        d = rules.decide(reg, candidate(way, fpr), ADDR, now=NOW, minimum=Level.WEAK_CHAIN)
        assert d.level <= Level.PROVIDER_TRUST
        if d.registers:
            reg = Registration(d.fingerprint, d.level, d.source, d.positive, LATER, False,
                               False, d.base_level)  # fmt: skip


def test_a_vouch_raises_and_its_loss_lowers():
    vouch = rules.Vouch(Vouched.ENDORSER, "certified by endorser 0xE")
    first = decide(None, replace(CAND, vouches=(vouch,)))
    assert (first.level, first.base_level) == (Level.THIRD_PARTY_ENDORSEMENT, Level.PROVIDER_TRUST)
    assert "certified by endorser 0xE" in first.reason and first.basis == vouch.detail
    reg = replace(REG, fingerprint=NEW, level=first.level, base_level=first.base_level)
    again = decide(reg, replace(CAND, vouches=(vouch,)))
    assert (again.decision, again.level) == ("kept", Level.THIRD_PARTY_ENDORSEMENT)
    gone = decide(reg, CAND)
    assert (gone.decision, gone.level) == ("merged", Level.PROVIDER_TRUST)
    assert "lowered from third-party-endorsement" in gone.reason


def test_pinned_address_takes_no_other_key_but_by_3_1_and_3_2():
    pinned = replace(CAND, pin=OLD)
    assert decide(None, pinned).decision == "rejected"
    assert decide(None, replace(pinned, fingerprint=OLD)).decision == "registered"
    open_reg = replace(REG, expires=None, successfully_used=False, revoked=True)
    for change in ({}, {"level": Level.FINGERPRINT}):  # 3.3, 3.4, 3.5 would all fire
        d = decide(open_reg, replace(pinned, **change))
        assert (d.decision, d.rule) == ("rejected", "3") and "pinned to" in d.reason
        assert decide(open_reg, replace(CAND, **change)).decision == "replaced"
    assert decide(REG, replace(pinned, certified_by_registered=True)).rule == "3.1"
    user = replace(pinned, source=Way.USER, level=Level.FINGERPRINT)
    assert decide(REG, user).rule == "3.2"


def test_recorded_consensus_is_worth_its_best_part():
    recorded = levels.of_recorded_way("consensus:vks+wkd", Level.THIRD_PARTY_CONSENSUS)
    assert recorded == ("wkd", Level.PROVIDER_TRUST)
    assert levels.of_recorded_way("consensus:hkp+vks", Level.THIRD_PARTY_CONSENSUS)[1] is (
        Level.WEAK_CHAIN
    )
    assert levels.of_recorded_way("autocrypt", Level.PROVIDER_TRUST) == (
        "autocrypt",
        Level.PROVIDER_TRUST,
    )


def test_the_ladder_is_ordered_and_named_as_the_spec():
    assert [level.value for level in sorted(Level, reverse=True)][-1] == "weak-chain"
    assert LEVELS == (
        "weak-chain", "provider-trust", "provider-endorsement", "third-party-endorsement",
        "third-party-consensus", "historical-auditing", "known-key", "fingerprint",
    )  # fmt: skip
    assert Level.WEAK_CHAIN < Level.PROVIDER_TRUST < Level.FINGERPRINT
    assert max(Level) is Level.FINGERPRINT
    assert all(level is not Level.HISTORICAL_AUDITING for level, _ in levels.WAYS.values())


def test_level_table():
    assert levels.for_source(Way.HKP) == (Level.WEAK_CHAIN, False)
    assert levels.for_source(Way.WKD) == (Level.PROVIDER_TRUST, True)
    assert levels.for_mail(Way.AUTOCRYPT, Dkim.NONE) == (Level.WEAK_CHAIN, True)
    assert levels.for_mail(Way.ATTACHMENT, Dkim.PASS) == (Level.PROVIDER_TRUST, False)
    assert levels.for_mail(Way.ATTACHMENT, Dkim.FAIL) == (Level.WEAK_CHAIN, False)
    assert levels.for_mail(Way.GOSSIP, Dkim.PASS) == (Level.WEAK_CHAIN, False)  # others' keys
    assert levels.standard_header_url(
        "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/x", ADDR
    )
    assert not levels.standard_header_url("https://evil.net/.well-known/openpgpkey/hu/x", ADDR)
    assert not levels.standard_header_url("http://example.org/.well-known/openpgpkey/hu/x", ADDR)


registrations = st.builds(
    Registration,
    fingerprint=st.just(OLD),
    level=st.sampled_from(list(Level)),
    source=st.sampled_from([Way.WKD, Way.HKP, Way.VKS]),
    positive=st.booleans(),
    expires=st.one_of(st.none(), st.sampled_from([NOW - timedelta(days=1), LATER])),
    revoked=st.booleans(),
    successfully_used=st.booleans(),
)
candidates = st.builds(
    Candidate,
    fingerprint=st.sampled_from([OLD, NEW]),
    level=st.sampled_from(list(Level)),
    source=st.sampled_from([Way.WKD, Way.HKP, Way.USER, Way.AUTOCRYPT]),
    positive=st.booleans(),
    has_address=st.booleans(),
    expires=st.one_of(st.none(), st.sampled_from([NOW - timedelta(days=1), LATER])),
    revoked=st.booleans(),
    certified_by_registered=st.booleans(),
    adds_to_stored=st.booleans(),
)


# The seed's validation levels, lowest to highest, as its "Validation levels" section lists them.
SEED_LEVELS = [
    "weak-chain",
    "provider-trust",
    "provider-endorsement",
    "third-party-endorsement",
    "third-party-consensus",
    "historical-auditing",
    "known-key",
    "fingerprint",
]


def seed_situations(r: Registration, c: Candidate) -> list[str]:
    """The seed's rule 3, in its words: the situations, in its order, in which a registered key
    MUST be replaced by a different key, and the only ones."""
    old, new = SEED_LEVELS.index(r.level.value), SEED_LEVELS.index(c.level.value)
    expired_or_revoked = r.revoked or (r.expires is not None and r.expires <= NOW)
    stated = (
        ("3.1", c.certified_by_registered),  # signed by the previously registered key
        ("3.2", c.source == "user"),  # the user manually verified the fingerprint
        ("3.3", expired_or_revoked and new >= old),  # equal or higher level
        ("3.4", not r.successfully_used and new > old),  # higher level
        ("3.5", r.expires is None),  # no expiration date
    )
    return [rule for rule, holds in stated if holds]


# neighbouring levels, so that equal, lower and higher all come up often
near = st.sampled_from([Level(name) for name in SEED_LEVELS[:3]])


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(registrations, st.builds(replace, registrations, level=near)),
    st.one_of(candidates, st.builds(replace, candidates, level=near, fingerprint=st.just(NEW))),
)
def test_a_different_key_replaces_exactly_in_the_seeds_situations(reg, cand):
    d = decide(reg, cand)
    if cand.fingerprint == reg.fingerprint:
        assert d.decision in ("merged", "kept", "rejected")
        if d.decision != "rejected":
            assert SEED_LEVELS.index(d.level.value) >= SEED_LEVELS.index(reg.level.value)
        return
    # below the minimum (weak-chain here, so never), revoked, expired or without the address:
    # never registered, whatever rule 3 says
    usable = cand.has_address and not cand.revoked and not (cand.expires and cand.expires <= NOW)
    situations = seed_situations(reg, cand)
    if not usable:
        assert d.decision == "rejected"
    elif situations:
        assert (d.decision, d.rule, d.fingerprint) == ("replaced", situations[0], NEW)
    else:
        assert (d.decision, d.rule, d.fingerprint) == ("rejected", "3", NEW)


def test_a_decision_takes_its_kind_and_rule_as_enums_not_strings():
    """A plain string equals its enum member, so only the constructor can notice one."""
    made = rules.decide(None, CAND, ADDR, now=NOW, minimum=Level.WEAK_CHAIN)
    assert type(made.decision) is rules.DecisionKind and type(made.rule) is rules.Rule
    with pytest.raises(TypeError):
        replace(made, decision="registered")
    with pytest.raises(TypeError):
        replace(made, rule="1")
    # the words the audit log, the socket and the decisions table carry (SPEC 4, 7)
    assert {k.value for k in rules.DecisionKind} == {
        "registered",
        "replaced",
        "merged",
        "kept",
        "rejected",
    }
    assert {r.value for r in rules.Rule} == {
        *("1", "2", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "5.3", "8"),
        *("min", "use", "pin"),
    }
