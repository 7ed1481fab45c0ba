"""Nicknym: a provider's key directory for its own addresses (LEAP Nicknym API, reference 002).

Rules:
- A domain supports nicknym when https://<domain>/provider.json answers 200 with a JSON object
  whose `nicknym_uri` is an https URL on the domain's registrable domain (that is where queries
  go), or else when https://<domain>/.well-known/key-discovery answers 200 (queries then go to
  LEAP's default https://nicknym.<domain>:6425).
- A domain found not to support nicknym is not asked again for NEGATIVE_TTL seconds
  (`NegativeCache`, a pure value: remember / knows, with `now` passed in).
- Queries: GET <nicknym_uri>?address=<address> or ?fingerprint=<FPR>; redirects only to https on
  the same registrable domain.
- Answer codes: 200 key, 304 unchanged, 400 error, 404 never existed, 409 not yet endorsed,
  410 gone, 500/502/504 (every 5xx) retry later.
- A 200 body is the nickserver's JSON {"address": ..., "openpgp": "<armored key>"} or a bare
  armored key; a JSON answer for another address, or no armored key, is rejected.
- Signed answers (docs/nicknym-signatures.md): provider.json may name the provider's
  endorsement keys (`endorsement_keys`, armored OpenPGP keys) and its response-signing key
  (`response_key`, "ed25519:<base64>"). Every query then carries a fresh random nonce, and
  every answer, whatever its status, must carry an Ed25519 signature over the nonce, the
  request target, the status and the body's SHA-256 (`check_signature`); the caller refuses
  an answer that fails it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from urllib.parse import quote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from refreshd.errors import SourceError
from refreshd.net.answers import LOOKUP_STATUS, Outcome, json_object, lookup_outcome
from refreshd.net.fetch import Kind, Redirects, Request, Validators, registrable_domain
from refreshd.net.wkd import same_address, split_address

__all__ = [
    "Capability",
    "NegativeCache",
    "by_address",
    "capability_requests",
    "check_signature",
    "read_answer",
    "read_capability",
    "with_nonce",
]

NONCE_HEADER = "Nicknym-Nonce"
SIGNATURE_HEADER = "nicknym-signature"
SIGNATURE_DOMAIN = b"nicknym-response-v1"

NEGATIVE_TTL = 86400.0
ARMOR_HEADER = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
STATUS: Mapping[int, Outcome] = {
    **LOOKUP_STATUS,
    400: Outcome.ERROR,
    404: Outcome.NOT_FOUND,
    409: Outcome.NOT_ENDORSED,
    410: Outcome.GONE,
}


@dataclass(frozen=True)
class Capability:
    nicknym_uri: str | None  # None: the domain does not support nicknym
    reason: str
    endorsement_keys: tuple[str, ...] = ()  # armored, as provider.json lists them
    response_key: bytes | None = None  # the raw Ed25519 public key answers are signed with


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    key: str | None  # the armored key, with outcome KEY
    reason: str


def capability_requests(domain: str) -> list[Request]:
    """provider.json first (it names the nickserver), then the key-discovery marker."""
    host = quote(domain.lower(), safe=".-")
    return [
        Request(
            f"https://{host}/provider.json", redirects=Redirects.SAME_DOMAIN_HTTPS, kind=Kind.JSON
        ),
        Request(
            f"https://{host}/.well-known/key-discovery",
            redirects=Redirects.SAME_DOMAIN_HTTPS,
            kind=Kind.TEXT,
        ),
    ]


def _nicknym_uri(domain: str, provider: Mapping[str, object]) -> str:
    uri = provider.get("nicknym_uri")
    if not isinstance(uri, str) or not uri:
        raise SourceError("provider.json names no nicknym_uri")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise SourceError(f"nicknym_uri is not a URL: {uri[:200]!r}") from None
    if parts.scheme != "https" or not host:
        raise SourceError(f"nicknym_uri is not an https URL: {uri[:200]!r}")
    if registrable_domain(host) != registrable_domain(domain):
        raise SourceError(f"nicknym_uri points to another domain ({host[:200]})")
    return uri


def _provider_keys(provider: Mapping[str, object]) -> tuple[tuple[str, ...], bytes | None]:
    """The endorsement keys and the response-signing key provider.json names, if any."""
    keys = provider.get("endorsement_keys", [])
    if not isinstance(keys, list) or not all(
        isinstance(k, str) and ARMOR_HEADER in k for k in keys
    ):
        raise SourceError("provider.json: endorsement_keys is not a list of armored keys")
    raw = provider.get("response_key")
    if raw is None:
        return tuple(keys), None
    kind, _, value = raw.partition(":") if isinstance(raw, str) else ("", "", "")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if kind != "ed25519" or len(key) != 32:
        raise SourceError('provider.json: response_key is not "ed25519:<base64 of 32 bytes>"')
    return tuple(keys), key


def read_capability(
    domain: str,
    provider: tuple[int, bytes] | None,
    discovery: tuple[int, bytes] | None,
) -> Capability:
    """Whether and where `domain` runs nicknym, from the (status, body) of both probes.

    None stands for a probe that got no answer at all (connection failed)."""
    problem = "no answer"
    if provider is not None:
        status, body = provider
        if status == 200:
            try:
                read = json_object(body, "provider.json")
                uri = _nicknym_uri(domain, read)
                endorsement, response = _provider_keys(read)
                return Capability(uri, "provider.json names the nickserver", endorsement, response)
            except SourceError as exc:
                problem = exc.reason
        else:
            problem = f"provider.json answered {status}"
    if discovery is not None and discovery[0] == 200:
        return Capability(
            f"https://nicknym.{domain.lower()}:6425", "key-discovery says nicknym is supported"
        )
    found = f"key-discovery answered {discovery[0]}" if discovery else "key-discovery: no answer"
    return Capability(None, f"no nicknym at {domain}: {problem}; {found}")


def _query(uri: str, name: str, value: str, validators: Validators | None) -> Request:
    separator = "&" if urlsplit(uri).query else "?"
    return Request(
        f"{uri}{separator}{name}={quote(value, safe='@')}",
        redirects=Redirects.SAME_DOMAIN_HTTPS,
        validators=validators,
        kind=Kind.JSON,
    )


def with_nonce(req: Request, nonce: str) -> Request:
    """The query carrying the nonce a signed answer must bind (and asking for the signature)."""
    return replace(req, headers=((NONCE_HEADER, nonce),), keep_headers=(SIGNATURE_HEADER,))


def signed_message(nonce: str, target: str, status: int, body: bytes) -> bytes:
    """What the provider's response key signs for one answer (docs/nicknym-signatures.md)."""
    digest = hashlib.sha256(body).hexdigest()
    return b"\n".join(
        [SIGNATURE_DOMAIN, nonce.encode(), target.encode(), str(status).encode(), digest.encode()]
    )


def request_target(url: str) -> str:
    """The request target as sent: path and query."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def check_signature(
    response_key: bytes, headers: Mapping[str, str], nonce: str, url: str, status: int, body: bytes
) -> str | None:
    """None when the answer carries a valid signature by response_key bound to this request;
    otherwise why not, in one sentence."""
    value = headers.get(SIGNATURE_HEADER)
    if value is None:
        return "the answer is not signed, though this provider signs its answers"
    kind, _, encoded = value.strip().partition(" ")
    try:
        signature = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if kind != "ed25519" or len(signature) != 64:
        return "the answer's signature is malformed"
    message = signed_message(nonce, request_target(url), status, body)
    try:
        Ed25519PublicKey.from_public_bytes(response_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return "the answer's signature does not verify with the provider's pinned response key"
    return None


def by_address(uri: str, address: str, validators: Validators | None = None) -> Request:
    split_address(address)
    return _query(uri, "address", address, validators)


def _armored_key(body: bytes, address: str | None) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError("nicknym answer is not UTF-8") from None
    if text.lstrip().startswith(ARMOR_HEADER):
        return text
    answer = json_object(text, "nicknym answer", not_json="is neither JSON nor an armored key")
    key = answer.get("openpgp")
    if not isinstance(key, str) or ARMOR_HEADER not in key:
        raise SourceError("nicknym answer carries no armored key in 'openpgp'")
    named = answer.get("address")
    if named is not None and (
        not isinstance(named, str) or (address and not same_address(named, address))
    ):
        raise SourceError(f"nicknym answered for another address ({str(named)[:200]!r})")
    return key


def read_answer(status: int, body: bytes, address: str | None = None) -> Answer:
    """The outcome of a query; `address` is the one asked for, if the query was by address."""
    outcome = lookup_outcome(status, STATUS)
    if outcome is not Outcome.KEY:
        return Answer(outcome, None, f"nicknym answered {status} ({outcome.value})")
    try:
        return Answer(Outcome.KEY, _armored_key(body, address), "nicknym answered with a key")
    except SourceError as exc:
        return Answer(Outcome.REJECTED, None, exc.reason)


@dataclass(frozen=True)
class NegativeCache:
    """Domains without nicknym, each until a time (seconds on the caller's clock)."""

    until: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def knows(self, domain: str, now: float) -> bool:
        """True while `domain` is remembered as not supporting nicknym."""
        return self.until.get(domain.lower(), now) > now

    def remember(self, domain: str, now: float, ttl: float = NEGATIVE_TTL) -> NegativeCache:
        """A cache that also remembers `domain`, with expired entries dropped."""
        kept = {d: t for d, t in self.until.items() if t > now}
        kept[domain.lower()] = now + ttl
        return NegativeCache(MappingProxyType(kept))
