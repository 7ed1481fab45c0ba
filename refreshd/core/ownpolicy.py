"""When and how far the user's own key is extended (SPEC 7), as pure functions of the key and clock.

Rules:
1. A new key expires `new_key_expiry` after its creation, on the primary and on every subkey.
2. Taking part: every component (primary, encryption, signing, authentication subkeys) that is
   not revoked and has an expiry; a component without expiry is never given one. An expired
   subkey takes part only when no subkey of its role is still valid and it expired last of its
   role, so a subkey the user rotated out is not revived.
3. Let E be the earliest expiry taking part. The extension is planned at
   E - extend_when_left + u * window, window = extend_when_left / 4, u in [0, 1) derived from
   HMAC-SHA256(seed, fingerprint and E): stable across restarts, fresh for every expiry, and
   unknowable without the seed kept with the key. Run at that moment, the key never has less than
   3/4 of extend_when_left left, and the day it was extended does not tell when the daemon runs.
4. From the planned moment on (at once when a component has expired), every component taking part
   whose expiry is less than extend_when_left + window away is extended: by exactly extend_by
   when still valid, to signature time + extend_by when expired.
5. The signature time is the start of the current UTC day, or one second after the previous
   self-signature when that is later; never in the future (then nothing is extended).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

__all__ = ["OwnComponent", "Plan", "Role", "plan"]

WINDOW_FRACTION = 4  # window = extend_when_left / WINDOW_FRACTION


class Role(StrEnum):
    """What a component of the own key is for; `.value` is the word of the `own` answer."""

    PRIMARY = "primary"
    ENCRYPT = "encrypt"
    SIGN = "sign"
    AUTH = "auth"
    OTHER = "other"


@dataclass(frozen=True)
class OwnComponent:
    fingerprint: str
    role: Role
    created: datetime
    expires: datetime | None
    revoked: bool = False


@dataclass(frozen=True)
class Plan:
    extend_now: bool
    planned_at: datetime | None
    new_expiries: Mapping[str, datetime] = field(default_factory=dict)
    signature_time: datetime | None = None
    reason: str = ""


def window(extend_when_left: timedelta) -> timedelta:
    """How far past the threshold the random moment may fall (rule 3)."""
    return extend_when_left / WINDOW_FRACTION


def planned_moment(
    expiry: datetime, *, extend_when_left: timedelta, seed: bytes, fingerprint: str
) -> datetime:
    """The random but reproducible moment to extend a key expiring at `expiry` (rule 3)."""
    message = f"{fingerprint.upper()}|{_utc(expiry).isoformat()}".encode()
    digest = hmac.new(seed, message, hashlib.sha256).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    offset = timedelta(seconds=int(window(extend_when_left).total_seconds() * fraction))
    return _utc(expiry) - extend_when_left + offset


def sig_time(now: datetime, previous_signature: datetime) -> datetime | None:
    """Start of today (UTC), kept strictly after the previous self-signature; None if that is
    only possible in the future (rule 5)."""
    day = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    candidate = max(day, _utc(previous_signature).replace(microsecond=0) + timedelta(seconds=1))
    return candidate if candidate <= _utc(now) else None


def taking_part(components: Iterable[OwnComponent], now: datetime) -> list[OwnComponent]:
    """The components whose expiry the policy maintains (rule 2)."""
    live = [c for c in components if not c.revoked and c.expires]
    latest = {c.role: max(_expiry(o) for o in live if o.role == c.role) for c in live}

    def keeps(c: OwnComponent) -> bool:
        if c.role is Role.PRIMARY or _expiry(c) > now:
            return True
        return latest[c.role] <= now and _expiry(c) == latest[c.role]

    return [c for c in live if keeps(c)]


def plan(
    components: Iterable[OwnComponent],
    *,
    now: datetime,
    extend_by: timedelta,
    extend_when_left: timedelta,
    previous_signature: datetime,
    seed: bytes,
) -> Plan:
    """Decide whether to extend now, when otherwise, and the new expiry of each component."""
    now = _utc(now)
    components = list(components)
    primary = next((c for c in components if c.role is Role.PRIMARY), None)
    if primary is None:
        raise ValueError("the key has no primary component")
    if primary.revoked:
        return Plan(False, None, reason="the key is revoked: it is never extended")
    part = taking_part(components, now)
    if not part:
        return Plan(False, None, reason="no component has an expiry: nothing to extend")
    earliest = min(_expiry(c) for c in part)
    expired = earliest <= now
    moment = (
        now
        if expired
        else planned_moment(
            earliest, extend_when_left=extend_when_left, seed=seed, fingerprint=primary.fingerprint
        )
    )
    if now < moment:
        return Plan(False, moment, reason=f"valid until {earliest:%Y-%m-%d}; extension planned")
    signed_at = sig_time(now, previous_signature)
    if signed_at is None:
        return Plan(
            False,
            moment,
            reason="the newest self-signature is dated in the future: the clock is wrong",
        )
    horizon = now + extend_when_left + window(extend_when_left)
    new = {
        c.fingerprint: _extended(_expiry(c), extend_by, now, signed_at)
        for c in part
        if _expiry(c) < horizon
    }
    why = "expired: extended at once" if expired else "fewer than extend_when_left remain"
    return Plan(True, moment, new, signed_at, why)


def _extended(
    expires: datetime, extend_by: timedelta, now: datetime, signed_at: datetime
) -> datetime:
    return expires + extend_by if expires > now else signed_at + extend_by


def _expiry(component: OwnComponent) -> datetime:
    if component.expires is None:
        raise ValueError(f"{component.fingerprint} has no expiry")
    return _utc(component.expires)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("times must carry a time zone")
    return moment.astimezone(UTC)
