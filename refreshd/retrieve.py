"""One fetch from one key source, read into what the key manager needs.

Shared by first-contact discovery and the refresh engine, so both go through the same isolated
fetch (a fresh circuit each), the same streaming packet filter and the same answer readers.
WKD and nicknym are asked by address; VKS and HKP by fingerprint when refreshing (by address
only at first contact). A key body is handed on as the bytes received (bounded by the fetch to
network.max_response_bytes): the key manager strips and parses it once, with the keep set it
chooses (openpgp/intake.py). Nothing here decides which key is registered: that is the rules'
job.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from refreshd.clock import utcnow
from refreshd.config import Config
from refreshd.core.levels import Way
from refreshd.errors import FetchFailed, SourceError, TorUnavailable
from refreshd.net import hkp, nicknym, vks, wkd
from refreshd.net.answers import Outcome, lookup_outcome
from refreshd.net.fetch import Answer, Fetcher, Kind, Redirects, Request, Validators
from refreshd.openpgp.intake import Intake

__all__ = ["Got", "Retriever"]


@dataclass(frozen=True)
class Got:
    """What one request to one source produced."""

    source: Way  # a directory, or smtp (mail/retrieval.py), or openpgp-header
    url: str
    outcome: Outcome
    reason: str
    data: bytes = b""  # the key data as received, when outcome is KEY
    answer: Answer | None = None
    validators: Validators = field(default_factory=Validators)
    taken: Intake | None = None  # data already taken in (stripped, parsed), when it was
    no_tor: bool = False  # nothing was asked: Tor could not carry the fetch (TorUnavailable)


def _failed(
    source: Way,
    url: str,
    outcome: Outcome,
    reason: str,
    answer: Answer | None = None,
    *,
    no_tor: bool = False,
) -> Got:
    validators = answer.validators if answer is not None else Validators()
    return Got(source, url, outcome, reason, answer=answer, validators=validators, no_tor=no_tor)


class ProviderPins(Protocol):
    """Where a provider's keys are pinned (the key manager): what provider.json offered is
    handed over, and the pinned response key is asked for before an answer is believed."""

    def learn_provider(self, domain: str, capability: nicknym.Capability) -> None: ...

    def response_key(self, domain: str) -> bytes | None: ...


class Retriever:
    def __init__(
        self,
        cfg: Config,
        fetcher: Fetcher,
        pins: ProviderPins | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.fetcher = fetcher
        self.pins = pins
        self.clock = clock
        self._no_nicknym = nicknym.NegativeCache()

    async def key_request(self, source: Way, req: Request) -> Got:
        """A request whose body is a key (WKD, VKS, HKP)."""
        body = bytearray()
        try:
            answer = await self.fetcher.fetch(req, sink=body.extend)
        except TorUnavailable as exc:
            return _failed(source, req.url, Outcome.ERROR, exc.reason, no_tor=True)
        except FetchFailed as exc:
            return _failed(source, req.url, Outcome.ERROR, exc.reason)
        outcome = Outcome.UNCHANGED if answer.unchanged else lookup_outcome(answer.status)
        if outcome is not Outcome.KEY:
            return _failed(
                source, answer.url, outcome, f"{source} answered {answer.status}", answer
            )
        if not body:
            return _failed(source, answer.url, Outcome.REJECTED, "the answer is empty", answer)
        return Got(
            source, answer.url, Outcome.KEY, "key received", bytes(body), answer, answer.validators
        )

    async def nicknym_request(self, req: Request, address: str | None) -> Got:
        """A nicknym query; from a provider whose answers are signed, an answer without a
        valid signature bound to this request is refused (never read as its status)."""
        nonce = secrets.token_hex(16)
        req = nicknym.with_nonce(req, nonce)
        try:
            answer = await self.fetcher.fetch(req)
        except TorUnavailable as exc:
            return _failed(Way.NICKNYM, req.url, Outcome.ERROR, exc.reason, no_tor=True)
        except FetchFailed as exc:
            return _failed(Way.NICKNYM, req.url, Outcome.ERROR, exc.reason)
        domain = address.rpartition("@")[2] if address else urlsplit(req.url).hostname or ""
        key = self.pins.response_key(domain) if self.pins is not None else None
        if key is not None:
            unsigned = nicknym.check_signature(
                key, dict(answer.headers), nonce, answer.url, answer.status, answer.body
            )
            if unsigned is not None:
                return _failed(
                    Way.NICKNYM,
                    answer.url,
                    Outcome.REJECTED,
                    f"nicknym answered {answer.status} but {unsigned}; the answer is refused",
                    answer,
                )
        if answer.unchanged:
            return _failed(Way.NICKNYM, answer.url, Outcome.UNCHANGED, "unchanged", answer)
        try:
            read = nicknym.read_answer(answer.status, answer.body, address)
        except SourceError as exc:
            return _failed(Way.NICKNYM, answer.url, Outcome.REJECTED, exc.reason, answer)
        if read.outcome is not Outcome.KEY or not read.key:
            return _failed(
                Way.NICKNYM,
                answer.url,
                read.outcome,
                f"nicknym answered {answer.status} ({read.outcome})",
                answer,
            )
        return Got(
            Way.NICKNYM,
            answer.url,
            Outcome.KEY,
            "key received",
            read.key.encode("utf-8"),
            answer,
            answer.validators,
        )

    async def nicknym_uri(self, domain: str) -> str | Got:
        """The domain's nicknym endpoint, or why there is none (remembered for a while)."""
        if self._no_nicknym.knows(domain, self.clock().timestamp()):
            return _failed(
                Way.NICKNYM, domain, Outcome.NOT_FOUND, f"no nicknym at {domain} (checked recently)"
            )
        probes = nicknym.capability_requests(domain)
        answers: list[tuple[int, bytes] | None] = []
        for req in probes:
            try:
                answer = await self.fetcher.fetch(req)
            except TorUnavailable as exc:
                return _failed(Way.NICKNYM, req.url, Outcome.ERROR, exc.reason, no_tor=True)
            except FetchFailed:
                answers.append(None)
            else:
                answers.append((answer.status, answer.body))
        capability = nicknym.read_capability(domain, answers[0], answers[1])
        if self.pins is not None and capability.nicknym_uri is not None:
            self.pins.learn_provider(domain, capability)
        if capability.nicknym_uri is None:
            self._no_nicknym = self._no_nicknym.remember(domain, self.clock().timestamp())
            return _failed(Way.NICKNYM, probes[0].url, Outcome.NOT_FOUND, capability.reason)
        return capability.nicknym_uri

    async def by_address(self, source: Way, address: str) -> list[Got]:
        """First contact: ask one source for the address; WKD tries advanced then direct."""
        if source is Way.WKD:
            results = []
            for req in wkd.requests_for(address):
                got = await self.key_request(Way.WKD, req)
                results.append(got)
                if got.outcome is Outcome.KEY:
                    break
            return results
        if source is Way.NICKNYM:
            uri = await self.nicknym_uri(address.rpartition("@")[2])
            if isinstance(uri, Got):
                return [uri]
            return [await self.nicknym_request(nicknym.by_address(uri, address), address)]
        if source is Way.VKS:
            return [
                await self.key_request(Way.VKS, vks.by_email(base, address))
                for base in self.cfg.discovery.vks
            ]
        if source is Way.HKP:
            return [
                await self.key_request(Way.HKP, hkp.lookup_address(base, address))
                for base in self.cfg.discovery.hkp
            ]
        raise ValueError(source)

    async def again(
        self,
        source: Way,
        url: str,
        validators: Validators | None,
        address: str | None,
    ) -> Got:
        """Refresh: the same URL that gave the key, with the stored validators."""
        if source is Way.NICKNYM:
            return await self.nicknym_request(
                Request(url, validators=validators, kind=Kind.JSON), address
            )
        redirects = Redirects.SAME_DOMAIN_HTTPS if source is Way.WKD else Redirects.NONE
        return await self.key_request(
            source, Request(url, validators=validators, redirects=redirects)
        )

    async def by_fingerprint(self, fpr: str) -> list[Got]:
        """A key named by a signature: VKS then HKP by fingerprint."""
        out = [
            await self.key_request(Way.VKS, vks.by_fingerprint(base, fpr))
            for base in self.cfg.discovery.vks
        ]
        out += [
            await self.key_request(Way.HKP, hkp.lookup(base, fpr))
            for base in self.cfg.discovery.hkp
        ]
        return out
