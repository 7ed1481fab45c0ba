"""Real keys for the benchmark, made fresh in every run.

Why: figures must come from keys that independent tools accept, in the sizes people meet.
Keys with a subkey come from tests.keyfactory (pgpy: Ed25519 + Cv25519, or RSA-2048 pairs);
sizes grow with real third-party Ed25519 certifications (keyfactory.flood), the way long-lived
keys grow on keyservers. For thousands of keys, `minimal_key` makes the smallest real key
(an Ed25519 primary, one user id, its positive self-certification) in a fraction of a
millisecond, where pgpy needs about 15 ms.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from refreshd.openpgp.keyview import parse_one, read_key
from tests import keyfactory as kf

WKD_DOMAINS = ("example.org", "example.net", "example.com")


@dataclass(frozen=True)
class BenchKey:
    address: str
    fingerprint: str
    data: bytes  # binary, everything kept (what a server serves)


@dataclass(frozen=True)
class Tier:
    """`count` keys of one kind: base algorithm and third-party certifications added."""

    algorithm: str  # "ed25519" | "rsa"
    certifications: int
    count: int


# N = 200: most keys are small, a few long-lived ones carry many certifications.
SPREAD_200 = (
    Tier("ed25519", 0, 110),
    Tier("ed25519", 30, 45),
    Tier("ed25519", 120, 30),
    Tier("rsa", 400, 10),
    Tier("rsa", 1600, 5),
)
SPREAD_QUICK = (
    Tier("ed25519", 0, 10),
    Tier("ed25519", 30, 5),
    Tier("ed25519", 120, 3),
    Tier("rsa", 400, 1),
    Tier("rsa", 1600, 1),
)
TYPICAL_CERTIFICATIONS = 39  # an Ed25519/Cv25519 key with 39 certifications is about 5 KB


def address(i: int, prefix: str = "user") -> str:
    return f"{prefix}{i:05d}@{WKD_DOMAINS[i % len(WKD_DOMAINS)]}"


def make_key(addr: str, algorithm: str = "ed25519", certifications: int = 0) -> BenchKey:
    data = kf.pgpy_key(f"Bench {addr.split('@')[0]} <{addr}>", rsa=algorithm == "rsa")
    if certifications:
        data = kf.flood(data, certifications)
    return BenchKey(addr, read_key(data, datetime.now(UTC)).fingerprint, data)


def spread_keys(tiers: tuple[Tier, ...], prefix: str = "user") -> list[BenchKey]:
    """Keys of every tier, addresses numbered in order and spread over the WKD domains."""
    keys: list[BenchKey] = []
    for tier in tiers:
        for _ in range(tier.count):
            keys.append(make_key(address(len(keys), prefix), tier.algorithm, tier.certifications))
    return keys


def minimal_key(addr: str, created: int) -> bytes:
    """Primary Ed25519 key, user id `<addr>`, positive self-certification (0x13)."""
    signer = kf.Certifier(created)
    primary = signer.public()
    uid = kf.new_packet(13, f"<{addr}>".encode())
    cert = parse_one(primary + uid.raw)
    selfsig = signer.certification(kf.uid_prefix(cert, 0), created + 1, sigtype=0x13)
    return primary + uid.raw + selfsig.raw


def minimal_keys(n: int, prefix: str = "idle") -> Iterator[tuple[str, bytes]]:
    created = int(time.time()) - 86400
    for i in range(n):
        addr = address(i, prefix)
        yield addr, minimal_key(addr, created)
