"""The own-key audit (SPEC 7): when to look, and what a directory's answer for an own address means.

Rules:
1. Each own address is audited after a lapse drawn from the exponential law with mean
   own.audit_period, independently per address and afresh after every audit. The law is
   memoryless: the time already waited says nothing about the time left, the moments carry no
   phase against the clock (no "every day at 09:00" that betrays when the user's machine is on),
   and a restart needs no saved state (a fresh draw has the same law).
2. Every directory of discovery.order is asked (the shell asks one at a time, each over its own
   circuit); each answer becomes one finding with a `result` from FINDINGS below.
3. A served key other than the own key for the own address is `other-key`: the attack the audit
   exists to catch. An own key served with an older expiry than the current one is
   `stale-expiry`. Where the provider endorses, a served own key without a valid, unrevoked
   endorsement is `not-endorsed`.
4. "Not found" counts against a directory that should serve the address: one the own key is
   uploaded to (own.upload), or the provider's nicknym that exists. Elsewhere it is `absent`,
   which is no mismatch (a provider without WKD, a keyserver never uploaded to).
5. A directory that cannot be asked (Tor down, timeout, 5xx) is `unreachable`: no evidence
   either way. The audit's state is `mismatch` if any finding is a mismatch, else `ok` if at
   least one directory answered, else `unchecked`.
6. A `stale-expiry` at a directory the key is uploaded to asks for a new upload by that
   mechanism once the grace period (propagation time) since the last upload has passed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from refreshd.core.levels import Way

__all__ = [
    "UPLOAD_FOR_SOURCE",
    "Answer",
    "Audit",
    "Finding",
    "Observation",
    "OwnFacts",
    "Result",
    "Served",
    "State",
    "Upload",
    "assess",
    "new_mismatches",
    "next_lapse",
]


class Result(StrEnum):
    OK = "ok"
    OTHER_KEY = "other-key"
    STALE_EXPIRY = "stale-expiry"
    NOT_ENDORSED = "not-endorsed"
    NOT_FOUND = "not-found"
    UNREADABLE = "unreadable"
    ABSENT = "absent"
    UNREACHABLE = "unreachable"


class State(StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    UNCHECKED = "unchecked"


class Upload(StrEnum):
    """A way the own key is published (own.upload); `.value` is the config's and the audit's
    word."""

    VKS = "vks"
    HKP = "hkp"
    WKS = "wks"  # Web Key Service, by mail
    KPP = "kpp"  # Key Publication Protocol, by mail
    NICKNYM = "nicknym"


class Answer(StrEnum):
    """What a directory's answer was, before comparing it with the own key."""

    KEYS = "keys"
    NOT_FOUND = "not-found"
    UNREADABLE = "unreadable"  # an answer, but no key we could read for the address
    UNREACHABLE = "unreachable"


# result -> is it a mismatch a person must notice?
FINDINGS: Mapping[Result, bool] = {
    Result.OK: False,
    Result.OTHER_KEY: True,
    Result.STALE_EXPIRY: True,
    Result.NOT_ENDORSED: True,
    Result.NOT_FOUND: True,
    Result.UNREADABLE: True,
    Result.ABSENT: False,
    Result.UNREACHABLE: False,
}

# the directory a source names -> the upload mechanism that publishes there
UPLOAD_FOR_SOURCE: Mapping[Way, Upload] = {
    Way.VKS: Upload.VKS,
    Way.HKP: Upload.HKP,
    Way.WKD: Upload.WKS,
    Way.NICKNYM: Upload.NICKNYM,
}


@dataclass(frozen=True)
class Served:
    """One key a directory served for the own address, as plain facts."""

    fingerprint: str
    expires: datetime | None
    endorsed: bool | None = None  # None: the provider does not endorse (or it was not checked)


@dataclass(frozen=True)
class Observation:
    """One directory's answer."""

    source: Way  # wkd | nicknym | vks | hkp
    url: str
    answer: Answer
    served: tuple[Served, ...] = ()
    reason: str = ""
    expected: bool = False  # rule 4: this directory should serve the address
    endorses: bool = False  # the provider endorses its users' keys (rule 3)


@dataclass(frozen=True)
class OwnFacts:
    fingerprint: str
    address: str
    expires: datetime | None


@dataclass(frozen=True)
class Finding:
    source: Way
    result: Result
    detail: str
    url: str = ""
    served: tuple[str, ...] = ()  # fingerprints the directory served

    @property
    def mismatch(self) -> bool:
        return FINDINGS[self.result]

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source.value,
            "result": str(self.result),
            "detail": self.detail,
            "url": self.url,
            "served": list(self.served),
        }


@dataclass(frozen=True)
class Audit:
    address: str
    fingerprint: str
    state: State
    findings: tuple[Finding, ...]
    reupload: tuple[Upload, ...]  # mechanisms to upload again with (rule 6)


def next_lapse(mean: float, rng: random.Random) -> float:
    """Seconds until an address's next audit (rule 1)."""
    if mean <= 0:
        raise ValueError("the mean audit period must be positive")
    return rng.expovariate(1.0 / mean)


def _day(when: datetime | None) -> str:
    return "never" if when is None else when.isoformat()


def finding(own: OwnFacts, obs: Observation) -> Finding:
    """Rules 3-5 for one directory."""

    def make(result: Result, detail: str) -> Finding:
        served = tuple(s.fingerprint for s in obs.served)
        return Finding(obs.source, result, detail, obs.url, served)

    if obs.answer is Answer.UNREACHABLE:
        return make(Result.UNREACHABLE, f"{obs.source} could not be asked: {obs.reason}")
    if obs.answer is Answer.UNREADABLE:
        return make(Result.UNREADABLE, f"{obs.source} served nothing usable: {obs.reason}")
    if obs.answer is Answer.NOT_FOUND or not obs.served:
        if obs.expected:
            return make(Result.NOT_FOUND, f"{obs.source} does not serve {own.address}")
        return make(Result.ABSENT, f"{obs.source} has no key for {own.address} (not expected)")
    others = [s.fingerprint for s in obs.served if s.fingerprint != own.fingerprint]
    if others:
        return make(
            Result.OTHER_KEY,
            f"{obs.source} serves {', '.join(others)} for {own.address}, "
            f"not the own key {own.fingerprint}",
        )
    mine = obs.served[0]
    if own.expires is not None and (mine.expires is None or mine.expires < own.expires):
        return make(
            Result.STALE_EXPIRY,
            f"{obs.source} serves the own key expiring {_day(mine.expires)}, "
            f"not {_day(own.expires)}",
        )
    if obs.endorses and mine.endorsed is not True:
        return make(
            Result.NOT_ENDORSED,
            f"{obs.source} serves the own key without a valid endorsement by the provider",
        )
    return make(Result.OK, f"{obs.source} serves the own key with the current expiry")


def state_of(findings: Iterable[Finding]) -> State:
    """Rule 5."""
    findings = list(findings)
    if any(f.mismatch for f in findings):
        return State.MISMATCH
    if any(f.result is not Result.UNREACHABLE for f in findings):
        return State.OK
    return State.UNCHECKED


def reuploads(
    findings: Iterable[Finding],
    *,
    upload: Sequence[Upload],
    last_upload: datetime | None,
    now: datetime,
    grace: timedelta,
) -> tuple[Upload, ...]:
    """Rule 6: mechanisms to upload again with, each once."""
    if last_upload is not None and now - last_upload < grace:
        return ()
    wanted: list[Upload] = []
    for f in findings:
        mechanism = UPLOAD_FOR_SOURCE.get(f.source)
        if (
            f.result is Result.STALE_EXPIRY
            and mechanism is not None
            and mechanism in upload
            and mechanism not in wanted
        ):
            wanted.append(mechanism)
    return tuple(wanted)


def assess(
    own: OwnFacts,
    observations: Iterable[Observation],
    *,
    upload: Sequence[Upload],
    last_upload: datetime | None,
    now: datetime,
    grace: timedelta,
) -> Audit:
    """One audit of one own address over every directory's answer."""
    findings = tuple(finding(own, obs) for obs in observations)
    return Audit(
        own.address,
        own.fingerprint,
        state_of(findings),
        findings,
        reuploads(findings, upload=upload, last_upload=last_upload, now=now, grace=grace),
    )


def new_mismatches(previous: Iterable[Finding], current: Iterable[Finding]) -> list[Finding]:
    """Mismatches not already reported by the previous audit (the hook runs once per finding)."""
    seen = {(f.source, f.result, f.served) for f in previous if f.mismatch}
    return [f for f in current if f.mismatch and (f.source, f.result, f.served) not in seen]
