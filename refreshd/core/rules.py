"""Key manager rules: which key is registered for an address, and why (SPEC 5.2, 5.3).

Rules, from the transitional key validation rules:
- 5.3  A key is considered for an address only if it carries a valid self-signed uid with
       exactly that address and, when it was fetched by fingerprint, has that fingerprint.
- min  Keys below discovery.minimum_validation are never registered.
- use  A key that is revoked or expired is never registered for sending.
- 1    First contact: of the keys found for a new address, the highest level is registered.
- same The registered key seen again is merged (new signatures, a higher level, a positive
       indication are taken) or kept when nothing is new.
- 3    A different key replaces the registered one ONLY when
       3.1 it is certified by the registered key on the uid of this address,
       3.2 the user verified its fingerprint,
       3.3 the registered key is expired or revoked and the new level is equal or higher,
       3.4 the registered key was never successfully used and the new level is higher,
       3.5 the registered key has no expiration date;
       otherwise it is rejected and the registered key stays.
- 4    A replaced key is retired: kept for old signatures, never used for sending.
- 5    A key is successfully used once a message was sent encrypted to it AND one was
       received signed by it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from refreshd.core import levels

__all__ = ["Candidate", "Decision", "Registration", "decide", "first_contact", "successfully_used"]


@dataclass(frozen=True)
class Registration:
    """The key currently registered for an address."""

    fingerprint: str
    level: str
    source: str
    positive: bool
    expires: datetime | None
    revoked: bool
    successfully_used: bool


@dataclass(frozen=True)
class Candidate:
    """A key found for an address, with the facts the rules need (computed by the shell)."""

    fingerprint: str
    level: str
    source: str
    positive: bool
    has_address: bool  # a valid self-signed uid with exactly this address (5.3)
    expires: datetime | None
    revoked: bool
    asked_fingerprint: str | None = None  # set when fetched by fingerprint (5.3)
    certified_by_registered: bool = False  # rule 3.1
    adds_to_stored: bool = False  # same key: the merge brought something new


@dataclass(frozen=True)
class Decision:
    decision: str  # registered | replaced | merged | kept | rejected
    fingerprint: str
    level: str
    source: str
    positive: bool
    rule: str
    reason: str

    @property
    def registers(self) -> bool:
        return self.decision in ("registered", "replaced", "merged", "kept")


def expired(expires: datetime | None, now: datetime) -> bool:
    return expires is not None and expires <= now


def successfully_used(sent_encrypted: bool, received_signed: bool) -> bool:
    """Rule 5: both directions, not either."""
    return sent_encrypted and received_signed


def _reject(c: Candidate, rule: str, reason: str) -> Decision:
    return Decision("rejected", c.fingerprint, c.level, c.source, c.positive, rule, reason)


def admissible(c: Candidate, address: str, *, now: datetime, minimum: str) -> Decision | None:
    """The checks every candidate must pass before any other rule; a rejection or None."""
    if c.asked_fingerprint is not None and c.asked_fingerprint.upper() != c.fingerprint.upper():
        return _reject(
            c,
            "5.3",
            f"The key is {c.fingerprint}, not the fingerprint {c.asked_fingerprint} "
            "that was asked for (SPEC 5.3).",
        )
    if not c.has_address:
        return _reject(
            c, "5.3", f"The key has no valid self-signed user ID for {address} (SPEC 5.3)."
        )
    if not levels.at_least(c.level, minimum):
        return _reject(
            c,
            "min",
            f"Its validation level {c.level} is below the configured minimum "
            f"{minimum} (discovery.minimum_validation).",
        )
    if c.revoked:
        return _reject(c, "use", "The key is revoked, so it cannot be registered for sending.")
    if expired(c.expires, now):
        return _reject(c, "use", "The key has expired, so it cannot be registered for sending.")
    return None


# Replacement rules 3.1-3.5: (rule, test(registered, candidate, now), reason).
_Test = Callable[[Registration, Candidate, datetime], bool]
REPLACEMENT_RULES: tuple[tuple[str, _Test, str], ...] = (
    (
        "3.1",
        lambda r, c, now: c.certified_by_registered,
        "the registered key certified the new key on this address's user ID "
        "(verified key transition, rule 3.1)",
    ),
    (
        "3.2",
        lambda r, c, now: c.source == "user",
        "the user verified the new key's fingerprint (rule 3.2)",
    ),
    (
        "3.3",
        lambda r, c, now: (
            (r.revoked or expired(r.expires, now)) and levels.rank(c.level) >= levels.rank(r.level)
        ),
        "the registered key is expired or revoked and the new key's level is equal or "
        "higher (rule 3.3)",
    ),
    (
        "3.4",
        lambda r, c, now: not r.successfully_used and levels.rank(c.level) > levels.rank(r.level),
        "the registered key was never successfully used and the new key's level is higher "
        "(rule 3.4)",
    ),
    (
        "3.5",
        lambda r, c, now: r.expires is None,
        "the registered key has no expiration date (rule 3.5)",
    ),
)


def _why_not(r: Registration, c: Candidate, now: datetime) -> str:
    """Name why no replacement rule fired, in the terms of the rules."""
    parts = ["it is not certified by the registered key on this address"]
    if r.revoked or expired(r.expires, now):
        parts.append(f"its level {c.level} is lower than the registered {r.level}")
    else:
        parts.append("the registered key is neither expired nor revoked")
    if r.successfully_used:
        parts.append("the registered key was successfully used")
    elif levels.rank(c.level) <= levels.rank(r.level):
        parts.append(f"its level {c.level} is not higher than the registered {r.level}")
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
    minimum: str,
) -> Decision:
    """The decision for one candidate key against the address's registration."""
    if registered is not None and registered.fingerprint == c.fingerprint:
        return _same_key(registered, c, address, now=now)
    rejection = admissible(c, address, now=now, minimum=minimum)
    if rejection is not None:
        return rejection
    if registered is None:
        return Decision(
            "registered",
            c.fingerprint,
            c.level,
            c.source,
            c.positive,
            "1",
            f"First key found for {address}, at level {c.level} from {c.source} (rule 1).",
        )
    for rule, test, because in REPLACEMENT_RULES:
        if test(registered, c, now):
            return Decision(
                "replaced",
                c.fingerprint,
                c.level,
                c.source,
                c.positive,
                rule,
                f"Replaced {registered.fingerprint} because {because}.",
            )
    return _reject(c, "3", _why_not(registered, c, now))


def _same_key(r: Registration, c: Candidate, address: str, *, now: datetime) -> Decision:
    if not c.has_address:
        return _reject(
            c,
            "5.3",
            f"This copy of the registered key has no valid user ID for {address}; "
            "its signatures may still be merged, the registration is unchanged (SPEC 5.3).",
        )
    level = levels.highest((r.level, c.level))
    positive = r.positive or c.positive
    raised = level != r.level or positive != r.positive
    if c.adds_to_stored or raised:
        what = "new signatures or subkeys" if c.adds_to_stored else "nothing new in the key"
        return Decision(
            "merged",
            r.fingerprint,
            level,
            r.source if level == r.level else c.source,
            positive,
            "2",
            f"The registered key was seen again from {c.source} with {what}; level now "
            f"{level} (rule 2).",
        )
    return Decision(
        "kept",
        r.fingerprint,
        r.level,
        r.source,
        r.positive,
        "2",
        f"The registered key was seen again from {c.source} with nothing new (rule 2).",
    )


def with_consensus(candidates: Sequence[Candidate]) -> list[Candidate]:
    """n-of-m: when every source that answered (at least two) named the same key, it is
    third-party-consensus (if that is higher than what each source gives on its own)."""
    sources = {c.source for c in candidates}
    fingerprints = {c.fingerprint for c in candidates}
    if len(sources) < 2 or len(fingerprints) != 1 or not all(c.has_address for c in candidates):
        return list(candidates)
    best = max(candidates, key=lambda c: levels.rank(c.level))
    if levels.rank(best.level) >= levels.rank("third-party-consensus"):
        return list(candidates)
    joined = "+".join(sorted(sources))
    return [
        *candidates,
        replace(
            best,
            level="third-party-consensus",
            source=f"consensus:{joined}",
            positive=any(c.positive for c in candidates),
        ),
    ]


def first_contact(
    candidates: Sequence[Candidate], address: str, *, now: datetime, minimum: str
) -> tuple[Decision | None, list[Decision]]:
    """Rule 1: register the highest-level admissible key; the others are reported rejected."""
    pool = with_consensus(candidates)
    rejected: list[Decision] = []
    admitted: list[Candidate] = []
    for c in pool:
        why = admissible(c, address, now=now, minimum=minimum)
        (rejected.append(why) if why else admitted.append(c))
    if not admitted:
        return None, rejected
    best = max(admitted, key=lambda c: levels.rank(c.level))  # first of equals: discovery order
    chosen = decide(None, best, address, now=now, minimum=minimum)
    for c in admitted:
        if c.fingerprint != best.fingerprint:
            rejected.append(
                _reject(
                    c,
                    "1",
                    f"A key with a higher or equal level ({best.level} from {best.source}) "
                    f"was registered at first contact (rule 1).",
                )
            )
    return chosen, rejected
