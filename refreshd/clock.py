"""The one clock type: a function returning an aware UTC datetime (Callable[[], datetime]),
passed to whoever needs the time (the core never reads a clock). `utcnow` is the system's,
which only the daemon's wiring and the defaults of the shell's constructors use."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)
