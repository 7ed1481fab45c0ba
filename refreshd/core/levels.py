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
from enum import Enum, StrEnum
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


class Way(StrEnum):
    """A way a key reaches refreshd: its `source`. `.value` is the word of the SPEC's `source`
    fields (the socket's answers, the audit log), of discovery.order and of the store's
    columns; being a str, it serialises as that word, and the shell turns the word back into a
    member where it reads one (config, store, socket params: `Way(word)`, `recorded_way`)."""

    NICKNYM = "nicknym"
    WKD = "wkd"
    VKS = "vks"
    HKP = "hkp"
    SMTP = "smtp"  # Key Retrieval Protocol: a key the provider published
    OPENPGP_HEADER = "openpgp-header"  # the header's standard URL fetched, or its key in mail
    AUTOCRYPT = "autocrypt"
    GOSSIP = "gossip"
    ATTACHMENT = "attachment"
    SIGNATURE = "signature"
    GNUPG = "gnupg"
    GNUPG_TRUSTED = "gnupg-trusted"  # ultimately trusted in the user's GnuPG
    USER = "user"  # the user verified the fingerprint


class Dkim(StrEnum):
    """What the mail client's DKIM check said of a message (`observe`'s `dkim`)."""

    PASS = "pass"  # a valid signature covering From and the body
    FAIL = "fail"
    NONE = "none"


class Vouched(StrEnum):
    """What the key manager finds on a key (or in the config) that raises its level."""

    PROVIDER_ENDORSED = "provider-endorsed"
    ENDORSER = "endorser"
    ENDORSER_CONSENSUS = "endorser-consensus"
    PINNED = "pinned"
    ENDORSER_KEY = "endorser-key"


__all__ = [
    "LEVELS",
    "MAIL_ORIGINS",
    "WAYS",
    "Dkim",
    "Level",
    "Vouched",
    "Way",
    "for_mail",
    "for_source",
    "of_recorded_way",
    "recorded_way",
    "standard_header_url",
]

# the sources a message hands the key manager (`observe`'s origin)
MAIL_ORIGINS = (
    Way.AUTOCRYPT,
    Way.GOSSIP,
    Way.OPENPGP_HEADER,
    Way.ATTACHMENT,
    Way.SIGNATURE,
)

# way of finding a key -> (level, positive indication). Sources a key arrives from through a
# directory or an import are ways; so are the vouches the key manager finds on a key.
WAYS: dict[Way | Vouched, tuple[Level, bool]] = {
    Way.HKP: (Level.WEAK_CHAIN, False),
    Way.VKS: (Level.WEAK_CHAIN, True),
    Way.GNUPG: (Level.WEAK_CHAIN, False),
    Way.SMTP: (Level.WEAK_CHAIN, True),
    Way.OPENPGP_HEADER: (Level.PROVIDER_TRUST, True),  # standard URL, fetched over TLS
    Way.WKD: (Level.PROVIDER_TRUST, True),
    Way.NICKNYM: (Level.PROVIDER_TRUST, True),
    Way.GNUPG_TRUSTED: (Level.KNOWN_KEY, False),
    Way.USER: (Level.FINGERPRINT, True),
    # vouches: found on the key, recomputed whenever it is seen (a withdrawn one lowers)
    Vouched.PROVIDER_ENDORSED: (Level.PROVIDER_ENDORSEMENT, True),
    Vouched.ENDORSER: (Level.THIRD_PARTY_ENDORSEMENT, True),
    Vouched.ENDORSER_CONSENSUS: (Level.THIRD_PARTY_CONSENSUS, True),
    Vouched.PINNED: (Level.KNOWN_KEY, True),
    Vouched.ENDORSER_KEY: (Level.KNOWN_KEY, False),
}
# a key in mail: weak-chain, provider-trust with DKIM on From and body for these origins
MAIL_LEVEL = {False: Level.WEAK_CHAIN, True: Level.PROVIDER_TRUST}
VOUCHED_BY_DKIM = frozenset({Way.AUTOCRYPT, Way.OPENPGP_HEADER, Way.ATTACHMENT, Way.SIGNATURE})
# mail origin -> positive indication (SPEC 5.4 lists signed mail, Autocrypt and OpenPGP header)
MAIL_POSITIVE = {
    Way.AUTOCRYPT: True,
    Way.GOSSIP: False,
    Way.OPENPGP_HEADER: True,
    Way.SIGNATURE: True,
    Way.ATTACHMENT: False,
}


def for_source(source: Way) -> tuple[Level, bool]:
    """Level and positive indication of a key found through a directory or import."""
    return WAYS[source]


def for_mail(origin: Way, dkim: Dkim) -> tuple[Level, bool]:
    """Level and positive indication of a key seen in a message."""
    return MAIL_LEVEL[dkim is Dkim.PASS and origin in VOUCHED_BY_DKIM], MAIL_POSITIVE[origin]


def of_recorded_way(source: str, recorded: Level) -> tuple[Way, Level]:
    """The honest (source, level) of a way recorded by an older refreshd: a "consensus:a+b"
    source (directory agreement, no longer a way) is worth the best of its parts; any other
    recorded way keeps the level recorded with it."""
    if not source.startswith("consensus:"):
        return Way(source), recorded
    parts = [Way(p) for p in source.partition(":")[2].split("+")]
    return max(((p, WAYS.get(p, (Level.WEAK_CHAIN,))[0]) for p in parts), key=lambda w: w[1])


def recorded_way(source: str) -> Way:
    """The way a source word in the store stands for (an older refreshd's "consensus:a+b" is
    the best of its parts until the key manager corrects the row)."""
    return of_recorded_way(source, Level.WEAK_CHAIN)[0]


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
