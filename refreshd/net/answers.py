"""What a key source's answer means, shared by the four sources (SPEC section 6).

Rules:
- An HTTP status maps to one Outcome through a table: 200 a key, 304 unchanged, 404 not found,
  410 gone, 429 and every 5xx retry later, anything else an error. Nicknym adds its own codes
  (refreshd.net.nicknym).
- A body that cannot be read is "rejected" with a reason (`SourceError`), never an unexpected
  exception.
- Fingerprints are compared as upper-case hex without spaces: 40 digits (v4) or 64 (v6).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum

from refreshd.errors import SourceError

__all__ = [
    "LOOKUP_STATUS",
    "Outcome",
    "json_object",
    "lookup_outcome",
    "normalize_fingerprint",
]


class Outcome(StrEnum):
    KEY = "key"
    UNCHANGED = "unchanged"
    NOT_FOUND = "not-found"
    NOT_ENDORSED = "not-endorsed"
    GONE = "gone"
    RETRY_LATER = "retry-later"
    ERROR = "error"
    REJECTED = "rejected"


LOOKUP_STATUS: Mapping[int, Outcome] = {
    200: Outcome.KEY,
    304: Outcome.UNCHANGED,
    404: Outcome.NOT_FOUND,
    410: Outcome.GONE,
    429: Outcome.RETRY_LATER,
}


def lookup_outcome(status: int, table: Mapping[int, Outcome] = LOOKUP_STATUS) -> Outcome:
    if status in table:
        return table[status]
    return Outcome.RETRY_LATER if 500 <= status < 600 else Outcome.ERROR


_FPR = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")


def normalize_fingerprint(fpr: str) -> str:
    """Upper-case hex without spaces or a 0x prefix; SourceError if it is not a fingerprint."""
    text = fpr.replace(" ", "").upper().removeprefix("0X")
    if not _FPR.match(text):
        raise SourceError(f"not an OpenPGP fingerprint: {fpr[:80]!r}")
    return text


def json_object(body: bytes | str, what: str, *, not_json: str = "is not valid JSON") -> dict:
    """The body as a JSON object; SourceError naming `what` otherwise (bad JSON, too deep,
    not an object)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceError(f"{what} {not_json}") from None
    if not isinstance(value, dict):
        raise SourceError(f"{what} is not a JSON object")
    return value
