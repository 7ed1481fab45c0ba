"""Waiting for the answers to refreshd's own mail (SPEC 10): the IMAP poller and its waiters.

Rules:
1. Only while something waits is the mailbox polled: first after FIRST_POLL seconds, then
   backing off to MAX_POLL; a new waiter polls soon again.
2. A poll asks the server only for messages not yet handled that match a waiter's terms
   (In-Reply-To/References naming one of our Message-IDs, or the From of a protocol peer such
   as a WKS submission address). Each message is looked at once per daemon run.
3. A message larger than the limit, or unreadable, is audited (`mail.refused`) and left alone.
4. A waiter's handler says DONE (the message is handled: the configured action marks it),
   FAILED (the exchange ends unsuccessfully; the message is left as it was) or IGNORED (not
   the answer after all: audited, left as it was, the waiter goes on waiting).
5. A waiter with no answer within its timeout ends FAILED, "no answer within N s".
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from refreshd.audit import AuditLog
from refreshd.errors import MailError
from refreshd.mail.channel import MailChannel
from refreshd.mail.message import Incoming, parse

__all__ = ["MailExchange", "Outcome", "Verdict"]

FIRST_POLL = 2.0
MAX_POLL = 60.0


class Verdict(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str
    value: object = None


Handler = Callable[[Incoming], Awaitable[Outcome]]


@dataclass(eq=False)
class _Waiter:
    kind: str
    terms: tuple[tuple[str, str], ...]
    handle: Handler
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None

    def wants(self, mail: Incoming) -> bool:
        for header, value in self.terms:
            if header in ("In-Reply-To", "References") and mail.answers(value):
                return True
            if header == "From" and mail.sender == value.lower():
                return True
        return False


class MailExchange:
    """Sends a mail and waits for its answer; one poller serves every waiter."""

    def __init__(self, channel: MailChannel, audit: AuditLog, max_bytes: int) -> None:
        self.channel = channel
        self.audit = audit
        self.max_bytes = max_bytes
        self._waiters: list[_Waiter] = []
        self._seen: set[str] = set()
        self._wake = trio.Event()

    async def send(self, kind: str, mail: bytes, sender: str, to: str) -> None:
        """Submit one of refreshd's mails; MailError says why it could not go."""
        await self.channel.send(mail, sender, [to])
        self.audit.emit("mail.sent", kind=kind, to=to)

    async def answer(
        self, kind: str, terms: Sequence[tuple[str, str]], handle: Handler, patience: float
    ) -> Outcome:
        """Wait until `handle` settles a matching message (rule 4), at most `patience` seconds
        (rule 5)."""
        waiter = _Waiter(kind, tuple(terms), handle)
        self._waiters.append(waiter)
        self._wake.set()
        try:
            with trio.move_on_after(patience):
                await waiter.done.wait()
        finally:
            self._waiters.remove(waiter)
        if waiter.outcome is None:
            return Outcome(Verdict.FAILED, f"no answer within {round(patience)} s")
        return waiter.outcome

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rule 1. A new waiter cuts the current wait short and restarts the backoff."""
        task_status.started()
        delay = FIRST_POLL
        while True:
            if not self._waiters:
                await self._wake.wait()
            with trio.move_on_after(delay):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()
                delay = FIRST_POLL
                await trio.sleep(FIRST_POLL)  # the mail just sent needs a moment
            await self.poll()
            delay = min(delay * 2, MAX_POLL)

    async def poll(self) -> None:
        """One look at the mailbox for every waiter (rules 2-4)."""
        waiting = list(self._waiters)
        terms = sorted({t for w in waiting for t in w.terms})
        if not terms:
            return
        try:
            found = await self.channel.search(terms, self.max_bytes)
        except MailError as exc:
            self.audit.emit("mail.failed", stage="read", reason=exc.reason)
            return
        for ident, raw in found:
            if ident in self._seen:
                continue
            self._seen.add(ident)
            if raw is None:
                self.audit.emit("mail.refused", reason=f"larger than {self.max_bytes} bytes")
                continue
            try:
                mail = await trio.to_thread.run_sync(parse, raw, self.max_bytes)
            except MailError as exc:
                self.audit.emit("mail.refused", reason=exc.reason)
                continue
            settled = await self._settle(mail, [w for w in waiting if not w.done.is_set()])
            if settled is None:
                continue
            waiter, outcome = settled
            if outcome.verdict is Verdict.DONE:
                # Marked before the waiter hears of it: whoever learns the answer arrived can
                # rely on the mailbox showing it handled.
                try:
                    await self.channel.mark_handled([ident])
                except MailError as exc:
                    self.audit.emit("mail.failed", stage="mark", reason=exc.reason)
            waiter.outcome = outcome
            waiter.done.set()

    async def _settle(
        self, mail: Incoming, waiting: list[_Waiter]
    ) -> tuple[_Waiter, Outcome] | None:
        """The first waiter whose handler does not ignore `mail`, and what it said."""
        for waiter in waiting:
            if not waiter.wants(mail):
                continue
            try:
                outcome = await waiter.handle(mail)
            except MailError as exc:
                outcome = Outcome(Verdict.IGNORED, exc.reason)
            except Exception as exc:  # a stranger's mail must never stop the poller
                outcome = Outcome(Verdict.IGNORED, f"unreadable answer ({type(exc).__name__})")
            self.audit.emit(
                "mail.answer",
                kind=waiter.kind,
                verdict=outcome.verdict.value,
                reason=outcome.reason,
            )
            if outcome.verdict is not Verdict.IGNORED:
                return waiter, outcome
        return None
