"""Prepared `lookup` answers: a registered address's answer, encoded once and sent as it is
until something it shows changes.

Rules:
- An answer is kept with the store's generation (Store.generation: every write to the store,
  by any connection, moves it) and served only while the generation is the same: any change
  to a registration, a key, a decision or an Autocrypt preference voids every kept answer.
- A write through the daemon's own connection is seen at the next lookup (its count of
  changed rows is read every time, for free). A write by another connection or process is
  seen within `ELSEWHERE` seconds: SQLite tells of those only inside a read transaction,
  which costs two system calls (its shared-memory lock taken and released), a third of a
  prepared lookup's. Nothing else writes what a lookup shows: the daemon's worker-thread
  connections write the refresh order and SQLite's statistics, and no other process opens
  the store (the command line asks the daemon), so only a hand edit meets the delay.
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

import math
import time
from collections.abc import Callable
from datetime import datetime

from refreshd.core.rules import LookupState
from refreshd.keymanager import KeyManager
from refreshd.rpc import Encoded, encode

__all__ = ["PreparedAnswers"]

ELSEWHERE = 0.1  # seconds within which another connection's write voids the kept answers
KEPT = 16_384  # answers (about 0.45 kB each, in one buffer), only for addresses asked for
_LENGTH_BITS = 20  # an answer's length fits in them (the socket's lines are at most 1 MiB)


class PreparedAnswers:
    """The kept answers sit end to end in one buffer, found by address (offset and length in
    one int): a few objects per address rather than an object tree per answer, and one block
    of memory that goes back to the kernel when they are dropped."""

    def __init__(self, keys: KeyManager, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.monotonic = monotonic
        self._generation: tuple[int, int] | None = None
        self._elsewhere_due = -math.inf  # when to ask SQLite about other connections again
        self._until: datetime | None = None  # the first instant time alone changes one
        self._where: dict[str, int] = {}  # address -> offset << _LENGTH_BITS | length
        self._buffer = bytearray()
        keys.store.on_commit.append(self._drop)  # void now: free the memory at once

    def _drop(self) -> None:
        self._where.clear()
        self._buffer = bytearray()
        self._until = None

    def _current_generation(self) -> tuple[int, int] | None:
        """Store.generation, with SQLite asked about other connections at most once per
        ELSEWHERE (the rule above); this connection's own writes and open transaction are
        looked at every time."""
        db, kept = self.keys.store.db, self._generation
        tick = self.monotonic()
        same_here = kept is not None and not db.in_transaction and db.total_changes == kept[0]
        if same_here and tick < self._elsewhere_due:
            return kept
        generation = self.keys.store.generation()
        if generation is not None:
            self._elsewhere_due = tick + ELSEWHERE
        return generation

    def registered(self, address: str) -> Encoded | None:
        """The encoded `lookup` answer (without the key's bytes) for a registered address,
        or None when no key is registered for it."""
        now = self.keys.clock()
        generation = self._current_generation()
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
