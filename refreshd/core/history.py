"""What an address's history of keys (the `history` socket method, SPEC 4) keeps after a decision.

Rules (SPEC 5.2 rule 4, from the transitional key validation rules: "previously registered keys
must be retained by the key manager, for the purpose of signature authentication; these old keys
are never used for sending messages"):
- retire  A key replaced by another (rule 3) is retired: its entry stays, with the level and
          source it was registered with, and the reason names the replacement. It is no longer
          the address's registration, so it is never used for sending; the keyserver door still
          serves it, so old signatures verify (core/door.py).
- keep    A retired key seen again and rejected stays retired, and a rejected copy of the
          registered key (one without the address's user id, SPEC 5.3) leaves it registered: a
          rejected copy does not make a once registered key a stranger. A retired key registered
          again (the user verified it) is registered.
- level   An entry's level and source are those of the decision that last registered the key;
          a rejection records only its reason (a key first seen rejected keeps the level and
          source it was rejected with).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from refreshd.core.levels import Level, Way
from refreshd.core.rules import Decision, DecisionKind

__all__ = ["Entry", "Status", "after"]


class Status(StrEnum):
    """Where a key stands for an address; `.value` is the SPEC's word in `history`."""

    REGISTERED = "registered"
    RETIRED = "retired"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Entry:
    """One key in an address's history, without the dates the store keeps beside it."""

    status: Status
    level: Level
    source: Way
    reason: str


def after(
    d: Decision, decided: Entry | None, registered: tuple[str, Entry] | None
) -> dict[str, Entry]:
    """The entries the decision `d` sets, by fingerprint: always the decided key's, and the
    formerly registered key's when `d` replaces it. `decided` is the decided key's entry before
    the decision (None: first seen); `registered` the key registered before it, with its
    entry."""
    changed: dict[str, Entry] = {}
    if d.decision is DecisionKind.REPLACED and registered is not None:
        old_fingerprint, old = registered
        if old_fingerprint != d.fingerprint:
            changed[old_fingerprint] = replace(
                old, status=Status.RETIRED, reason=f"Retired: {d.reason}"
            )
    if d.registers:
        changed[d.fingerprint] = Entry(Status.REGISTERED, d.level, d.source, d.reason)
    elif decided is None:
        changed[d.fingerprint] = Entry(Status.REJECTED, d.level, d.source, d.reason)
    else:
        current = registered is not None and registered[0] == d.fingerprint
        kept = decided.status is Status.RETIRED or (decided.status is Status.REGISTERED and current)
        status = decided.status if kept else Status.REJECTED
        changed[d.fingerprint] = replace(decided, status=status, reason=d.reason)
    return changed
