"""First contact: a person is waiting, so discovery runs at once (SPEC 6).

The sources in discovery.order are asked at once, each request on its own circuit, and their
answers weighed in that order; every answer is audited; what was found goes to the key manager,
which registers the highest level (rule 1). The URL that gave the registered key is remembered
for refreshes: WKD and nicknym by address, VKS and HKP by fingerprint.

The bound a person waits for: one source may take SOURCE_BUDGET (30 s) at first contact, after
which it counts as failed for this discovery; since all sources run at once, a first contact
ends within SOURCE_BUDGET of its start however many servers stall. CONCURRENT_DISCOVERIES run
together, so an unrelated address waits behind stalled ones for at most one budget. The queue
holds QUEUE addresses and WAITING_FOR_ROOM more in arrival order; `lookup` of one still
waiting says so ("queue full, will retry"), never "no key found".

Network perspectives (core/perspectives.py states the rules): a provider directory (WKD,
nicknym) is asked over validation.perspectives paths at once. How the paths are chosen: each
request gets fresh SOCKS credentials, which Tor's IsolateSOCKSAuth turns into a circuit of its
own, and the exit of each path is then read from Tor's circuit list (the circuit carrying those
credentials), not assumed. The alternative, building circuits with chosen exits through stem
and attaching each stream, needs __LeaveStreamsUnattached on the Tor client: every stream of
every application using that Tor (a system Tor is shared with Tor Browser and others) would then
wait for refreshd to attach it, and hang whenever refreshd is not running. Isolation leaves Tor
in charge of its paths and still lets the audit line say which exits answered, and whether the
paths shared one (a network with a single exit). Isolation does not make Tor pick another exit:
a path that came back through an exit another path already had is asked again over a fresh
circuit, a bounded number of rounds, while the consensus lists enough exits (rule 6; the count
is Tor's, `exit_count`). Agreeing paths give one answer to the rules;
disagreeing paths register nothing: the conflict is audited as discovery.conflict, `lookup`
answers `conflict` with what each path saw, and the address is asked again only after
CONFLICT_HOLD, over fresh circuits. The hold is kept in the store's state table
(CONFLICTS_STATE, at most CONFLICTS_KEPT addresses), so a restart does not ask again at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import trio

from refreshd.audit import AuditLog
from refreshd.config import Config
from refreshd.core import levels, perspectives, refreshing
from refreshd.core.levels import Way
from refreshd.core.rules import Decision
from refreshd.errors import KeyRejected
from refreshd.keymanager import Found, KeyManager
from refreshd.net import hkp, vks
from refreshd.net.answers import Outcome
from refreshd.net.fetch import Redirects, Request
from refreshd.openpgp.intake import Intake
from refreshd.retrieve import Got, Retriever
from refreshd.store import Source, iso, parse_time

__all__ = ["Discovery", "audit_fetch"]

_FAILED = perspectives.Seen.FAILED

CONCURRENT_DISCOVERIES = 8
MAIL_FAILURES_KEPT = 1000  # reasons `lookup` can give for failed key requests by mail
SOURCE_BUDGET = 30.0  # seconds one source may take at first contact (all are asked at once)
QUEUE = 1000  # addresses handed to the discovery loop
WAITING_FOR_ROOM = 10_000  # addresses beyond QUEUE, sent on as discoveries end
ENDORSER_RETRY = 600.0  # seconds between attempts to fetch an endorser's key we do not hold
# asked over several network paths at first contact
PROVIDER_DIRECTORIES = frozenset({Way.WKD, Way.NICKNYM})
CONFLICT_HOLD = 600.0  # seconds before an address whose paths disagreed is asked again
CONFLICTS_STATE = "discovery_conflicts"  # state table: address -> {reason, until}
CONFLICTS_KEPT = 1000  # held conflicts remembered at most (the oldest go first)
SEEN = {
    Outcome.KEY: perspectives.Seen.KEYS,
    Outcome.NOT_FOUND: perspectives.Seen.NOT_FOUND,
    Outcome.GONE: perspectives.Seen.NOT_FOUND,
}


def refresh_url(got: Got, fingerprint: str) -> str:
    """Where a key found by `got` is refreshed from (SPEC 6)."""
    if got.source is Way.VKS:
        base = got.url.split("/vks/")[0]
        return vks.by_fingerprint(base, fingerprint).url
    if got.source is Way.HKP:
        base = got.url.split("/pks/")[0]
        return hkp.lookup(base, fingerprint).url
    return got.url


def audit_fetch(audit: AuditLog, event: str, got: Got, **extra: object) -> None:
    answer = got.answer
    audit.emit(
        event,
        source=got.source.value,
        url=got.url,
        outcome=str(got.outcome),
        status=answer.status if answer else None,
        bytes=answer.body_bytes if answer else 0,
        wire_bytes=answer.wire_bytes if answer else 0,
        seconds=round(answer.seconds, 3) if answer else None,
        reason=got.reason,
        **extra,
    )


class Discovery:
    def __init__(
        self,
        keys: KeyManager,
        retriever: Retriever,
        cfg: Config,
        audit: AuditLog,
        clock: Callable[[], datetime],
        *,
        exit_of: Callable[[str], Awaitable[str | None]] | None = None,
        exit_count: Callable[[], Awaitable[int | None]] | None = None,
        krp: Callable[[str], Awaitable[Got]] | None = None,
    ) -> None:
        self.keys = keys
        self.retriever = retriever
        self.cfg = cfg
        self.audit = audit
        self.clock = clock
        self.exit_of = exit_of  # SOCKS username -> exit relay, from Tor (TorSupervisor.exit_of)
        self.exit_count = exit_count  # exits in Tor's consensus (TorSupervisor.exit_count)
        self.krp = krp  # the smtp source (mail/retrieval.py), when [mail] is configured
        self._mail_failures: dict[str, str] = {}  # address -> why its last key request failed
        self._conflicts = self._held_conflicts()  # address -> (reason, held until)
        self._done: dict[str, trio.Event] = {}
        self._send, self._receive = trio.open_memory_channel[str](QUEUE)
        self._later: dict[str, None] = {}  # in arrival order

    def mail_failure(self, address: str) -> str | None:
        """Why the last key request by mail (the smtp source) for the address failed."""
        return self._mail_failures.get(address)

    def pending(self, address: str) -> bool:
        return address in self._done

    def conflict(self, address: str) -> str | None:
        """Why the last discovery of the address registered nothing because its network paths
        disagreed, while that is held (CONFLICT_HOLD); else None."""
        held = self._conflicts.get(address)
        if held is None:
            return None
        if self.clock() >= held[1]:
            del self._conflicts[address]  # the store forgets it at the next hold
            return None
        return held[0]

    def _hold(self, address: str, reason: str) -> None:
        now = self.clock()
        held = {a: h for a, h in self._conflicts.items() if h[1] > now and a != address}
        held[address] = (reason, now + timedelta(seconds=CONFLICT_HOLD))
        while len(held) > CONFLICTS_KEPT:
            del held[next(iter(held))]
        self._conflicts = held
        value = {a: {"reason": r, "until": iso(until)} for a, (r, until) in held.items()}
        self.keys.store.put_state(CONFLICTS_STATE, json.dumps(value))

    def _held_conflicts(self) -> dict[str, tuple[str, datetime]]:
        """The holds a previous run left in the store; anything unreadable is dropped."""
        try:
            value = json.loads(self.keys.store.get_state(CONFLICTS_STATE) or "{}")
            return {
                address: (str(item["reason"]), until)
                for address, item in dict(value).items()
                if (until := parse_time(item["until"])) is not None
            }
        except (ValueError, TypeError, KeyError):
            return {}

    def request(self, address: str) -> bool:
        """Queue a first contact; False only when even the overflow is full (ask again)."""
        if address in self._done or self.conflict(address) is not None:
            return True
        try:
            self._send.send_nowait(address)
        except trio.WouldBlock:
            if len(self._later) >= WAITING_FOR_ROOM:
                return False
            self._later[address] = None  # sent on by _refill when a discovery ends
        self._done[address] = trio.Event()
        return True

    def waiting_for_room(self, address: str) -> bool:
        """The queue was full when the address was asked for: it waits its turn."""
        return address in self._later

    def _refill(self) -> None:
        while self._later:
            address = next(iter(self._later))
            try:
                self._send.send_nowait(address)
            except trio.WouldBlock:
                return
            del self._later[address]

    async def wait(self, address: str, seconds: float) -> None:
        event = self._done.get(address)
        if event is not None:
            with trio.move_on_after(seconds):
                await event.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limiter = trio.CapacityLimiter(CONCURRENT_DISCOVERIES)
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(self.fetch_endorsers)
            async for address in self._receive:
                self._refill()  # a place in the queue just came free
                await limiter.acquire_on_behalf_of(address)
                nursery.start_soon(self._one, address, limiter)

    async def _one(self, address: str, limiter: trio.CapacityLimiter) -> None:
        try:
            await self.discover(address)
        except Exception as exc:  # one failed discovery must not end the others or the daemon
            self.audit.emit(
                "discovery.error", address=address, error=f"{type(exc).__name__}: {exc}"[:300]
            )
        finally:
            limiter.release_on_behalf_of(address)
            self._done.pop(address).set()
            self._refill()

    async def fetch_endorsers(self, retry: float = ENDORSER_RETRY) -> None:
        """The configured endorsers' keys are fetched by fingerprint (VKS, then HKP) until we
        hold each one; once registered for its addresses they are refreshed like any key."""
        while True:
            missing = [f for f in self.cfg.validation.endorsers if not self.keys.store.get_key(f)]
            for fingerprint in missing:
                try:
                    await self.fetch_endorser(fingerprint)
                except Exception as exc:  # one endorser must not end the others or the daemon
                    self.audit.emit(
                        "discovery.error",
                        fingerprint=fingerprint,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )
            if not missing:
                return
            await trio.sleep(retry)

    async def fetch_endorser(self, fingerprint: str) -> Decision | None:
        """One endorser's key, registered for every address it carries."""
        last: Decision | None = None
        for got in await self.retriever.by_fingerprint(fingerprint):
            if not self._audited(got, fingerprint=fingerprint):
                continue
            level, positive = levels.for_source(got.source)
            found = Found(got.source, level, positive, asked_fingerprint=fingerprint, url=got.url)
            taken = await self.keys.take_in_or_refuse(
                got.data, None, fingerprint=fingerprint, source=got.source, url=got.url
            )
            if taken is None:
                continue
            addresses = sorted({a for k in taken.keys for a in k.view.addresses()})
            for address in addresses:
                last = self.keys.consider(address, taken, found)
                if last.registers:
                    self._remember_sources(address, last.fingerprint, [got])
            if last is not None and last.registers:
                return last
        return last

    def _audited(self, got: Got, **context: str) -> bool:
        """Audit one answer as discovery.fetched or discovery.failed; True if it brought a key."""
        ok = got.outcome is Outcome.KEY
        audit_fetch(self.audit, "discovery.fetched" if ok else "discovery.failed", got, **context)
        return ok

    def _sources(self) -> list[Way]:
        configured = {
            Way.VKS: bool(self.cfg.discovery.vks),
            Way.HKP: bool(self.cfg.discovery.hkp),
            Way.SMTP: False,  # asked last and alone: see _by_mail
        }
        return [s for s in self.cfg.discovery.order if configured.get(s, True)]

    async def discover(self, address: str) -> Decision | None:
        sources = self._sources()
        answers: dict[Way, list[Got] | None] = {}

        async def ask(source: Way) -> None:
            with trio.move_on_after(SOURCE_BUDGET) as budget:
                answers[source] = await self._ask(source, address)
            if budget.cancelled_caught:
                reason = f"no answer within {SOURCE_BUDGET:g} s, the bound of a first contact"
                answers[source] = [Got(source, "", Outcome.ERROR, reason)]

        async with trio.open_nursery() as nursery:  # sources at once: a stalled one costs
            for source in sources:  # SOURCE_BUDGET, not its place in the order times that
                nursery.start_soon(ask, source)
        found: list[tuple[bytes | Intake, Found, Got]] = []
        for source in sources:  # audited and weighed in discovery.order, as before
            gots = answers[source]
            if gots is None:  # the network paths disagreed: nothing is registered
                return None
            for got in gots:
                if self._audited(got, address=address):
                    level, positive = levels.for_source(source)
                    data = got.taken if got.taken is not None else got.data
                    found.append((data, Found(source, level, positive, url=got.url), got))
        decision = None
        if found:
            taken = [(await self.keys.taken_in(address, k), f) for k, f, _ in found]
            decision = self.keys.first_contact(address, list(taken))
            if decision is not None and decision.registers:
                self._remember_sources(address, decision.fingerprint, [g for _, _, g in found])
        if decision is None or not decision.registers:
            return await self._by_mail(address) or decision
        return decision

    async def _by_mail(self, address: str) -> Decision | None:
        """The smtp source (Key Retrieval Protocol), when listed: only after the others found
        nothing to register, since its answer takes a mail round trip (`lookup` says pending
        meanwhile) and its request tells both providers whom the user asks about. It is not
        remembered as a refresh source: refreshes go where the web sources are."""
        if self.krp is None or Way.SMTP not in self.cfg.discovery.order:
            return None
        got = await self.krp(address)
        if not self._audited(got, address=address):
            if len(self._mail_failures) >= MAIL_FAILURES_KEPT:
                self._mail_failures.pop(next(iter(self._mail_failures)))
            self._mail_failures[address] = got.reason
            return None
        self._mail_failures.pop(address, None)
        level, positive = levels.for_source(Way.SMTP)
        taken = await self.keys.taken_in(address, got.data)
        return self.keys.first_contact(
            address, [(taken, Found(Way.SMTP, level, positive, url=got.url))]
        )

    async def _ask(self, source: Way, address: str) -> list[Got] | None:
        """One source's answers for the address: over several paths for a provider directory
        (None when they disagree), else one request after another as before."""
        paths = self.cfg.validation.perspectives
        if source not in PROVIDER_DIRECTORIES or paths < 2:
            return await self.retriever.by_address(source, address)
        answers: list[list[Got]] = [[] for _ in range(paths)]
        views: list[perspectives.View] = []

        async def one(i: int) -> None:
            answers[i] = await self.retriever.by_address(source, address)

        rounds, asking = 0, list(range(paths))
        while asking:  # every path at once; then, rule 6, those that repeated an exit
            async with trio.open_nursery() as nursery:
                for i in asking:
                    nursery.start_soon(one, i)
            views = [
                await self._view(answers[i], address) if i in asking else views[i]
                for i in range(paths)
            ]
            ask = self.exit_count is not None and perspectives.repeated(views)
            exits = await self.exit_count() if ask and self.exit_count else None
            asking = perspectives.ask_again(views, exits, rounds)  # within SOURCE_BUDGET
            rounds += bool(asking)
        comparison = perspectives.compare(views)
        seen = [v.describe() for v in views]
        self.audit.emit(
            "discovery.perspectives",
            address=address,
            source=source.value,
            verdict=str(comparison.verdict),
            shared_exit=comparison.shared_exit,
            exits=list(comparison.exits),
            asked_again=rounds,
            paths=seen,
            reason=comparison.reason,
        )
        if comparison.verdict is perspectives.Verdict.CONFLICT:
            self._hold(address, comparison.reason)
            for gots in answers:
                for got in gots:
                    audit_fetch(self.audit, "discovery.failed", got, address=address)
            self.audit.emit(
                "discovery.conflict",
                address=address,
                source=source.value,
                paths=seen,
                exits=list(comparison.exits),
                reason=comparison.reason,
            )
            return None
        # agreement (or a single answering path) is one answer: it raises no level (SPEC 5.1)
        answered = [g for g, v in zip(answers, views, strict=True) if v.seen is not _FAILED]
        return answered[0] if answered else answers[0]

    async def _view(self, gots: list[Got], address: str) -> perspectives.View:
        """What one path saw: its final answer, the exit Tor says carried it, and a digest of
        each key's material as the rules take it in. The key is taken in here, with the key
        manager's keep set, and the parsed value replaces the answer in gots, so the rules do
        not parse it again (one intake per fetched key)."""
        got = next((g for g in gots if g.outcome is Outcome.KEY), gots[-1] if gots else None)
        if got is None:
            return perspectives.View(None, _FAILED, reason="no request was made")
        username = got.answer.circuit_credentials if got.answer is not None else ""
        exit_fpr = await self.exit_of(username) if self.exit_of and username else None
        seen = SEEN.get(got.outcome, _FAILED)
        if seen is not perspectives.Seen.KEYS:
            return perspectives.View(exit_fpr, seen, reason=got.reason)
        try:
            read = await self.keys.take_in_apart(got.data, [address])
        except KeyRejected as exc:
            return perspectives.View(exit_fpr, _FAILED, reason=exc.reason)
        gots[gots.index(got)] = replace(got, taken=read)
        digests = {k.fingerprint: hashlib.sha256(k.data).hexdigest() for k in read.keys}
        if not digests:
            return perspectives.View(exit_fpr, _FAILED, reason=read.failure)
        return perspectives.View(exit_fpr, perspectives.Seen.KEYS, digests)

    def _remember_sources(self, address: str, fingerprint: str, gots: list[Got]) -> None:
        now = iso(self.clock())
        with self.keys.store.transaction():
            for got in gots:
                url = refresh_url(got, fingerprint)
                same_url = url == got.url
                self.keys.store.put_source(
                    Source(
                        url=url,
                        kind=got.source,
                        address=address if refreshing.by_address(got.source) else None,
                        fingerprint=fingerprint,
                        etag=got.validators.etag if same_url else None,
                        last_modified=got.validators.last_modified if same_url else None,
                        body_sha256=got.validators.body_sha256 if same_url else None,
                        last_fetch=now,
                        last_status="200",
                    )
                )

    async def from_header_url(self, address: str, url: str) -> Decision | None:
        """An OpenPGP header URL in standard form on the From domain, fetched over
        authenticated TLS through Tor, is provider-trust (SPEC 5.1); None if it gave no key."""
        req = Request(url, redirects=Redirects.SAME_DOMAIN_HTTPS)
        got = await self.retriever.key_request(Way.OPENPGP_HEADER, req)
        ok = got.outcome is Outcome.KEY
        audit_fetch(
            self.audit, "discovery.fetched" if ok else "discovery.failed", got, address=address
        )
        if not ok:
            return None
        found = Found(Way.OPENPGP_HEADER, *levels.for_source(Way.OPENPGP_HEADER), url=got.url)
        return self.keys.consider(address, await self.keys.taken_in(address, got.data), found)

    async def by_fingerprint(self, address: str, fingerprint: str, found: Found) -> Decision:
        """A key named only by its fingerprint (a signature in mail): VKS, then HKP; a key
        with another fingerprint is refused (SPEC 5.3)."""
        found = replace(found, asked_fingerprint=fingerprint)
        last: Decision | None = None
        for got in await self.retriever.by_fingerprint(fingerprint):
            ok = got.outcome is Outcome.KEY
            audit_fetch(
                self.audit, "discovery.fetched" if ok else "discovery.failed", got, address=address
            )
            if ok:
                taken = await self.keys.taken_in(address, got.data)
                last = self.keys.consider(address, taken, found)
                if last.registers:
                    self._remember_sources(address, last.fingerprint, [got])
                    return last
        if last is not None:
            return last
        return found.rejected(fingerprint, f"No source had the key {fingerprint}.")
