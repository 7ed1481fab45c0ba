"""Prepared `lookup` answers: a registered address's answer, encoded once and sent as it is
until something it shows changes.

Rules:
- An answer is kept with the store's generation (Store.generation: every write to the store,
  by any connection, moves it) and served only while the generation is the same: any change
  to a registration, a key, a decision or an Autocrypt preference voids every kept answer.
- Time alone changes an answer at the key's expiry and at its encryption subkey's: answers
  are served only before the first of those still to come among the kept ones (then all are
  dropped).
- Only registered answers are kept (the others go on to discovery); none is kept while a
  transaction is open (its writes may be rolled back), and at most `KEPT` at once (past
  that, answers are encoded each time until the next write), so the memory is bounded
  whatever the clients ask. A committed transaction drops them all at once
  (the generation would void them at their next use anyway), so a quiet daemon does not
  hold answers that can no longer be served.
"""

from __future__ import annotations

from datetime import datetime

from refreshd.core.rules import LookupState
from refreshd.keymanager import KeyManager
from refreshd.rpc import Encoded, encode

__all__ = ["PreparedAnswers"]

KEPT = 16_384  # answers (about 0.45 kB each, in one buffer), only for addresses asked for
_LENGTH_BITS = 20  # an answer's length fits in them (the socket's lines are at most 1 MiB)


class PreparedAnswers:
    """The kept answers sit end to end in one buffer, found by address (offset and length in
    one int): a few objects per address rather than an object tree per answer, and one block
    of memory that goes back to the kernel when they are dropped."""

    def __init__(self, keys: KeyManager) -> None:
        self.keys = keys
        self._generation: tuple[int, int] | None = None
        self._until: datetime | None = None  # the first instant time alone changes one
        self._where: dict[str, int] = {}  # address -> offset << _LENGTH_BITS | length
        self._buffer = bytearray()
        keys.store.on_commit.append(self._drop)  # void now: free the memory at once

    def _drop(self) -> None:
        self._where.clear()
        self._buffer = bytearray()
        self._until = None

    def registered(self, address: str) -> Encoded | None:
        """The encoded `lookup` answer (without the key's bytes) for a registered address,
        or None when no key is registered for it."""
        now = self.keys.clock()
        generation = self.keys.store.generation()
        if generation != self._generation or (self._until is not None and now >= self._until):
            self._drop()
            self._generation = generation
        at = self._where.get(address)
        if at is not None:
            offset = at >> _LENGTH_BITS
            return Encoded(bytes(self._buffer[offset : offset + (at & _MASK)]))
        answer, until = self.keys.describe_at(address, now)
        if answer["state"] is not LookupState.REGISTERED:
            return None
        prepared = encode(answer)
        size = len(prepared.json)
        if generation is not None and len(self._where) < KEPT and size <= _MASK:
            self._where[address] = len(self._buffer) << _LENGTH_BITS | size
            self._buffer += prepared.json
            if until is not None and (self._until is None or until < self._until):
                self._until = until
        return prepared


_MASK = (1 << _LENGTH_BITS) - 1
