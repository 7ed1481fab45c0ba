"""Prepared `lookup` answers: a registered address's answer, encoded once and sent as it is
until something it shows changes.

Rules:
- An answer is kept with the store's generation (Store.generation: every write to the store,
  by any connection, moves it) and served only while the generation is the same: any change
  to a registration, a key, a decision or an Autocrypt preference voids every kept answer.
- Time alone changes an answer at the key's expiry and at its encryption subkey's: an answer
  is served only before the first of those still to come.
- Only registered answers are kept (the others go on to discovery); none is kept while a
  transaction is open (its writes may be rolled back), and at most `KEPT` at once, so the
  memory is bounded whatever the clients ask. A committed transaction drops them all at once
  (the generation would void them at their next use anyway), so a quiet daemon does not
  hold answers that can no longer be served.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from refreshd.core.rules import LookupState
from refreshd.keymanager import KeyManager
from refreshd.rpc import Encoded, encode

__all__ = ["PreparedAnswers"]

KEPT = 16_384  # about 0.5 kB each: a few MB at most, only for addresses asked for


@dataclass(frozen=True, slots=True)
class _Kept:
    until: datetime | None  # the first instant time alone changes the answer
    answer: Encoded


class PreparedAnswers:
    def __init__(self, keys: KeyManager) -> None:
        self.keys = keys
        self._generation: tuple[int, int] | None = None
        self._kept: dict[str, _Kept] = {}
        keys.store.on_commit.append(self._kept.clear)  # void now: free the memory at once

    def registered(self, address: str) -> Encoded | None:
        """The encoded `lookup` answer (without the key's bytes) for a registered address,
        or None when no key is registered for it."""
        now = self.keys.clock()
        generation = self.keys.store.generation()
        if generation != self._generation:
            self._kept.clear()
            self._generation = generation
        kept = self._kept.get(address)
        if kept is not None and (kept.until is None or now < kept.until):
            return kept.answer
        answer, until = self.keys.describe_at(address, now)
        if answer["state"] is not LookupState.REGISTERED:
            return None
        prepared = encode(answer)
        if generation is not None:
            if len(self._kept) >= KEPT:
                del self._kept[next(iter(self._kept))]
            self._kept[address] = _Kept(until, prepared)
        return prepared
