"""Update feeds (SPEC 6): which per-key refreshes a keyserver's change feed makes needless.

Rules:
1. A feed window says: from `start` to `end`, only keys whose fingerprint prefix is in
   `prefixes` may have changed on that server. A prefix is the fingerprint's first 32 bits
   (Hockeypuck's prefix log lists 8 hex digits, an update manifest 4 bytes); a listed prefix
   may be another key's (a false positive costs one fetch, never a missed change).
2. A key skips its per-key refresh when its server's windows cover, without a gap, the time
   from when it was last known current (`since`) to the end of the newest of them, and none
   of those windows lists its prefix. It is then known current up to that end.
3. Anything else fetches the key as usual: no window yet, a gap (a period whose feed was
   missed, unreadable or absent), a listed prefix, or windows that end too long ago (more
   than STALE_AFTER: the feed stopped being fetched).
4. One feed request per period, the same for every user, at a uniformly random moment of the
   period (`fetch_at`), asking for what followed the newest window held: nothing per key is
   asked of the server for unchanged keys, and the moment says nothing about the user. A
   failed request is not retried within its period (its time falls back, rule 3).
5. Windows older than the refresh period (plus a feed period) are forgotten (`keep`): no key
   can still be waiting to be vouched for by them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["DAY", "EPOCH", "FeedKind", "Window", "fetch_at", "fresh", "keep", "known_current_until"]

DAY = 86400.0
EPOCH = float(1 << 15)  # an update manifest's epoch, in seconds
STALE_AFTER = 3 * DAY  # a feed whose newest window ends longer ago than this vouches for nothing


class FeedKind(Enum):
    """A change feed and the span one of its periods covers."""

    PREFIX_LOG = "prefix-log"  # Hockeypuck: GET /pks/v2/prefixlog/DATE, one UTC day
    UPDATE_MANIFEST = "update-manifest"  # Hagrid (VKS): GET /vks/v1/updates/EPOCH

    @property
    def period(self) -> float:
        """How often the feed is asked: a day for both (a manifest spans the epochs since the
        one asked for, so one request a day covers the day's three epochs)."""
        return DAY


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    prefixes: frozenset[int]


def _prefix(fingerprint: str) -> int:
    """The feed prefix of a hex fingerprint (its first 32 bits)."""
    return int(fingerprint[:8], 16)


def known_current_until(fingerprint: str, since: float, windows: Sequence[Window]) -> float | None:
    """When `fingerprint`, current at `since`, is known current until by the windows (rule 2);
    None when it must be fetched (rule 3). `windows` may come in any order and overlap."""
    reached = since
    for w in sorted(windows, key=lambda w: w.start):
        if w.start > reached:
            break  # a gap: what follows is not vouched for
        reached = max(reached, w.end)
    if reached <= since or reached < max(w.end for w in windows):
        return None
    wanted = _prefix(fingerprint)
    if any(wanted in w.prefixes for w in windows if w.end > since and w.start < reached):
        return None
    return reached


def fresh(windows: Iterable[Window], now: float) -> list[Window]:
    """The windows, or none if the newest ends more than STALE_AFTER ago (rule 3)."""
    windows = list(windows)
    if not windows or max(w.end for w in windows) < now - STALE_AFTER:
        return []
    return windows


def keep(windows: Iterable[Window], *, now: float, refresh_period: float) -> list[Window]:
    """The windows still worth keeping (rule 5)."""
    horizon = now - refresh_period - DAY
    return [w for w in windows if w.end > horizon]


def fetch_at(kind: FeedKind, *, now: float, rng: random.Random, first: bool = False) -> float:
    """When to ask the feed next (rule 4): a uniformly random moment of the next period
    (periods align to UTC midnight); the first request after a start, a uniformly random
    moment of the period that follows `now`, so a start is not followed by a request."""
    if first:
        return now + rng.uniform(0.0, kind.period)
    start = now - now % kind.period + kind.period
    return start + rng.uniform(0.0, kind.period)
