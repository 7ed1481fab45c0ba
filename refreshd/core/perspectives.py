"""Network perspectives at first contact (SPEC 6): do the paths agree on what a directory serves?

Rules:
1. A provider directory (WKD, nicknym) is asked over validation.perspectives circuits at once.
   What each path saw is reduced to a View: a key set (fingerprint -> digest of the key
   material), "not found", or "failed" (timeout, Tor, 5xx: no answer to compare).
2. The paths that answered agree when they saw the same thing: the same fingerprints with the
   same key material, or all "not found". Agreement goes on to the rules as one answer and
   raises no level (SPEC 5.1).
3. Any difference among the paths that answered is a conflict: other fingerprints, a key on
   one path and "not found" on another, different material for one fingerprint. A conflict
   registers nothing; the reason names what each path saw.
4. A failed path is not a conflict: it is no evidence. With one path answering the result is
   `single` (the answer is used as a single perspective would be, and the audit line says which
   path failed and why); with none it is `failed`.
5. Paths are named by their exit relay (from Tor's circuit list); when two paths that answered
   share an exit (a network with one exit), the comparison says so: they are one perspective
   on the network even though they rode separate circuits.
6. Isolated circuits may still pick the same exit. A path that answered through an exit an
   earlier answering path already had is asked again over a fresh circuit, at most REASKS
   rounds, while Tor's consensus lists an exit for every answering path; a network with fewer
   exits than paths is asked once and the comparison says the paths shared an exit (rule 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Seen", "Verdict", "View", "ask_again", "compare", "repeated"]

REASKS = 10  # rounds of fresh circuits at most (rule 6): two equal exits stay shared 1 in 2**11


class Seen(StrEnum):
    KEYS = "keys"
    NOT_FOUND = "not-found"
    FAILED = "failed"


class Verdict(StrEnum):
    AGREE = "agree"
    CONFLICT = "conflict"
    SINGLE = "single"
    FAILED = "failed"


@dataclass(frozen=True)
class View:
    """What one path saw."""

    exit: str | None  # the exit relay's fingerprint, None when unknown (no Tor control)
    seen: Seen
    keys: Mapping[str, str] = field(default_factory=dict)  # fingerprint -> material digest
    reason: str = ""  # for FAILED: why

    def describe(self) -> str:
        via = f"via exit {self.exit}" if self.exit else "via an unknown exit"
        if self.seen is Seen.KEYS:
            return f"{', '.join(sorted(self.keys))} {via}"
        if self.seen is Seen.NOT_FOUND:
            return f"not found {via}"
        return f"failed {via} ({self.reason})"

    def same_as(self, other: View) -> bool:
        return self.seen is other.seen and dict(self.keys) == dict(other.keys)


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    reason: str
    shared_exit: bool  # rule 5
    exits: tuple[str | None, ...]


def compare(views: Sequence[View]) -> Comparison:
    """Rules 2-5 over the views of one directory for one address."""
    answered = [v for v in views if v.seen is not Seen.FAILED]
    failed = [v for v in views if v.seen is Seen.FAILED]
    exits = tuple(v.exit for v in views)
    known = [v.exit for v in answered if v.exit is not None]
    shared = len(known) != len(set(known))  # two answering paths named the same exit
    paths = "; ".join(f"path {i + 1}: {v.describe()}" for i, v in enumerate(views))
    if not answered:
        return Comparison(Verdict.FAILED, f"No path answered ({paths}).", shared, exits)
    if len(answered) == 1:
        return Comparison(
            Verdict.SINGLE,
            f"Only one path answered, {len(failed)} failed; not a conflict ({paths}).",
            shared,
            exits,
        )
    first = answered[0]
    if all(first.same_as(v) for v in answered[1:]):
        note = " The paths shared an exit relay." if shared else ""
        return Comparison(
            Verdict.AGREE, f"{len(answered)} paths agree ({paths}).{note}", shared, exits
        )
    return Comparison(Verdict.CONFLICT, f"The network paths disagree: {paths}.", shared, exits)


def repeated(views: Sequence[View]) -> list[int]:
    """Rule 6: the answering paths whose (known) exit an earlier answering path already had."""
    seen: set[str] = set()
    again = []
    for i, view in enumerate(views):
        if view.seen is Seen.FAILED or view.exit is None:
            continue
        if view.exit in seen:
            again.append(i)
        seen.add(view.exit)
    return again


def ask_again(views: Sequence[View], exits_in_network: int | None, rounds: int) -> list[int]:
    """Rule 6: which paths to ask again over fresh circuits, after `rounds` rounds of it;
    none when no exit repeats, the rounds are spent, or Tor lists fewer exits than there are
    answering paths (or does not say how many)."""
    answering = sum(1 for v in views if v.seen is not Seen.FAILED)
    if rounds >= REASKS or exits_in_network is None or exits_in_network < answering:
        return []
    return repeated(views)
