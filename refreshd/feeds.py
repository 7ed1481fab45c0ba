"""The update-feed task: asks each configured keyserver's change feed once a day (SPEC 6).

Hockeypuck's prefix log for every `discovery.hkp` server, Hagrid's update manifests for every
`discovery.vks` server (refreshd.net.feeds has the formats). Each request goes through Tor on
its own circuit like every fetch, at a random moment of the day (core/feeds.py, rule 4). A
server that answers that it has no feed is left alone for ABSENT_RECHECK, like nicknym's
negative answers; an unreadable answer costs that period's window, and the keys it would have
vouched for are fetched one by one as usual. What was learned (the windows, the capability)
is kept in the store's state table, a few kilobytes per server.

The refresh loop asks `known_current_until` before each per-key fetch from an HKP or VKS URL.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import trio

from refreshd.audit import AuditLog
from refreshd.clock import epoch_iso, utcnow
from refreshd.config import Config
from refreshd.core import feeds
from refreshd.core.feeds import FeedKind, Window
from refreshd.core.levels import Way
from refreshd.errors import FetchFailed
from refreshd.net import feeds as wire
from refreshd.net import hkp
from refreshd.net.fetch import Fetcher, Request
from refreshd.store import Store

__all__ = ["Feeds"]

ABSENT_RECHECK = 7 * feeds.DAY
STATE_PREFIX = "feed "
URL_MARK = {FeedKind.PREFIX_LOG: "/pks/", FeedKind.UPDATE_MANIFEST: "/vks/"}
FEED_OF = {Way.HKP: FeedKind.PREFIX_LOG, Way.VKS: FeedKind.UPDATE_MANIFEST}  # a source's feed


class Feeds:
    def __init__(
        self,
        store: Store,
        fetcher: Fetcher,
        cfg: Config,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.store, self.fetcher, self.cfg, self.audit = store, fetcher, cfg, audit
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.servers: list[tuple[FeedKind, str]] = [
            *((FeedKind.PREFIX_LOG, hkp.base_url(b)) for b in cfg.discovery.hkp),
            *((FeedKind.UPDATE_MANIFEST, b.rstrip("/")) for b in cfg.discovery.vks),
        ]
        self._state = {s: self._load(s) for s in self.servers}
        self._wake = trio.Event()

    def _now(self) -> float:
        """The injected clock in POSIX seconds, the unit the core's schedule arithmetic uses."""
        return self.clock().timestamp()

    # -- what the refresh loop asks ---------------------------------------------------------
    def known_current_until(
        self, kind: Way, url: str, fingerprint: str, since: float
    ) -> float | None:
        """Until when the feed of the server behind `url` vouches that the key did not change
        since `since`; None when it must be fetched (no feed, a gap, its prefix listed)."""
        server = self._server_of(kind, url)
        if server is None:
            return None
        windows = feeds.fresh(self._windows(server), self._now())
        return feeds.known_current_until(fingerprint, since, windows)

    def _server_of(self, kind: Way, url: str) -> tuple[FeedKind, str] | None:
        feed = FEED_OF.get(kind)
        for server in self.servers:
            if server[0] is feed and url.startswith(server[1] + URL_MARK[feed]):
                return server
        return None

    def _windows(self, server: tuple[FeedKind, str]) -> list[Window]:
        return [Window(s, e, frozenset(p)) for s, e, p in self._state[server]["windows"]]

    # -- the task ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.servers:
            return
        while True:
            server, at = min(
                ((s, self._state[s]["next_at"]) for s in self.servers), key=lambda x: x[1]
            )
            await trio.sleep(max(0.0, at - self._now()))
            await self.fetch(server)

    async def fetch(self, server: tuple[FeedKind, str]) -> Window | None:
        """Ask one server's feed for the period due; the window learned, or None."""
        kind, base = server
        state = self._state[server]
        now = self._now()
        req, read = self._request(kind, base, state, now)
        window: Window | None = None
        try:
            answer = await self.fetcher.fetch(req)
            window = read(answer.status, answer.body)
        except wire.FeedAbsent as exc:
            state["absent_until"] = now + ABSENT_RECHECK
            self.audit.emit("feed.absent", url=req.url, reason=exc.reason)
        except wire.FeedUnreadable as exc:
            self.audit.emit("feed.failed", url=req.url, reason=exc.reason)
        except FetchFailed as exc:
            self.audit.emit("feed.failed", url=req.url, reason=exc.reason)
        if window is not None:
            state["absent_until"] = None
            kept = feeds.keep(
                [*self._windows(server), window], now=now, refresh_period=self.cfg.refresh.period
            )
            state["windows"] = [[w.start, w.end, sorted(w.prefixes)] for w in kept]
            self.audit.emit(
                "feed.fetched",
                url=req.url,
                start=epoch_iso(window.start),
                end=epoch_iso(window.end),
                prefixes=len(window.prefixes),
            )
        next_at = feeds.fetch_at(kind, now=now, rng=self.rng)
        if state["absent_until"] is not None:
            next_at = max(next_at, state["absent_until"])
        state["next_at"] = next_at
        self._save(server)
        return window

    def _request(
        self, kind: FeedKind, base: str, state: dict[str, Any], now: float
    ) -> tuple[Request, Callable[[int, bytes], Window]]:
        """The request for the period due: the day after the newest window (at most a week
        back; yesterday if there is none); for manifests, the epoch where the newest window
        ends (the epoch of this time yesterday if there is none)."""
        today = now - now % feeds.DAY
        newest = max((w[1] for w in state["windows"]), default=today - feeds.DAY)
        if kind is FeedKind.PREFIX_LOG:
            start = min(max(newest, today - 7 * feeds.DAY), today - feeds.DAY)
            day = datetime.fromtimestamp(start, UTC).date()
            return wire.prefix_log(base, day), lambda s, b: wire.read_prefix_log(s, b, day)
        current = int(now // feeds.EPOCH)
        epoch = min(max(int(newest // feeds.EPOCH), current - 100), current - 1)
        return wire.update_manifest(base, epoch), lambda s, b: wire.read_update_manifest(
            s, b, epoch
        )

    def _load(self, server: tuple[FeedKind, str]) -> dict[str, Any]:
        kind, base = server
        blank: dict[str, Any] = {"windows": [], "absent_until": None, "next_at": 0.0}
        saved = self.store.get_state(f"{STATE_PREFIX}{kind.value} {base}")
        try:
            data = json.loads(saved) if saved else blank
        except ValueError:
            data = blank
        if not isinstance(data, dict) or set(data) != set(blank) or not _windows_ok(data):
            data = blank
        if data is blank:  # first start: the first request at a random moment of today
            first = feeds.fetch_at(kind, now=self._now(), rng=self.rng, first=True)
            data = {**blank, "next_at": first}
        return data

    def _save(self, server: tuple[FeedKind, str]) -> None:
        kind, base = server
        with self.store.transaction():
            self.store.put_state(
                f"{STATE_PREFIX}{kind.value} {base}", json.dumps(self._state[server])
            )


def _windows_ok(data: dict[str, Any]) -> bool:
    windows = data["windows"]
    return isinstance(windows, list) and all(
        isinstance(w, list)
        and len(w) == 3
        and all(isinstance(t, int | float) for t in w[:2])
        and isinstance(w[2], list)
        and all(isinstance(p, int) for p in w[2])
        for w in windows
    )
