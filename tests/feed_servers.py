"""Keyservers with change feeds, for the update-feed tests and the bench (no real one can be
installed here). Each is honest to its source:

- `hockeypuck_handlers`: HKP lookups (/pks/lookup?op=get&search=0xFPR) and Hockeypuck's
  GET /pks/v2/prefixlog/:date (src/hockeypuck/hkp/handler.go, PrefixLog, with the storage's
  ModifiedSinceToFp): the date parsed as 2006-01-02 (else 400); the keys with an mtime after
  that midnight and up to 24 hours later, in mtime order, collected in batches of 100 until
  more than 1,000 are held; each written as the first 8 digits of its lower-case fingerprint
  and CRLF. No ETag or Last-Modified, like Hockeypuck.
- `hagrid_handlers`: VKS lookups (/vks/v1/by-fingerprint/FPR) and hagrid's
  GET /vks/v1/updates/<epoch>: 400 unless the epoch is before the current one, 404 when more
  than 120 epochs back; else a manifest (sequoia-net updates.rs) from the epoch asked to the
  one before the current, the prefixes (first 4 bytes of each fingerprint) of the keys changed
  in those epochs sorted and without duplicates, content type
  application/pgp-keystore-update-manifest, Expires at the start of the next epoch.

Keys are added with the time they were last modified; `now` is the servers' clock (tests move
it to simulate days).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

import trio

from tests.net_servers import Captured, Handler, response

EPOCH = 1 << 15
MAGIC = bytes.fromhex("E42BAFBDD575770A")
MAX_PREFIXES = 1000  # Hockeypuck's maxPrefixes
QUERY_LIMIT = 100  # Hockeypuck's internalQueryLimit
EPOCH_SERVE_LIMIT = 120  # hagrid


@dataclass
class FeedKeys:
    """What a keyserver holds: fingerprint -> (key bytes, mtime); a log of what was asked."""

    now: Callable[[], float]
    keys: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)  # fingerprints fetched one by one
    feed_requests: list[str] = field(default_factory=list)  # feed paths asked for
    feed_answer: int | None = None  # a forced status for the feed (None: the real answer)

    def put(self, fingerprint: str, key: bytes, mtime: float) -> None:
        self.keys[fingerprint.upper()] = (key, mtime)

    def modified(self, after: float, upto: float) -> list[str]:
        return [f for f, (_, m) in sorted(self.keys.items(), key=lambda kv: kv[1][1])
                if after < m <= upto]  # fmt: skip


def _key_answer(keys: FeedKeys, fingerprint: str) -> bytes:
    keys.lookups.append(fingerprint)
    held = keys.keys.get(fingerprint.upper())
    if held is None:
        return response(404, b"not found\n")
    return response(200, held[0], (("Content-Type", "application/pgp-keys"),))


def hockeypuck_handlers(keys: FeedKeys) -> dict[str, Handler]:
    async def lookup(req: Captured, stream: trio.abc.Stream) -> None:
        search = parse_qs(urlsplit(req.target).query).get("search", [""])[0]
        await stream.send_all(_key_answer(keys, search.upper().removeprefix("0X")))

    async def prefixlog(req: Captured, stream: trio.abc.Stream) -> None:
        keys.feed_requests.append(req.target)
        if keys.feed_answer is not None:
            await stream.send_all(response(keys.feed_answer, b"forced\n"))
            return
        try:
            day = datetime.strptime(req.target.rsplit("/", 1)[1], "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            await stream.send_all(response(400, b"Bad Request\n"))
            return
        t1, t2 = day.timestamp(), (day + timedelta(days=1)).timestamp()
        changed = keys.modified(t1, t2)
        fps: list[str] = []
        while changed[len(fps) : len(fps) + QUERY_LIMIT]:  # batches, stop once over the limit
            fps += changed[len(fps) : len(fps) + QUERY_LIMIT]
            if len(fps) > MAX_PREFIXES:
                break
        body = b"".join(f.lower()[:8].encode() + b"\r\n" for f in fps)
        await stream.send_all(response(200, body, (("Content-Type", "text/plain"),)))

    return {"/pks/lookup": lookup, "/pks/v2/prefixlog/": prefixlog}


def manifest(start: int, end: int, prefixes: set[int]) -> bytes:
    body = MAGIC + start.to_bytes(4, "big") + end.to_bytes(4, "big")
    return body + b"".join(p.to_bytes(4, "big") for p in sorted(prefixes))


def hagrid_handlers(keys: FeedKeys) -> dict[str, Handler]:
    async def by_fingerprint(req: Captured, stream: trio.abc.Stream) -> None:
        await stream.send_all(_key_answer(keys, req.target.rsplit("/", 1)[1]))

    async def updates(req: Captured, stream: trio.abc.Stream) -> None:
        keys.feed_requests.append(req.target)
        if keys.feed_answer is not None:
            await stream.send_all(response(keys.feed_answer, b"forced\n"))
            return
        raw = req.target.rsplit("/", 1)[1]
        if not raw.isdigit() or int(raw) >= 1 << 32:
            await stream.send_all(response(404, b"Not Found\n"))  # no route matches
            return
        since, now = int(raw), int(keys.now()) // EPOCH
        if since >= now:
            msg = b"Requested epoch must be in the past and completed"
            await stream.send_all(response(400, msg))
            return
        if now - since > EPOCH_SERVE_LIMIT:
            await stream.send_all(response(404, b"Update manifest data only available ..."))
            return
        changed = keys.modified(since * EPOCH - 1, now * EPOCH - 1)
        prefixes = {int(f[:8], 16) for f in changed}
        headers = (
            ("Content-Type", "application/pgp-keystore-update-manifest"),
            ("Expires", formatdate((now + 1) * EPOCH, usegmt=True)),
        )
        await stream.send_all(response(200, manifest(since, now - 1, prefixes), headers))

    return {"/vks/v1/by-fingerprint/": by_fingerprint, "/vks/v1/updates/": updates}
