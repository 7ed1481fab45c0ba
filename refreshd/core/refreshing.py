"""Refresh rules: where a held key is asked again, and when a failing host is left alone (SPEC 6).

Rules:
- by     WKD and nicknym are asked by address, VKS and HKP by fingerprint; a source asked by
         fingerprint must answer with that key (5.3), so the fingerprint is the one asked for.
- where  A key a directory gave us is asked where it was found: its stored URLs. A key met only
         in mail or a GnuPG keyring (no stored URL, or registered from no directory) is also
         offered the configured VKS and HKP servers by fingerprint, in discovery.order, then
         WKD for each of its addresses. Of all these, the one with the fewest failures in a row
         is asked; on a tie the earlier one (stored first, then that order).
- host   When HOST_FAILING different keys in a row fail on one host (errors and "retry later";
         not Tor's absence, not a bad key), the host is left alone for a growing delay, the
         schedule's backoff with base min(HOST_BACKOFF_BASE, period) and cap period. One key
         that keeps failing is that key's backoff, not its host's. Any usable answer clears it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from refreshd.core import schedule
from refreshd.core.levels import Way

__all__ = [
    "HostState",
    "asked_fingerprint",
    "by_address",
    "choose_source",
    "fallback_kinds",
    "host_after",
    "offers_fallback",
]

DIRECTORIES = frozenset({Way.WKD, Way.NICKNYM, Way.VKS, Way.HKP})
BY_ADDRESS = frozenset({Way.WKD, Way.NICKNYM})
# the directories a fingerprint alone can be asked at
BY_FINGERPRINT_FALLBACK = (Way.VKS, Way.HKP)
HOST_FAILING = 3  # different keys failing in a row on one host before the host backs off
HOST_BACKOFF_BASE = 60.0


def by_address(source: Way) -> bool:
    """Rule `by`: whether the source is asked by address (else by fingerprint)."""
    return source in BY_ADDRESS


def asked_fingerprint(source: Way, fingerprint: str) -> str | None:
    """Rule `by`: the fingerprint a source was asked for, None for one asked by address."""
    return None if by_address(source) else fingerprint


def offers_fallback(stored: int, registered_from: Collection[Way]) -> bool:
    """Rule `where`: whether a key with `stored` URLs, registered from these sources, is also
    offered the configured servers."""
    return stored == 0 or not DIRECTORIES.intersection(registered_from)


def fallback_kinds(order: Sequence[Way]) -> tuple[Way, ...]:
    """Rule `where`: the configured fallback sources in the order they are offered."""
    by_fingerprint = [k for k in order if k in BY_FINGERPRINT_FALLBACK]
    return (*by_fingerprint, *([Way.WKD] if Way.WKD in order else []))


class _Place(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def failures(self) -> int: ...


P = TypeVar("P", bound=_Place)


def choose_source(stored: Sequence[P], fallback: Sequence[P]) -> P | None:
    """Rule `where`: the place to ask, of the stored ones and the fallback ones not stored."""
    known = {s.url for s in stored}
    candidates = [*stored, *(f for f in fallback if f.url not in known)]
    return min(candidates, key=lambda s: s.failures, default=None)  # min keeps the first of ties


@dataclass(frozen=True)
class HostState:
    """A host's recent failures: the keys that failed there in a row, how often it was left
    alone for that, and until when (seconds since the epoch, 0 when it is not)."""

    failing: frozenset[str] = frozenset()
    strikes: int = 0
    not_before: float = 0.0

    def left_alone(self, now: float) -> bool:
        return now < self.not_before


def host_after(
    state: HostState | None,
    fingerprint: str,
    *,
    failed: bool,
    no_tor: bool,
    now: float,
    period: float,
    rng: random.Random,
) -> HostState | None:
    """Rule `host`: the host's state after a fetch of `fingerprint` there. `failed`: an error or
    "retry later" (anything else clears the host); `no_tor`: nothing was asked, Tor was absent."""
    if not failed:
        return None
    if no_tor:
        return state
    before = state or HostState()
    failing = before.failing | {fingerprint}
    if len(failing) < HOST_FAILING:
        return HostState(failing)
    strikes = before.strikes + 1
    delay = schedule.backoff(strikes, base=min(HOST_BACKOFF_BASE, period), cap=period, rng=rng)
    return HostState(failing, strikes, now + delay)
