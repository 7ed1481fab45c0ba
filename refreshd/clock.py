"""The one clock type: a function returning an aware UTC datetime (Callable[[], datetime]),
passed to whoever needs the time (the core never reads a clock). `utcnow` is the system's,
which only the daemon's wiring and the defaults of the shell's constructors use."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["epoch_iso", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def epoch_iso(t: float) -> str:
    """A time in POSIX seconds (the core's schedule and feed arithmetic) as the ISO 8601 text
    the audit lines, the store and `status` carry."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
