"""Publishing the own key by mail: the Web Key Service and the Key Publication Protocol (SPEC 10).

Rules:
- WKS, per own address: the submission address comes from the domain's WKD (advanced method,
  then direct) and the provider's submission key from WKD too, both fetched over Tor; the key
  goes sealed to the submission key; the confirmation request (From the submission address) is
  decrypted with the own key and answered only when it names our fingerprint and this address
  (wks.py decides); then WKD is read back until it serves our fingerprint with our current
  expiry. Stages audited as own.uploaded (mechanism wks, stage submitted / confirmed /
  published, or ok false with the stage that failed).
- KPP, per own address: the public key and a fresh K_auth to keys@<domain>; the confirmation
  must verify (mail/keyproto.py), otherwise the publication failed and is audited.
- A publication starts once Tor is ready (at most network.timeout later): right after start
  a daemon's first upload would otherwise fail and wait for the retry backoff.
- Each exchange waits at most mail.answer_timeout. Failures return (False, reason) so the own-key
  task retries with its backoff.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from functools import partial

import trio

from refreshd import wks
from refreshd.audit import AuditLog
from refreshd.config import Config
from refreshd.core.ownaudit import Upload
from refreshd.errors import FetchFailed, MailError, SourceError
from refreshd.mail import keyproto
from refreshd.mail.exchange import MailExchange, Outcome, Verdict
from refreshd.mail.message import Incoming, domain_of
from refreshd.net import wkd
from refreshd.net.fetch import Fetcher, Kind, Request
from refreshd.net.tor import TorSupervisor
from refreshd.openpgp import keyview

__all__ = ["MailPublisher"]

WKD_CHECKS = 6  # read-backs of WKD after the confirmation, backing off from WKD_FIRST_CHECK
WKD_FIRST_CHECK = 2.0


def submission_address_requests(domain: str) -> list[Request]:
    """Where a domain's WKD names its submission address (advanced, then direct method)."""
    return [
        Request(
            f"https://openpgpkey.{domain}/.well-known/openpgpkey/{domain}/submission-address",
            kind=Kind.TEXT,
        ),
        Request(f"https://{domain}/.well-known/openpgpkey/submission-address", kind=Kind.TEXT),
    ]


def message_id(address: str) -> str:
    return f"<{secrets.token_hex(16)}@{domain_of(address)}>"


class MailPublisher:
    def __init__(
        self,
        cfg: Config,
        exchange: MailExchange,
        fetcher: Fetcher,
        audit: AuditLog,
        clock: Callable[[], datetime],
        tor: TorSupervisor | None = None,
    ) -> None:
        self.tor = tor
        self.cfg = cfg
        self.exchange = exchange
        self.fetcher = fetcher
        self.audit = audit
        self.clock = clock

    def _audit(self, mechanism: Upload, fingerprint: str, address: str, **fields: object) -> None:
        self.audit.emit(
            "own.uploaded",
            fingerprint=fingerprint,
            mechanism=mechanism.value,
            address=address,
            **fields,
        )

    async def _tor_ready(self) -> None:
        with trio.move_on_after(self.cfg.network.timeout):
            while self.tor is not None and not self.tor.ready:
                await self.tor.changed()

    # -- WKS --------------------------------------------------------------------------------

    async def wks(
        self,
        armored_secret: str,
        passphrase: str | None,
        public: str,
        view: keyview.KeyView,
        addresses: tuple[str, ...],
    ) -> tuple[bool, str]:
        await self._tor_ready()
        reasons = []
        for address in addresses:
            try:
                await self._wks_one(armored_secret, passphrase, public, view, address)
            except _StageFailed as exc:
                self._audit(
                    Upload.WKS,
                    view.fingerprint,
                    address,
                    ok=False,
                    stage=exc.stage,
                    reason=exc.reason,
                )
                reasons.append(f"{address}: {exc.reason}")
        return not reasons, "; ".join(reasons)

    async def _wks_one(
        self,
        armored_secret: str,
        passphrase: str | None,
        public: str,
        view: keyview.KeyView,
        address: str,
    ) -> None:
        fingerprint = view.fingerprint
        domain = domain_of(address)
        submission_to = await self._submission_address(domain)
        try:
            seal = wks.sealer(await self._key(submission_to, "submission key"))
        except wks.WksError as exc:
            raise _StageFailed("discovered", exc.args[0]) from exc
        try:
            mail = wks.build_submission(
                public,
                address,
                submission_to,
                message_id=message_id(address),
                date=self.clock(),
                seal=seal,
            )
            await self.exchange.send("wks", mail, address, submission_to)
        except (wks.WksError, MailError) as exc:
            raise _StageFailed("submitted", _reason(exc)) from exc
        self._audit(Upload.WKS, fingerprint, address, ok=True, stage="submitted", to=submission_to)
        unseal = wks.unsealer(armored_secret, passphrase)

        async def confirm(answer: Incoming) -> Outcome:
            try:
                request = await trio.to_thread.run_sync(
                    partial(wks.parse_confirmation_request, answer.raw, unseal=unseal)
                )
                response = wks.build_confirmation_response(
                    request,
                    own_fingerprint=fingerprint,
                    own_addresses=(address,),
                    message_id=message_id(address),
                    date=self.clock(),
                    seal=seal,
                )
            except wks.WksError as exc:
                return Outcome(Verdict.IGNORED, exc.args[0])
            try:
                await self.exchange.send("wks", response, address, request.sender)
            except MailError as exc:
                return Outcome(Verdict.FAILED, f"could not answer the request: {exc.reason}")
            return Outcome(Verdict.DONE, "confirmation request answered")

        outcome = await self.exchange.answer(
            "wks", [("From", submission_to)], confirm, self.cfg.mail.answer_timeout
        )
        if outcome.verdict is not Verdict.DONE:
            raise _StageFailed("confirmed", outcome.reason)
        self._audit(Upload.WKS, fingerprint, address, ok=True, stage="confirmed")
        await self._published(view, address)

    async def _submission_address(self, domain: str) -> str:
        reasons = []
        for req in submission_address_requests(domain):
            try:
                answer = await self.fetcher.fetch(req)
            except FetchFailed as exc:
                reasons.append(exc.reason)
                continue
            if answer.status != 200:
                reasons.append(f"{req.url} answered {answer.status}")
                continue
            try:
                return wks.submission_address(answer.body.decode("utf-8", "replace"))
            except wks.WksError as exc:
                reasons.append(exc.args[0])
        raise _StageFailed("discovered", "no WKS submission address: " + "; ".join(reasons))

    async def _key(self, address: str, what: str) -> bytes:
        """The key WKD serves for `address`, raw (for sealing and for the read-back)."""
        reasons = []
        try:
            requests = wkd.requests_for(address)
        except SourceError as exc:
            raise _StageFailed("discovered", exc.reason) from exc
        for req in requests:
            body = bytearray()
            limit = self.cfg.network.max_key_bytes

            def sink(chunk: bytes, body: bytearray = body, limit: int = limit) -> None:
                if len(body) + len(chunk) > limit:
                    raise FetchFailed(f"{what} larger than {limit} bytes")
                body.extend(chunk)

            try:
                answer = await self.fetcher.fetch(req, sink=sink)
            except FetchFailed as exc:
                reasons.append(exc.reason)
                continue
            if answer.status == 200 and body:
                return bytes(body)
            reasons.append(f"{req.url} answered {answer.status}")
        raise _StageFailed("discovered", f"no {what} in WKD: " + "; ".join(reasons))

    async def _published(self, view: keyview.KeyView, address: str) -> None:
        """Read WKD back until it serves our fingerprint and expiry (the provider may take a
        moment after the confirmation)."""
        delay = WKD_FIRST_CHECK
        reason = ""
        for _ in range(WKD_CHECKS):
            await trio.sleep(delay)
            delay *= 2
            try:
                served = keyview.read_key(await self._key(address, "published key"), self.clock())
            except _StageFailed as exc:
                reason = exc.reason
                continue
            except Exception as exc:  # keyview rejects malformed keys with assorted errors
                reason = f"WKD serves an unreadable key ({type(exc).__name__})"
                continue
            if served.fingerprint != view.fingerprint:
                reason = f"WKD serves {served.fingerprint}, not ours"
            elif served.primary.expires != view.primary.expires:
                reason = f"WKD still serves the expiry {served.primary.expires}"
            else:
                self._audit(
                    Upload.WKS,
                    view.fingerprint,
                    address,
                    ok=True,
                    stage="published",
                    expires=served.primary.expires.isoformat() if served.primary.expires else None,
                )
                return
        raise _StageFailed("published", reason)

    # -- KPP --------------------------------------------------------------------------------

    async def kpp(
        self, public: str, fingerprint: str, addresses: tuple[str, ...]
    ) -> tuple[bool, str]:
        await self._tor_ready()
        reasons = []
        for address in addresses:
            reason = await self._kpp_one(public, fingerprint, address)
            if reason:
                reasons.append(f"{address}: {reason}")
        return not reasons, "; ".join(reasons)

    async def _kpp_one(self, public: str, fingerprint: str, address: str) -> str:
        k_auth = keyproto.new_k_auth(secrets.token_bytes(keyproto.K_AUTH_BYTES))
        mid = message_id(address)
        try:
            mail, sent = keyproto.publication(
                address, public, k_auth, message_id=mid, date=self.clock()
            )
            await self.exchange.send("kpp", mail, address, sent.peer)
        except MailError as exc:
            self._audit(
                Upload.KPP, fingerprint, address, ok=False, stage="submitted", reason=exc.reason
            )
            return exc.reason
        self._audit(Upload.KPP, fingerprint, address, ok=True, stage="submitted", to=sent.peer)

        async def confirm(answer: Incoming) -> Outcome:
            try:
                keyproto.check_confirmation(sent, answer)
            except MailError as exc:
                return Outcome(Verdict.FAILED, exc.reason)
            return Outcome(Verdict.DONE, "confirmation MAC verified")

        terms = [("In-Reply-To", mid), ("References", mid)]
        outcome = await self.exchange.answer("kpp", terms, confirm, self.cfg.mail.answer_timeout)
        if outcome.verdict is not Verdict.DONE:
            self._audit(
                Upload.KPP, fingerprint, address, ok=False, stage="confirmed", reason=outcome.reason
            )
            return outcome.reason
        self._audit(Upload.KPP, fingerprint, address, ok=True, stage="confirmed")
        return ""


class _StageFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, MailError) else str(exc.args[0] if exc.args else exc)
