"""Which provider keys are pinned (SPEC 5.1; reference 002, phase 3 and "Provider keys").

Rules:
- A provider's endorsement keys are learned from its provider.json over authenticated HTTPS
  and pinned forever; a provider may have several (a backup key).
- first-use  With nothing pinned and nothing configured for the domain, every key offered is
             pinned (trust on first use, with permanent pinning).
- configured A key named in validation.provider_keys for the domain is pinned when offered.
- pinned     A key already pinned stays pinned (its newer data is taken, so its revocations
             are seen).
- forward    A new key is pinned only when certified by a key already pinned or configured
             for the domain ("forward signing").
- refused    Any other new key is refused; the pins stay.
- The response-signing key is pinned on first use; a different one offered later is refused
  (the pin stays, answers are still checked against it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum

__all__ = ["Offered", "PinKind", "Rule", "review", "review_response_key"]


class PinKind(StrEnum):
    """What a key pinned for a provider is for; `.value` is the store's and the audit's word."""

    ENDORSEMENT = "endorsement"  # certifies the provider's users' keys (provider-endorsement)
    RESPONSE = "response"  # signs the provider's nicknym answers (raw Ed25519)


class Rule(Enum):
    FIRST_USE = "first-use"
    CONFIGURED = "configured"
    PINNED = "pinned"
    FORWARD = "forward-signed"
    REFUSED = "refused"

    @property
    def pins(self) -> bool:
        return self is not Rule.REFUSED


@dataclass(frozen=True)
class Offered:
    """An endorsement key provider.json offers, with the pinned keys that certify it."""

    fingerprint: str
    certified_by: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    fingerprint: str
    rule: Rule
    reason: str


def review(
    domain: str,
    pinned: frozenset[str],
    configured: frozenset[str],
    offered: Sequence[Offered],
) -> list[Verdict]:
    """The verdict on every endorsement key offered for domain (see module rules)."""
    first_use = not pinned and not configured
    trusted = pinned | configured
    out = []
    for o in offered:
        fpr = o.fingerprint
        if fpr in pinned:
            out.append(Verdict(fpr, Rule.PINNED, f"0x{fpr} is pinned for {domain}"))
        elif fpr in configured:
            out.append(
                Verdict(fpr, Rule.CONFIGURED, f"0x{fpr} is in validation.provider_keys.{domain}")
            )
        elif first_use:
            out.append(
                Verdict(fpr, Rule.FIRST_USE, f"first use: nothing was pinned for {domain} yet")
            )
        elif o.certified_by & trusted:
            by = ", ".join(f"0x{f}" for f in sorted(o.certified_by & trusted))
            out.append(Verdict(fpr, Rule.FORWARD, f"certified by the pinned key {by}"))
        else:
            out.append(
                Verdict(
                    fpr,
                    Rule.REFUSED,
                    f"the new endorsement key 0x{fpr} of {domain} is not certified by any key "
                    f"pinned for it; the pins stay",
                )
            )
    return out


def review_response_key(domain: str, pinned: str | None, offered: str) -> Verdict:
    """The response-signing key: pinned on first use, never replaced."""
    if pinned is None:
        return Verdict(offered, Rule.FIRST_USE, f"first use: {domain} signs its answers")
    if pinned == offered:
        return Verdict(offered, Rule.PINNED, f"the response key of {domain} is pinned")
    return Verdict(
        offered,
        Rule.REFUSED,
        f"{domain} offers another response key ({offered}); the pinned one ({pinned}) stays",
    )
