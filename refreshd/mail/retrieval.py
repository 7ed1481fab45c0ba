"""The `smtp` discovery source: the Key Retrieval Protocol of 001_ef4959fe9811f7b2.txt (SPEC 10).

Rules:
- A key request (mail/keyproto.py) goes from the user's own address (the mail.imap login) to
  keys@<domain of the queried address> through the user's submission server, which relays it;
  so both providers learn whom the user asked about (README, "What the mail channel reveals").
- The answer counts only when it answers this request, comes From keys@<that domain> and its
  MAC verifies; then its key goes to the key manager like any fetched key (rule 5.3 decides
  whether it belongs to the address; the level is core/levels.py's for "smtp").
- No answer within mail.answer_timeout, a refused submission or a bad answer is a failed Got
  with the reason, audited by discovery as any failed source.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime

from refreshd.config import Config
from refreshd.core.levels import Way
from refreshd.errors import MailError
from refreshd.mail import keyproto
from refreshd.mail.exchange import MailExchange, Outcome, Verdict
from refreshd.mail.message import Incoming, domain_of
from refreshd.net.answers import Outcome as Answered
from refreshd.retrieve import Got

__all__ = ["KeyRequests"]

SOURCE = Way.SMTP


class KeyRequests:
    def __init__(self, cfg: Config, exchange: MailExchange, clock: Callable[[], datetime]) -> None:
        self.cfg = cfg
        self.clock = clock
        self.exchange = exchange
        channel = exchange.channel
        door = channel.imap
        self.own_address = door.user if door is not None and "@" in door.user else ""

    async def ask(self, address: str) -> Got:
        """One key request for `address` and its answer, as a Got of source "smtp"."""
        peer = keyproto.keys_address(address) if "@" in address else address
        where = f"mailto:{peer}"
        if not self.own_address:
            return Got(SOURCE, where, Answered.ERROR, "mail.imap names no address to ask from")
        k_auth = keyproto.new_k_auth(secrets.token_bytes(keyproto.K_AUTH_BYTES))
        mid = f"<{secrets.token_hex(16)}@{domain_of(self.own_address)}>"
        try:
            mail, sent = keyproto.request(
                self.own_address, address, k_auth, message_id=mid, date=self.clock()
            )
            await self.exchange.send("krp", mail, self.own_address, sent.peer)
        except MailError as exc:
            return Got(SOURCE, where, Answered.ERROR, f"key request not sent: {exc.reason}")

        async def check(answer: Incoming) -> Outcome:
            try:
                key = keyproto.check_response(sent, answer)
            except MailError as exc:
                return Outcome(Verdict.FAILED, exc.reason)
            return Outcome(Verdict.DONE, "key response MAC verified", key)

        terms = [("In-Reply-To", mid), ("References", mid)]
        outcome = await self.exchange.answer("krp", terms, check, self.cfg.mail.answer_timeout)
        if outcome.verdict is not Verdict.DONE or not isinstance(outcome.value, str):
            return Got(SOURCE, where, Answered.ERROR, outcome.reason)
        return Got(SOURCE, where, Answered.KEY, outcome.reason, data=outcome.value.encode())
