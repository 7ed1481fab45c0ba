"""Key manager rules: which key is registered for an address, and why (SPEC 5.2-5.4).

Rules, from the transitional key validation rules:
- 5.3  A key is considered for an address only if it carries a valid self-signed uid with
       exactly that address and, when it was fetched by fingerprint, has that fingerprint.
- min  Keys below discovery.minimum_validation are never registered.
- use  A key that is revoked or expired is never registered for sending.
- pin  An address pinned to a key (validation.known_keys) takes no other key except through
       rules 3.1 and 3.2.
- 1    First contact: of the keys found for a new address, the highest level is registered.
- same The registered key seen again is merged (new signatures, a positive indication, a
       level recomputed from the ways it was found and the vouches it carries now) or kept
       when nothing changed. A vouch that is gone lowers the level it gave.
- 3    A different key replaces the registered one ONLY when
       3.1 it is certified by the registered key on the uid of this address,
       3.2 the user verified its fingerprint,
       3.3 the registered key is expired or revoked and the new level is equal or higher,
       3.4 the registered key was never successfully used and the new level is higher,
       3.5 the registered key has no expiration date;
       otherwise it is rejected and the registered key stays.
- 4    A replaced key is retired: kept for old signatures, never used for sending
       (core/history.py says what the history keeps; the store applies it).
- 5    A key is successfully used once a message was sent encrypted to it AND one was
       received signed by it.
- 8    Bytes that are no usable key (malformed, hostile, oversized, nothing validly
       self-signed) are rejected before any rule above can look at them (SPEC 8); the shell
       records such a rejection under UNUSABLE.
- 5.4  A registered key is usable unless it is revoked or expired; it is offered for
       encryption only when usable, with a live encryption subkey, and when the recipient
       positively indicated they want encrypted mail (`use_of` says which of these failed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from refreshd.core import levels
from refreshd.core.levels import Level, Vouched, Way


@dataclass(frozen=True)
class Vouch:
    """Something on the key (or in the config) that raises its level: a way of levels.WAYS
    and the words that say which key gave it."""

    way: Vouched
    detail: str  # e.g. "certified by endorser 0x1234..."

    def __post_init__(self) -> None:
        if type(self.way) is not Vouched:
            raise TypeError(f"a Vouch's way is a levels.Vouched: {self!r}")

    @property
    def level(self) -> Level:
        return levels.WAYS[self.way][0]


__all__ = [
    "Candidate",
    "Decision",
    "DecisionKind",
    "LookupState",
    "Registration",
    "Rule",
    "UseEvent",
    "Vouch",
    "decide",
    "first_contact",
    "successfully_used",
    "use_of",
]


class DecisionKind(StrEnum):
    """What a decision did with the key; `.value` is the audit event's and the SPEC's word."""

    REGISTERED = "registered"
    REPLACED = "replaced"
    MERGED = "merged"
    KEPT = "kept"
    REJECTED = "rejected"


_REGISTERS = frozenset(DecisionKind) - {DecisionKind.REJECTED}


class LookupState(StrEnum):
    """The `state` of a lookup answer (SPEC 4): what the rules left for the address, or that
    discovery is still under way or its network paths disagreed. The answer carries the member;
    the socket writes its word."""

    REGISTERED = "registered"
    PENDING = "pending"
    UNKNOWN = "unknown"
    CONFLICT = "conflict"


class UseEvent(StrEnum):
    """One direction of rule 5's successful use, as the `used` socket method names it."""

    SENT_ENCRYPTED = "sent-encrypted"
    RECEIVED_SIGNED = "received-signed"


class Rule(StrEnum):
    """The rule a decision was made under, by its id at the top of this module."""

    FIRST_CONTACT = "1"
    SAME_KEY = "2"
    NO_REPLACEMENT = "3"
    CERTIFIED = "3.1"
    USER_VERIFIED = "3.2"
    EXPIRED_OR_REVOKED = "3.3"
    NEVER_USED = "3.4"
    NO_EXPIRY = "3.5"
    ADDRESS = "5.3"
    MINIMUM = "min"
    USE = "use"
    PIN = "pin"
    UNUSABLE = "8"  # a rejection that never reached the rules (SPEC 8)


@dataclass(frozen=True)
class Registration:
    """The key currently registered for an address."""

    fingerprint: str
    level: Level  # what the key is worth now: its ways and its vouches
    source: Way
    positive: bool
    expires: datetime | None
    revoked: bool
    successfully_used: bool
    base_level: Level | None = None  # the best of the ways it was found (None: = level)

    @property
    def found_level(self) -> Level:
        return self.level if self.base_level is None else self.base_level


@dataclass(frozen=True)
class Candidate:
    """A key found for an address, with the facts the rules need (computed by the shell)."""

    fingerprint: str
    level: Level  # the level of the way it was found this time
    source: Way
    positive: bool
    has_address: bool  # a valid self-signed uid with exactly this address (5.3)
    expires: datetime | None
    revoked: bool
    asked_fingerprint: str | None = None  # set when fetched by fingerprint (5.3)
    certified_by_registered: bool = False  # rule 3.1
    adds_to_stored: bool = False  # same key: the merge brought something new
    vouches: tuple[Vouch, ...] = ()  # what the key carries now (endorsements, a pin)
    pin: str | None = None  # the fingerprint the address is pinned to, if it is

    @property
    def best_vouch(self) -> Vouch | None:
        return max(self.vouches, key=lambda v: v.level, default=None)

    @property
    def effective(self) -> Level:
        vouch = self.best_vouch
        return self.level if vouch is None else max(self.level, vouch.level)


@dataclass(frozen=True)
class Decision:
    decision: DecisionKind
    fingerprint: str
    level: Level
    source: Way
    positive: bool
    rule: Rule
    reason: str
    base_level: Level | None = None  # the best way it was found, kept to recompute the level
    basis: str = ""  # what gave the level, in words

    def __post_init__(self) -> None:
        # a plain string equals its member, so nothing else would notice one slipping in
        if (
            type(self.decision) is not DecisionKind
            or type(self.rule) is not Rule
            or type(self.source) is not Way
        ):
            raise TypeError(f"a Decision takes a DecisionKind, a Rule and a Way: {self!r}")

    @property
    def registers(self) -> bool:
        return self.decision in _REGISTERS


def basis_of(c: Candidate, base: Level, source: Way) -> str:
    """What gave the candidate its level, in words."""
    vouch = c.best_vouch
    if vouch is not None and vouch.level > base:
        return vouch.detail
    return f"found through {source} ({base.value})"


def expired(expires: datetime | None, now: datetime) -> bool:
    return expires is not None and expires <= now


def successfully_used(sent_encrypted: bool, received_signed: bool) -> bool:
    """Rule 5: both directions, not either."""
    return sent_encrypted and received_signed


def _reject(c: Candidate, rule: Rule, reason: str) -> Decision:
    return Decision(
        DecisionKind.REJECTED,
        c.fingerprint,
        c.effective,
        c.source,
        c.positive,
        rule,
        reason,
        c.level,
    )


def admissible(c: Candidate, address: str, *, now: datetime, minimum: Level) -> Decision | None:
    """The checks every candidate must pass before any other rule; a rejection or None."""
    if c.asked_fingerprint is not None and c.asked_fingerprint.upper() != c.fingerprint.upper():
        return _reject(
            c,
            Rule.ADDRESS,
            f"The key is {c.fingerprint}, not the fingerprint {c.asked_fingerprint} "
            "that was asked for (SPEC 5.3).",
        )
    if not c.has_address:
        return _reject(
            c, Rule.ADDRESS, f"The key has no valid self-signed user ID for {address} (SPEC 5.3)."
        )
    if c.effective < minimum:
        return _reject(
            c,
            Rule.MINIMUM,
            f"Its validation level {c.effective.value} is below the configured minimum "
            f"{minimum.value} (discovery.minimum_validation).",
        )
    if c.revoked:
        return _reject(c, Rule.USE, "The key is revoked, so it cannot be registered for sending.")
    if expired(c.expires, now):
        return _reject(c, Rule.USE, "The key has expired, so it cannot be registered for sending.")
    return None


# Replacement rules 3.1-3.5: (rule, test(registered, candidate, now), reason).
_Test = Callable[[Registration, Candidate, datetime], bool]
REPLACEMENT_RULES: tuple[tuple[Rule, _Test, str], ...] = (
    (
        Rule.CERTIFIED,
        lambda r, c, now: c.certified_by_registered,
        "the registered key certified the new key on this address's user ID "
        "(verified key transition, rule 3.1)",
    ),
    (
        Rule.USER_VERIFIED,
        lambda r, c, now: c.source is Way.USER,
        "the user verified the new key's fingerprint (rule 3.2)",
    ),
    (
        Rule.EXPIRED_OR_REVOKED,
        lambda r, c, now: (r.revoked or expired(r.expires, now)) and c.effective >= r.level,
        "the registered key is expired or revoked and the new key's level is equal or "
        "higher (rule 3.3)",
    ),
    (
        Rule.NEVER_USED,
        lambda r, c, now: not r.successfully_used and c.effective > r.level,
        "the registered key was never successfully used and the new key's level is higher "
        "(rule 3.4)",
    ),
    (
        Rule.NO_EXPIRY,
        lambda r, c, now: r.expires is None,
        "the registered key has no expiration date (rule 3.5)",
    ),
)
PIN_RULES = frozenset({Rule.CERTIFIED, Rule.USER_VERIFIED})  # all a pinned address allows


def _pinned_elsewhere(c: Candidate) -> bool:
    return c.pin is not None and c.pin != c.fingerprint


def _why_not(r: Registration, c: Candidate, now: datetime) -> str:
    """Name why no replacement rule fired, in the terms of the rules."""
    level = c.effective.value
    parts = ["it is not certified by the registered key on this address"]
    if _pinned_elsewhere(c):
        parts.append(f"the address is pinned to {c.pin} (validation.known_keys)")
    elif r.revoked or expired(r.expires, now):
        parts.append(f"its level {level} is lower than the registered {r.level.value}")
    else:
        parts.append("the registered key is neither expired nor revoked")
    if r.successfully_used:
        parts.append("the registered key was successfully used")
    elif c.effective <= r.level:
        parts.append(f"its level {level} is not higher than the registered {r.level.value}")
    parts.append("the registered key has an expiration date")
    return (
        f"No replacement rule applies to {c.fingerprint}: "
        + "; ".join(parts)
        + " (rules 3.1-3.5); the registered key stays."
    )


def decide(
    registered: Registration | None,
    c: Candidate,
    address: str,
    *,
    now: datetime,
    minimum: Level,
) -> Decision:
    """The decision for one candidate key against the address's registration."""
    if registered is not None and registered.fingerprint == c.fingerprint:
        return _same_key(registered, c, address, now=now)
    rejection = admissible(c, address, now=now, minimum=minimum)
    if rejection is not None:
        return rejection
    basis = basis_of(c, c.level, c.source)
    if registered is None:
        if _pinned_elsewhere(c):
            return _reject(
                c,
                Rule.PIN,
                f"{address} is pinned to {c.pin} (validation.known_keys); another key is "
                "never registered for it.",
            )
        return Decision(
            DecisionKind.REGISTERED,
            c.fingerprint,
            c.effective,
            c.source,
            c.positive,
            Rule.FIRST_CONTACT,
            f"First key found for {address}, at level {c.effective.value} ({basis}) from "
            f"{c.source} (rule 1).",
            c.level,
            basis,
        )
    for rule, test, because in REPLACEMENT_RULES:
        if _pinned_elsewhere(c) and rule not in PIN_RULES:
            continue
        if test(registered, c, now):
            return Decision(
                DecisionKind.REPLACED,
                c.fingerprint,
                c.effective,
                c.source,
                c.positive,
                rule,
                f"Replaced {registered.fingerprint} because {because}; level "
                f"{c.effective.value} ({basis}).",
                c.level,
                basis,
            )
    return _reject(c, Rule.NO_REPLACEMENT, _why_not(registered, c, now))


def _same_key(r: Registration, c: Candidate, address: str, *, now: datetime) -> Decision:
    if not c.has_address:
        return _reject(
            c,
            Rule.ADDRESS,
            f"This copy of the registered key has no valid user ID for {address}; "
            "its signatures may still be merged, the registration is unchanged (SPEC 5.3).",
        )
    base = max(r.found_level, c.level)
    source = r.source if base == r.found_level else c.source
    vouch = c.best_vouch
    level = base if vouch is None else max(base, vouch.level)
    basis = basis_of(c, base, source)
    positive = r.positive or c.positive
    changed = level != r.level or positive != r.positive or base != r.found_level
    if c.adds_to_stored or changed:
        what = "new signatures or subkeys" if c.adds_to_stored else "nothing new in the key"
        lowered = (
            f"; lowered from {r.level.value}: what gave that level is gone"
            if level < r.level
            else ""
        )
        return Decision(
            DecisionKind.MERGED,
            r.fingerprint,
            level,
            source,
            positive,
            Rule.SAME_KEY,
            f"The registered key was seen again from {c.source} with {what}; level now "
            f"{level.value} ({basis}){lowered} (rule 2).",
            base,
            basis,
        )
    return Decision(
        DecisionKind.KEPT,
        r.fingerprint,
        r.level,
        r.source,
        r.positive,
        Rule.SAME_KEY,
        f"The registered key was seen again from {c.source} with nothing new (rule 2).",
        base,
        basis,
    )


def first_contact(
    candidates: Sequence[Candidate], address: str, *, now: datetime, minimum: Level
) -> tuple[Decision | None, list[Decision]]:
    """Rule 1: register the highest-level admissible key; the others are reported rejected.
    Several sources naming the same key add nothing: its level is the best of its ways."""
    rejected: list[Decision] = []
    admitted: list[Candidate] = []
    for c in candidates:
        why = admissible(c, address, now=now, minimum=minimum)
        (rejected.append(why) if why else admitted.append(c))
    if not admitted:
        return None, rejected
    best = max(admitted, key=lambda c: c.effective)  # first of equals: discovery order
    same = [c for c in admitted if c.fingerprint == best.fingerprint]
    best = replace(best, positive=any(c.positive for c in same))
    chosen = decide(None, best, address, now=now, minimum=minimum)
    for c in admitted:
        if c.fingerprint != best.fingerprint:
            rejected.append(
                _reject(
                    c,
                    Rule.FIRST_CONTACT,
                    f"A key with a higher or equal level ({best.effective.value} from "
                    f"{best.source}) was registered at first contact (rule 1).",
                )
            )
    return chosen, rejected


@dataclass(frozen=True)
class Use:
    """What a registered key may be used for now (rules `use` and 5.4), and why not."""

    usable: bool
    encrypt: bool
    why_not: str  # "" when the key is usable and offered for encryption


def use_of(
    *,
    revoked: bool,
    expires: datetime | None,
    can_encrypt: bool,
    encrypt_until: datetime | None,
    positive: bool,
    now: datetime,
) -> Use:
    """Rule 5.4 for a registered key: usable, for encryption, and the sentence saying why not."""
    usable = not revoked and not expired(expires, now)
    if not usable:
        return Use(
            False, False, "Not usable: the key is " + ("revoked." if revoked else "expired.")
        )
    live_subkey = can_encrypt and not expired(encrypt_until, now)
    if live_subkey and positive:
        return Use(True, True, "")
    return Use(
        True,
        False,
        "Not for encryption: "
        + (
            "the recipient has not positively indicated they want encrypted mail "
            "(an HKP keyserver alone is not enough, SPEC 5.4)."
            if not positive
            else "the key has no valid encryption subkey."
        ),
    )
