"""The failures refreshd expects, as one tree (the socket's codes are service.py's business).

Rules:
- Every expected failure is a RefreshdError carrying `reason`: one sentence a person can read,
  which is what the audit line, the log and the socket answer say.
- Code tells failures apart by class, never by the reason's text: Tor being unavailable is
  TorUnavailable, not a FetchFailed whose reason happens to say so.
- A module raises the class of its concern and converts foreign exceptions (ValueError from a
  parser, OSError from a socket) once, where they enter; service.py alone turns these classes
  into JSON-RPC error codes.
"""

from __future__ import annotations

__all__ = [
    "FetchFailed",
    "GpgFailed",
    "InvalidRequest",
    "KeyRejected",
    "MailError",
    "OwnKeyError",
    "RefreshdError",
    "SourceError",
    "TorUnavailable",
]


class RefreshdError(Exception):
    """An expected failure; `reason` is one sentence for the audit log and the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequest(RefreshdError):
    """What was asked cannot be done as asked (the caller's input); nothing was changed."""


class KeyRejected(RefreshdError):
    """Bytes that are not a usable public key: malformed, oversized, hostile."""


class FetchFailed(RefreshdError):
    """A fetch that produced no answer (connection, TLS, timeout, size, redirect)."""


class TorUnavailable(FetchFailed):
    """Tor cannot carry a fetch now; nothing was sent. Not the server's fault."""

    def __init__(self, reason: str = "Tor unavailable") -> None:
        super().__init__(reason)


class SourceError(RefreshdError):
    """An answer from a key source (or an address for one) that cannot be used."""


class GpgFailed(RefreshdError):
    """GnuPG could not do what was asked of it."""


class OwnKeyError(RefreshdError):
    """The own secret key cannot be read, unlocked or used for this."""


class MailError(RefreshdError):
    """A mail or a mail exchange that cannot be used."""
