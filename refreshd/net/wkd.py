"""Web Key Directory: where a provider publishes the key of one of its addresses.

Rules (draft-koch-openpgp-webkey-service, as GnuPG implements it):
- The address is lower-cased in ASCII only (non-ASCII letters keep their case, like gpg does);
  the hash is the z-base-32 encoding of the SHA-1 of the UTF-8 local part (32 characters).
- Advanced method first: https://openpgpkey.<domain>/.well-known/openpgpkey/<domain>/hu/<hash>
  ?l=<local>; then the direct method https://<domain>/.well-known/openpgpkey/hu/<hash>?l=<local>.
- Redirects only to https on the address's own registrable domain.
- An answer may carry several keys: only keys with a uid for exactly this address are taken
  (local part exact, domain case-insensitive).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from refreshd.errors import SourceError
from refreshd.net.fetch import Redirects, Request, Validators

__all__ = ["requests_for", "same_address", "split_address"]

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def _ascii_lower(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def zbase32(data: bytes) -> str:
    """z-base-32 of `data`, most significant bits first, no padding."""
    bits = int.from_bytes(data, "big")
    count = (len(data) * 8 + 4) // 5
    bits <<= count * 5 - len(data) * 8
    return "".join(ZBASE32[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count))


def wkd_hash(local_part: str) -> str:
    return zbase32(hashlib.sha1(_ascii_lower(local_part).encode("utf-8")).digest())


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain), both ASCII-lower-cased; SourceError if it is not an address."""
    local, at, domain = _ascii_lower(address.strip()).rpartition("@")
    if (
        not at
        or not local
        or not domain
        or any(c in domain for c in "/?#@\\ ")
        or "." not in domain
    ):
        raise SourceError(f"not an email address: {address[:200]!r}")
    return local, domain


def requests_for(address: str, validators: Validators | None = None) -> list[Request]:
    """The advanced-method request, then the direct-method one."""
    local, domain = split_address(address)
    path = f"hu/{wkd_hash(local)}?l={quote(local, safe='')}"
    host = quote(domain, safe=".-")
    return [
        Request(
            f"https://openpgpkey.{host}/.well-known/openpgpkey/{host}/{path}",
            redirects=Redirects.SAME_DOMAIN_HTTPS,
            validators=validators,
        ),
        Request(
            f"https://{host}/.well-known/openpgpkey/{path}",
            redirects=Redirects.SAME_DOMAIN_HTTPS,
            validators=validators,
        ),
    ]


def same_address(a: str, b: str) -> bool:
    """Local parts equal exactly, domains equal ignoring case."""
    local_a, _, domain_a = a.rpartition("@")
    local_b, _, domain_b = b.rpartition("@")
    return bool(local_a) and local_a == local_b and domain_a.casefold() == domain_b.casefold()
