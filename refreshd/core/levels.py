"""The validation ladder and what each way of finding a key is worth (SPEC 5.1, 5.4).

Rules, from the transitional key validation rules (reference 003):
- Eight levels, lowest first: weak-chain, provider-trust, provider-endorsement,
  third-party-endorsement, third-party-consensus, historical-auditing, known-key, fingerprint.
- Every way of finding a key has one level, in WAYS below: keyservers, VKS, GnuPG imports and
  mail without DKIM are weak-chain; the address's own provider over authenticated HTTPS (WKD,
  nicknym, a standard OpenPGP header URL) and mail with DKIM on From and body are
  provider-trust; certifications by a pinned provider endorsement key, by one configured
  endorser, or by a quorum of them give levels 3 to 5; a pin, an endorser's own key or an
  ultimately trusted GnuPG key is known-key; the user's verification is fingerprint.
- A key's level is the highest level of any way it was found. Agreement between directories
  is not a way: WKD, VKS and HKP naming the same key is still provider-trust.
- historical-auditing needs an append-only endorsement log; none is consulted, so no way
  gives it.
- Positive indication (may we encrypt?) comes from a provider directory, VKS, a signed mail,
  an Autocrypt or OpenPGP header, or the user's verification; never from HKP alone.
- An Autocrypt-Gossip key (`gossip`) is a sender's claim about someone else's key: weak-chain
  and no positive indication, whatever DKIM says (DKIM vouches for the sender's domain only).
"""

from __future__ import annotations

import functools
from enum import Enum
from urllib.parse import parse_qs, urlsplit


@functools.total_ordering
class Level(Enum):
    """A validation level; members compare in ladder order, `.value` is the SPEC's name."""

    WEAK_CHAIN = "weak-chain"
    PROVIDER_TRUST = "provider-trust"
    PROVIDER_ENDORSEMENT = "provider-endorsement"
    THIRD_PARTY_ENDORSEMENT = "third-party-endorsement"
    THIRD_PARTY_CONSENSUS = "third-party-consensus"
    HISTORICAL_AUDITING = "historical-auditing"
    KNOWN_KEY = "known-key"
    FINGERPRINT = "fingerprint"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Level):
            return NotImplemented
        return self.rank < other.rank


_RANK = {level: i for i, level in enumerate(Level)}
LEVELS: tuple[str, ...] = tuple(level.value for level in Level)

__all__ = [
    "DKIM_VALUES",
    "LEVELS",
    "MAIL_ORIGINS",
    "WAYS",
    "Level",
    "for_mail",
    "for_source",
    "of_recorded_way",
    "standard_header_url",
]

MAIL_ORIGINS = ("autocrypt", "gossip", "openpgp-header", "attachment", "signature")
DKIM_VALUES = ("pass", "fail", "none")

# way of finding a key -> (level, positive indication). Sources a key arrives from are ways;
# so are the vouches the key manager finds on a key (the last block).
WAYS: dict[str, tuple[Level, bool]] = {
    "hkp": (Level.WEAK_CHAIN, False),
    "vks": (Level.WEAK_CHAIN, True),
    "gnupg": (Level.WEAK_CHAIN, False),
    "smtp": (Level.WEAK_CHAIN, True),  # Key Retrieval Protocol: a key the provider published
    "mail": (Level.WEAK_CHAIN, True),  # positive or not by origin, MAIL_POSITIVE
    "mail-dkim": (Level.PROVIDER_TRUST, True),
    "openpgp-header": (Level.PROVIDER_TRUST, True),  # standard URL, fetched over TLS
    "wkd": (Level.PROVIDER_TRUST, True),
    "nicknym": (Level.PROVIDER_TRUST, True),
    "gnupg-trusted": (Level.KNOWN_KEY, False),
    "user": (Level.FINGERPRINT, True),
    # vouches: found on the key, recomputed whenever it is seen (a withdrawn one lowers)
    "provider-endorsed": (Level.PROVIDER_ENDORSEMENT, True),
    "endorser": (Level.THIRD_PARTY_ENDORSEMENT, True),
    "endorser-consensus": (Level.THIRD_PARTY_CONSENSUS, True),
    "pinned": (Level.KNOWN_KEY, True),
    "endorser-key": (Level.KNOWN_KEY, False),
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


def for_source(source: str) -> tuple[Level, bool]:
    """Level and positive indication of a key found through a directory or import."""
    return WAYS[source]


def for_mail(origin: str, dkim: str) -> tuple[Level, bool]:
    """Level and positive indication of a key seen in a message."""
    level, _ = WAYS["mail-dkim" if dkim == "pass" and origin in VOUCHED_BY_DKIM else "mail"]
    return level, MAIL_POSITIVE[origin]


def of_recorded_way(source: str, recorded: Level) -> tuple[str, Level]:
    """The honest (source, level) of a way recorded by an older refreshd: a "consensus:a+b"
    source (directory agreement, no longer a way) is worth the best of its parts; any other
    recorded way keeps the level recorded with it."""
    if not source.startswith("consensus:"):
        return source, recorded
    parts = source.partition(":")[2].split("+")
    return max(
        ((p, WAYS[p][0] if p in WAYS else Level.WEAK_CHAIN) for p in parts),
        key=lambda way: way[1],
    )


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
