"""Keyserver change feeds: the requests and pure readers of their answers (SPEC 6).

Rules (formats as their sources define them):
- Hockeypuck's prefix log (src/hockeypuck/hkp/handler.go, PrefixLog): GET
  <hkp base>/pks/v2/prefixlog/YYYY-MM-DD answers, for the keys modified during that UTC day
  (mtime after its midnight, up to the next), the first 8 hex digits of each fingerprint, one
  per line, CRLF-terminated; an empty body means no change. It stops collecting once it holds
  more than 1,000 prefixes (batches of 100), so an answer with more than 1,000 lines may be
  cut short and is unreadable here; a bad date answers 400.
- Hagrid's update manifests (sequoia-net updates.rs; hagrid's GET /vks/v1/updates/<epoch>):
  epochs of 2**15 s since the Unix epoch; the answer covers the epochs from the one asked for
  to the one before the current, inclusive; the body is the magic E4 2B AF BD D5 75 77 0A,
  the start and end epochs (u32, big-endian), then 4-byte big-endian fingerprint prefixes.
  A current or future epoch answers 400, one too old or without data 404.
- 404, 405 and 501 mean the server does not offer (or no longer has) the feed: `Absent`.
  Anything else that is not a readable 200 is `Unreadable`. Both fall back to per-key
  refreshes for the time the answer would have covered.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from refreshd.core.feeds import EPOCH, Window
from refreshd.errors import SourceError
from refreshd.net import hkp
from refreshd.net.fetch import Kind, Request

__all__ = [
    "FeedAbsent",
    "FeedUnreadable",
    "prefix_log",
    "read_prefix_log",
    "read_update_manifest",
    "update_manifest",
]

MAGIC = bytes.fromhex("E42BAFBDD575770A")
PREFIX_LOG_LIMIT = 1000  # Hockeypuck's maxPrefixes
ABSENT = frozenset({404, 405, 501})
_PREFIX_LINE = re.compile(rb"[0-9a-fA-F]{8}")


class FeedUnreadable(SourceError):
    """An answer that says nothing usable about the period; `reason` is one sentence."""


class FeedAbsent(FeedUnreadable):
    """The server does not offer this feed (or not for that period)."""


def prefix_log(base: str, day: date) -> Request:
    return Request(f"{hkp.base_url(base)}/pks/v2/prefixlog/{day.isoformat()}", kind=Kind.TEXT)


def read_prefix_log(status: int, body: bytes, day: date) -> Window:
    """The window of one UTC day from a prefix log answer; FeedAbsent / FeedUnreadable."""
    _check_status(status, "prefix log")
    lines = body.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        raise FeedUnreadable("the prefix log does not end with CRLF")
    if len(lines) > PREFIX_LOG_LIMIT:
        raise FeedUnreadable(
            f"the prefix log lists {len(lines)} prefixes, more than the {PREFIX_LOG_LIMIT} "
            "after which Hockeypuck stops: it may be cut short"
        )
    if not all(_PREFIX_LINE.fullmatch(line) for line in lines):
        raise FeedUnreadable("the prefix log has a line that is not 8 hex digits")
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return Window(
        start.timestamp(),
        (start + timedelta(days=1)).timestamp(),
        frozenset(int(line, 16) for line in lines),
    )


def update_manifest(base: str, epoch: int) -> Request:
    return Request(f"{base.rstrip('/')}/vks/v1/updates/{epoch}", kind=Kind.TEXT)


def read_update_manifest(status: int, body: bytes, asked: int) -> Window:
    """The window an update manifest covers; FeedAbsent / FeedUnreadable."""
    _check_status(status, "update manifest")
    if len(body) < 16 or body[:8] != MAGIC:
        raise FeedUnreadable("the update manifest does not start with its magic string")
    start, end = int.from_bytes(body[8:12], "big"), int.from_bytes(body[12:16], "big")
    if start > end:
        raise FeedUnreadable("the update manifest ends before it starts")
    if start > asked:
        raise FeedUnreadable(f"the update manifest starts at epoch {start}, not {asked}")
    rest = memoryview(body)[16:]
    if len(rest) % 4:
        raise FeedUnreadable("the update manifest ends inside a fingerprint prefix")
    prefixes = frozenset(int.from_bytes(rest[i : i + 4], "big") for i in range(0, len(rest), 4))
    return Window(start * EPOCH, (end + 1) * EPOCH, prefixes)


def _check_status(status: int, name: str) -> None:
    if status in ABSENT:
        raise FeedAbsent(f"the server has no {name} for that period ({status})")
    if status != 200:
        raise FeedUnreadable(f"the {name} request answered {status}")
