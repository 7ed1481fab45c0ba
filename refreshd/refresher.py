"""The refresh loop: one key at a time, at the moments core/schedule.py draws (SPEC 6).

The loop is a plain trio task; it owns the only refresh fetch in flight. Each step persists
the cycle state before sleeping, so a restart resumes the cycle where it was.

Nothing a step does grows with the number of keys. The schedule holds the store's small
integer ids of the registered keys; the store logs every change of that set (triggers on
`addresses`) and each step applies the changes since the last one as a delta. What is saved
per step is the small part of the state (position, urgent queue, retries); the order itself,
packed as 8 bytes a key, is rewritten only when it changed (a new cycle, keys added or
dropped), and a new cycle's shuffle and packing run in a worker thread. A key is fetched
from where it was found; keys seen only in mail or imported from GnuPG are refreshed from
VKS/HKP by fingerprint or from WKD by address (see _sources). An unchanged answer (304 or same
body hash) updates only the bookkeeping; anything else goes through the key manager.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import trio

from refreshd.audit import AuditLog
from refreshd.clock import epoch_iso, utcnow
from refreshd.config import Config
from refreshd.core import levels, refreshing, schedule
from refreshd.core.levels import Way
from refreshd.discovery import audit_fetch
from refreshd.feeds import Feeds
from refreshd.keymanager import Found, KeyManager
from refreshd.net import hkp, vks, wkd
from refreshd.net.answers import Outcome
from refreshd.net.fetch import Validators
from refreshd.openpgp.intake import Intake
from refreshd.retrieve import Got, Retriever
from refreshd.store import Source

__all__ = ["Refresher"]

STATE_NAME = "refresh.cycle"
ERROR_PAUSE = 60.0  # after an unexpected error in one step
# With no key registered the loop has nothing to wait for, and registering one does not wake
# it: it looks for the first key this often (seconds).
IDLE_RECHECK = 5.0
# The first retry of a failed fetch waits about this long (never more than a period), however
# short the minimum lapse: schedule.backoff needs 0 < base <= cap.
BACKOFF_BASE = 60.0


def pack(order: schedule.Order) -> bytes:
    return (order if isinstance(order, array) else array("q", order)).tobytes()


def unpack(packed: bytes) -> array:
    ids = array("q")
    ids.frombytes(packed)
    return ids


class Refresher:
    def __init__(
        self,
        keys: KeyManager,
        retriever: Retriever,
        cfg: Config,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        feeds: Feeds | None = None,
    ) -> None:
        self.feeds = feeds
        self.keys = keys
        self.store = keys.store
        self.retriever = retriever
        self.cfg = cfg
        self.audit = audit
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self._seq = 0  # the last change of the registered set applied to self.state
        self._saved: tuple[int, schedule.Order] | None = None  # cycle, order
        self.state = self._load()
        self.next_at: float | None = None
        self.last: dict[str, Any] = {}
        # host -> (keys that failed there in a row, backoff steps, not before)
        self._hosts: dict[str, refreshing.HostState] = {}
        self._wake = trio.Event()

    def _now(self) -> float:
        """The injected clock in POSIX seconds, the unit the core's schedule arithmetic uses."""
        return self.clock().timestamp()

    def _load(self) -> schedule.CycleState:
        """The saved state, or a first cycle of every registered key (before the socket
        serves: once, after an upgrade or with a new store)."""
        saved = self.store.get_state(STATE_NAME)
        if saved is not None:
            try:
                cycle = schedule.saved_cycle(saved)
                packed = self.store.get_refresh_order(cycle)
                order = unpack(packed or b"")
                state = schedule.from_json(saved, order)
            except ValueError:
                self.audit.emit(
                    "refresh.state_reset", reason="the saved cycle state was unreadable"
                )
            else:
                self._saved = (state.cycle, order)
                return state
        self._seq = self.store.last_refresh_change()
        # the store's ids come packed, so the order is an array (8 bytes a key) from the start
        self.state = schedule.update(None, self.store.refresh_ids(), (), self.rng, self._now())
        self._save()  # now, before the socket serves: its first save is O(N)
        return self.state

    def _catch_up(self) -> None:
        """Apply the keys registered or dropped since the last call (rule 4)."""
        seq, added, removed = self.store.refresh_changes(self._seq)
        if added or removed:
            state = schedule.update(self.state, added, removed, self.rng, self._now())
            if not isinstance(state.order, array):  # the first keys of an empty schedule
                state = replace(state, order=array("q", state.order))
            self.state = state
        self._seq = seq

    # -- requests from the socket -----------------------------------------------------------
    def urgent(self, fingerprint: str) -> str:
        """A `refresh` request; KeyError when the key is not registered."""
        key = self.store.refresh_id(fingerprint)
        if key is None:
            raise KeyError(fingerprint)
        self._catch_up()
        due, self.state = schedule.request(
            self.state,
            key,
            now=self._now(),
            minimum_lapse=self.cfg.refresh.minimum_lapse,
            rng=self.rng,
        )
        self._save()
        self.wake()
        return epoch_iso(due)

    def wake(self) -> None:
        """The set of keys or the urgent queue changed: draw the next step again."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        state = self.state
        n = len(state.order)
        period = schedule.effective_period(
            self.cfg.refresh.period, self.cfg.refresh.minimum_lapse, n
        )
        return {
            "next_refresh_at": epoch_iso(self.next_at) if self.next_at else None,
            "cycle": state.cycle,
            "position": state.position,
            "keys_in_cycle": n,
            "effective_period_seconds": period,
            "lengthened": period > self.cfg.refresh.period,
            "last": self.last,
            "failures_by_host": self.store.failures_by_host(),
            "hosts_backing_off": {
                host: epoch_iso(state.not_before)
                for host, state in self._hosts.items()
                if state.left_alone(self._now())
            },
        }

    def _save(self) -> None:
        """The small part of the state at every step; the order only when it changed."""
        state = self.state
        with self.store.transaction():
            self.store.put_state(STATE_NAME, schedule.to_json(state))
            saved = self._saved
            if saved is None or saved[0] != state.cycle or saved[1] is not state.order:
                self.store.put_refresh_order(state.cycle, pack(state.order))
                self._saved = (state.cycle, state.order)
            self.store.forget_refresh_changes(self._seq)

    async def _new_cycle(self) -> None:
        """Draw the next cycle's order and save it in a worker thread (O(N)); the loop only
        commits the small part that makes it current, and the socket keeps serving.

        A `refresh` request meanwhile only adds to the urgent queue and is kept; a change of
        the key set meanwhile voids the draw (the next step draws again)."""
        base = self.state
        cfg = self.cfg.refresh

        def draw() -> schedule.CycleState:
            new = schedule.next_cycle(
                base,
                now=self._now(),
                period=cfg.period,
                minimum_lapse=cfg.minimum_lapse,
                rng=self.rng,
            )
            self.store.put_refresh_order_aside(new.cycle, pack(new.order))
            return new

        new = await trio.to_thread.run_sync(draw)
        if self.state.order is not base.order:
            return
        self.state = replace(new, urgent=self.state.urgent)
        self._saved = (new.cycle, new.order)
        self._save()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Steps forever; a bug in one step is audited and the loop goes on after a pause,
        so the socket and the other tasks never go down with it."""
        task_status.started()
        while True:
            try:
                await self._step()
            except Exception as exc:
                self.audit.emit("refresh.error", error=f"{type(exc).__name__}: {exc}"[:300])
                await trio.sleep(ERROR_PAUSE)

    async def _step(self) -> None:
        """One turn of the loop: draw the next fetch, sleep until then, fetch, record."""
        self._wake = trio.Event()
        self._catch_up()
        state = self.state
        if state.order and state.position >= len(state.order) and not state.urgent:
            await self._new_cycle()
        step = schedule.next_refresh(
            self.state,
            now=self._now(),
            period=self.cfg.refresh.period,
            minimum_lapse=self.cfg.refresh.minimum_lapse,
            rng=self.rng,
        )
        self.state = step.state
        self._save()
        self.next_at = None if step.key is None else self._now() + step.lapse
        with trio.move_on_after(step.lapse if step.key is not None else IDLE_RECHECK):
            await self._wake.wait()
            return  # woken: something changed, draw again
        if step.key is None:
            return
        fingerprint = self.store.refresh_fingerprint(int(step.key))
        ok = fingerprint is not None and await self.refresh(fingerprint)
        if ok:
            self.state = schedule.mark_done(self.state, step.key)
        else:
            period = self.cfg.refresh.period
            self.state = schedule.mark_failed(
                self.state,
                step.key,
                now=self._now(),
                base=min(max(self.cfg.refresh.minimum_lapse, BACKOFF_BASE), period),
                cap=period,
                rng=self.rng,
            )
            retry = next((r for r in self.state.retries if r.key == step.key), None)
            if retry is not None:
                self.audit.emit(
                    "refresh.backoff",
                    fingerprint=fingerprint,
                    failures=retry.failures,
                    retry_at=epoch_iso(retry.due),
                )
        self._save()

    def _sources(self, fingerprint: str) -> list[Source]:
        """Where to ask (core.refreshing, rule `where`): the stored URLs and, for a key met only in
        mail or a GnuPG keyring, the configured servers; every URL tried is remembered."""
        stored = self.store.sources_of(fingerprint)
        addresses = self.store.addresses_of(fingerprint)
        registered_from = {
            reg.source for a in addresses if (reg := self.store.registration(a)) is not None
        }
        fallback: list[Source] = []
        if refreshing.offers_fallback(len(stored), registered_from):
            by_kind = {
                Way.VKS: [
                    Source(vks.by_fingerprint(b, fingerprint).url, Way.VKS, None, fingerprint)
                    for b in self.cfg.discovery.vks
                ],
                Way.HKP: [
                    Source(hkp.lookup(b, fingerprint).url, Way.HKP, None, fingerprint)
                    for b in self.cfg.discovery.hkp
                ],
                Way.WKD: [
                    Source(wkd.requests_for(a)[0].url, Way.WKD, a, fingerprint) for a in addresses
                ],
            }
            kinds = refreshing.fallback_kinds(self.cfg.discovery.order)
            fallback = [s for kind in kinds for s in by_kind[kind]]
        chosen = refreshing.choose_source(stored, fallback)
        return [] if chosen is None else [chosen]

    async def refresh(self, fingerprint: str) -> bool:
        """One refresh fetch; True when the source answered usably (changed or not)."""
        sources = self._sources(fingerprint)
        if not sources:
            self.audit.emit(
                "refresh.failed",
                fingerprint=fingerprint,
                reason="no source to refresh this key from",
            )
            return False
        src = sources[0]
        if self._vouched(fingerprint, src):
            return True
        host = urlsplit(src.url).hostname or src.url
        backing_off = self._hosts.get(host)
        if backing_off is not None and backing_off.left_alone(self._now()):
            self.audit.emit(
                "refresh.failed",
                fingerprint=fingerprint,
                source=src.kind.value,
                url=src.url,
                reason=f"{host} failed for {len(backing_off.failing)} different keys in a row; "
                f"left alone until {epoch_iso(backing_off.not_before)}",
            )
            return False
        validators = Validators(src.etag, src.last_modified, src.body_sha256)
        got = await self.retriever.again(src.kind, src.url, validators, src.address)
        ok = got.outcome in (Outcome.KEY, Outcome.UNCHANGED)
        # The key is taken in (in a worker) before the fetch is audited, and decided right
        # after with no await between: whoever sees refresh.fetched and then asks the socket
        # gets the decision that fetch led to, never the state before it.
        addresses, data = [], None
        if got.outcome is Outcome.KEY:
            addresses = [src.address] if src.address else self.store.addresses_of(fingerprint)
            data = await self.keys.take_in_or_refuse(
                got.data, addresses, fingerprint=fingerprint, source=src.kind, url=src.url
            )
        self._host_outcome(host, fingerprint, got)
        audit_fetch(
            self.audit, "refresh.fetched" if ok else "refresh.failed", got, fingerprint=fingerprint
        )
        self.last = {
            "fingerprint": fingerprint,
            "source": src.kind.value,
            "outcome": str(got.outcome),
            "at": epoch_iso(self._now()),
        }
        if data is not None:
            self._decide(fingerprint, src, addresses, data)
        self._book(src, got, ok)
        return ok

    def _vouched(self, fingerprint: str, src: Source) -> bool:
        """The server's update feed says the key has not changed since it was last known
        current (its last fetch, or the last feed that vouched for it): no request for it, and
        it is known current up to the end of the feed's newest window (SPEC 6)."""
        if self.feeds is None or src.failures or src.last_fetch is None:
            return False
        since = datetime.fromisoformat(src.last_fetch).timestamp()
        until = self.feeds.known_current_until(src.kind, src.url, fingerprint, since)
        if until is None:
            return False
        self.audit.emit(
            "refresh.unchanged_by_feed",
            fingerprint=fingerprint,
            source=src.kind.value,
            url=src.url,
            known_current_until=epoch_iso(until),
        )
        self.last = {
            "fingerprint": fingerprint,
            "source": src.kind.value,
            "outcome": "unchanged-by-feed",
            "at": epoch_iso(self._now()),
        }
        with self.store.transaction():
            self.store.put_source(replace(src, last_fetch=epoch_iso(until), last_status="feed"))
        return True

    def _host_outcome(self, host: str, fingerprint: str, got: Got) -> None:
        """Per-host backoff (core.refreshing, rule `host`)."""
        state = refreshing.host_after(
            self._hosts.get(host),
            fingerprint,
            failed=got.outcome in (Outcome.ERROR, Outcome.RETRY_LATER),
            no_tor=got.no_tor,
            now=self._now(),
            period=self.cfg.refresh.period,
            rng=self.rng,
        )
        if state is None:
            self._hosts.pop(host, None)
        else:
            self._hosts[host] = state

    def _decide(self, fingerprint: str, src: Source, addresses: list[str], data: Intake) -> None:
        level, positive = levels.for_source(src.kind)
        for address in addresses:
            asked = refreshing.asked_fingerprint(src.kind, fingerprint)
            found = Found(src.kind, level, positive, asked_fingerprint=asked, url=src.url)
            self.keys.consider(address, data, found)

    def _book(self, src: Source, got: Got, ok: bool) -> None:
        v = got.validators
        if ok and got.outcome is Outcome.UNCHANGED:  # a 304 carries no body to hash
            v = Validators(
                v.etag or src.etag,
                v.last_modified or src.last_modified,
                v.body_sha256 or src.body_sha256,
            )
        status = str(got.answer.status) if got.answer else str(got.outcome)
        with self.store.transaction():
            self.store.put_source(
                Source(
                    url=src.url,
                    kind=src.kind,
                    address=src.address,
                    fingerprint=src.fingerprint,
                    etag=v.etag if ok else src.etag,
                    last_modified=v.last_modified if ok else src.last_modified,
                    body_sha256=v.body_sha256 if ok else src.body_sha256,
                    last_fetch=epoch_iso(self._now()),
                    last_status=status,
                    failures=0 if ok else src.failures + 1,
                )
            )
