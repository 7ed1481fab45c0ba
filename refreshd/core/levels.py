"""Validation levels and what each way of finding a key is worth (SPEC 5.1, 5.4).

Rules, from the transitional key validation rules:
- Eight levels, lowest first: weak-chain, provider-trust, provider-endorsement,
  third-party-endorsement, third-party-consensus, historical-auditing, known-key, fingerprint.
- HKP keyservers, VKS and GnuPG keyring imports are weak-chain; so is a key in mail unless the
  provider's DKIM signature covers From and body (then provider-trust).
- WKD or nicknym of the address's own domain over authenticated HTTPS is provider-trust, and so
  is an OpenPGP header URL in standard form on the From domain fetched over authenticated TLS.
- The same fingerprint from every one of at least two independent sources (each over its own
  circuit) is third-party-consensus. A key pinned by the user (an ultimately trusted GnuPG key)
  is known-key; a fingerprint the user verified is fingerprint.
- Positive indication (may we encrypt?) comes from a provider directory, VKS, a signed mail,
  an Autocrypt or OpenPGP header, or the user's verification; never from HKP alone.
- An Autocrypt-Gossip key (`gossip`) is a sender's claim about someone else's key: weak-chain
  and no positive indication, whatever DKIM says (DKIM vouches for the sender's domain only).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from refreshd.config import LEVELS

__all__ = [
    "DKIM_VALUES",
    "MAIL_ORIGINS",
    "at_least",
    "for_mail",
    "for_source",
    "highest",
    "rank",
    "standard_header_url",
]

MAIL_ORIGINS = ("autocrypt", "gossip", "openpgp-header", "attachment", "signature")
DKIM_VALUES = ("pass", "fail", "none")

# source -> (level, positive indication)
SOURCE_TABLE: dict[str, tuple[str, bool]] = {
    "hkp": ("weak-chain", False),
    "vks": ("weak-chain", True),
    "gnupg": ("weak-chain", False),
    "wkd": ("provider-trust", True),
    "nicknym": ("provider-trust", True),
    "nicknym-endorsed": ("provider-endorsement", True),
    "consensus": ("third-party-consensus", True),
    "gnupg-trusted": ("known-key", False),
    "user": ("fingerprint", True),
}
# mail origin -> positive indication (SPEC 5.4 lists signed mail, Autocrypt and OpenPGP header)
MAIL_POSITIVE = {
    "autocrypt": True,
    "gossip": False,
    "openpgp-header": True,
    "signature": True,
    "attachment": False,
}
VOUCHED_BY_DKIM = frozenset({"autocrypt", "openpgp-header", "attachment", "signature"})


def rank(level: str) -> int:
    return LEVELS.index(level)


def at_least(level: str, minimum: str) -> bool:
    return rank(level) >= rank(minimum)


def highest(levels: Iterable[str]) -> str:
    return max(levels, key=rank)


def for_source(source: str) -> tuple[str, bool]:
    """Level and positive indication of a key found through a directory or import."""
    return SOURCE_TABLE[source]


def for_mail(origin: str, dkim: str, *, header_url_fetched: bool = False) -> tuple[str, bool]:
    """Level and positive indication of a key seen in a message."""
    positive = MAIL_POSITIVE[origin]
    if origin == "openpgp-header" and header_url_fetched:
        return "provider-trust", positive
    if dkim == "pass" and origin in VOUCHED_BY_DKIM:
        return "provider-trust", positive
    return "weak-chain", positive


def standard_header_url(url: str, address: str) -> bool:
    """An OpenPGP header URL counts only in a standard form on the From domain, over https."""
    parts = urlsplit(url)
    local, _, domain = address.rpartition("@")
    host = (parts.hostname or "").lower()
    if (
        parts.scheme != "https"
        or not local
        or host not in (domain.lower(), f"openpgpkey.{domain.lower()}")
    ):
        return False
    query = parse_qs(parts.query)
    if "/.well-known/openpgpkey/" in parts.path:
        return True  # WKD form; the fetched key must still carry the address (SPEC 5.3)
    return query.get("address") == [address] or query.get("resource") == [f"acct:{address}"]
