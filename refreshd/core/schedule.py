"""The refresh schedule (SPEC 6): which key to fetch next, and how long to wait before it.

Rules:
1. A cycle walks every registered key once, in a fresh uniformly random order drawn
   independently of the previous cycle's.
2. A cycle of N keys has a deadline: started_at + effective_period, where effective_period =
   max(period, N * minimum_lapse * (1 + JITTER)). When floors and jitter do not fit in the
   period the cycle lengthens, and status reports the effective period.
3. Each lapse is the wait until the cycle starts (if it has not), plus minimum_lapse, plus a
   random slack drawn from what is left of the cycle's budget (law below). A cycle starts at
   the previous cycle's deadline, or at once if that has passed.
4. Keys added mid-cycle join the part not yet done at a random position; removed keys leave
   the cycle, the urgent queue and the retry list. Keys that arrive while the cycle is empty
   restart its clock at that moment.
5. Any fetch attempt of a key counts as its refresh for the current cycle, whatever asked for
   it; the cycle walk never fetches a key twice in one cycle.
6. Priority of the next fetch: a `refresh` request (urgent), then a due retry, then the
   cycle's next key. An urgent key is due a uniform lapse in [0, minimum_lapse] after the
   request; the others wait the lapse of rule 3, never less than minimum_lapse.
7. A failed fetch counts as done for the cycle (the cycle goes on without it) and is retried
   once `backoff(failures)` has passed, in the first slot drawn after that; a success clears
   the count. Retries use slots of the cycle's budget, and between two retries the cycle moves
   on by at least one key, so failing sources can at most halve the pace of the others.

Why this lapse law. The slack before the next of k remaining keys is the first of k points
drawn uniformly in the remaining budget R = deadline - now - k * minimum_lapse: slack =
R * (1 - U**(1/k)). Drawn one after another, these are the order statistics of uniform points,
i.e. a Poisson process conditioned on its count: the fetch times of a cycle are the floors plus
N points thrown at random into the cycle's free time L = period - N * minimum_lapse. Each lapse
is then minimum_lapse + L * Beta(1, N), which for large N is the exponential truncated below at
minimum_lapse; the time left after the last fetch is waited before the next cycle's first, so
the lapses of a cycle add up to its period and their mean is exactly period / N. Against the
alternatives with that mean and floor:
- i.i.d. truncated exponential lapses have the same shape, but the cycle length then
  random-walks (standard deviation sqrt(N) * (mean - floor), about 2% of a period for 2,000
  keys with a short floor), and fetch durations, downtime and retries add to it, so "once per
  period" would hold only on average. Drawing from what is left of the budget absorbs all that.
- Poisson-distributed lapses (a count of seconds, standard deviation sqrt(mean)) are nearly
  regular: a keyserver or exit relay would see a cadence of period / N and could link the
  fetches of one client across circuits. Exponential-like lapses spread as wide as their mean,
  and the time already waited says almost nothing about the time left.
- Uniform lapses on [0, 2 * mean] (parcimonie) have a visible maximum that gives away N, and
  parcimonie's redraw of short lapses on [minimum, 2 * minimum] stretches its mean silently.
The floor bounds the fetch rate. JITTER keeps lapses random when the floors nearly fill the
period: rather than squeezing every lapse onto its floor (a regular rhythm again), the slack
drawn is never less than JITTER * minimum_lapse per remaining key on average, and the period
lengthens so that this fits; with 0.5 the mean lapse is then at least 1.5 * minimum_lapse,
parcimonie's fallback mean. A cycle whose budget runs short of that ends late: after downtime
or a late batch of new keys, and by chance near the end of a cycle near capacity (by minutes:
the last fetch of 160 simulated cycles of 2,000 keys with a 180 s floor came at most 12 min
after the deadline).

Why this floor (the default minimum_lapse, 30 s; parcimonie's is 10 min). parcimonie needs
its floor to exceed Tor's MaxCircuitDirtiness (10 min) so that two fetches never share a
circuit and so an exit or a keyserver cannot tie them to one client. refreshd gives every
fetch its own circuit (a fresh SOCKS username and password, IsolateSOCKSAuth), so that reason
is gone and what is left for a floor to bound is the rate:
- Linking by circuit is impossible at any floor; linking by timing depends on the lapses'
  randomness, not on the floor: the lapse law above keeps them exponential-like with mean
  period / N. A long floor is itself a mark: gaps never under 10 min are a refresher's
  signature in a keyserver's log, and a short one hides among other clients' traffic.
- The guard relay sees every circuit of the user whatever the floor; a shorter floor tells
  it nothing it did not know (it sees the same fetches, no more of them per period).
- The rate: one fetch per 30 s at most is far under keyserver limits (keys.openpgp.org
  answers 429 beyond about 5 requests/s by fingerprint from one address, and exits are
  shared by many users), and one circuit per 30 s is less than a browser builds.
- The number of fetches per period does not depend on the floor (one per key per period);
  the floor only decides where the cycle must lengthen: N * floor * (1 + JITTER) > period.
  With 30 s and 7 days that is above 13,440 keys (10 min: above 672, which stretched a
  10,000-key cycle to 104 days and left keys unrefreshed for months).
So 10,000 keys fit the default period, and the floor stays far above what any server or the
Tor network would notice as load.

The shell passes random.SystemRandom(): the permutation and the lapses are what an observer
must not predict. State is plain data; its small part has a JSON form and its order is kept
apart, so the shell saves per step only what changed.
"""

from __future__ import annotations

import json
import math
import random
from array import array
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain, pairwise
from typing import Any, Literal, TypeAlias

__all__ = [
    "CycleState",
    "Order",
    "backoff",
    "effective_period",
    "from_json",
    "mark_done",
    "mark_failed",
    "next_cycle",
    "next_refresh",
    "request",
    "saved_cycle",
    "to_json",
    "update",
]

JITTER = 0.5
FEW_CHANGES = 32  # up to this many keys added or dropped at once, update scans per key
STATE_VERSION = 2

Kind = Literal["urgent", "retry", "cycle"]
# A key of the schedule: the daemon's small integer ids of registered keys (refreshd.store), or
# any other distinct, sortable names (the tests use strings). An order is a tuple, or for
# integer keys an array("q") (8 bytes a key, no object per key: the daemon's choice); every
# function keeps the kind of order it is given.
Key = int | str
Order: TypeAlias = "tuple[Key, ...] | array[int]"


@dataclass(frozen=True)
class Urgent:
    key: Key
    due: float


@dataclass(frozen=True)
class Retry:
    key: Key
    due: float
    failures: int


@dataclass(frozen=True)
class CycleState:
    """One cycle: order[:position] are done, order[position:] wait their turn in that order.

    `owed` is set when a retry took a slot, and cleared when the cycle moves on.
    """

    cycle: int
    order: Order
    position: int
    started_at: float
    urgent: tuple[Urgent, ...] = ()
    retries: tuple[Retry, ...] = ()
    owed: bool = False


@dataclass(frozen=True)
class LapseLaw:
    """wait + floor + slack * (first of `draws` uniform points in [0, 1])."""

    wait: float
    floor: float
    slack: float
    draws: int

    def sample(self, rng: random.Random) -> float:
        if self.slack <= 0:
            return self.wait + self.floor
        u = 1.0 - rng.random()  # in (0, 1], so the log is finite
        return self.wait + self.floor + self.slack * -math.expm1(math.log(u) / self.draws)

    def cdf(self, lapse: float) -> float:
        x = lapse - self.wait - self.floor
        if x < 0:
            return 0.0
        if self.slack <= 0 or x >= self.slack:
            return 1.0
        return -math.expm1(self.draws * math.log1p(-x / self.slack))


@dataclass(frozen=True)
class Step:
    """The next fetch: `key` after `lapse` seconds; `state` replaces the caller's state.

    `law` is the distribution `lapse` was drawn from (None for urgent fetches, whose due time
    was drawn at the request). `key` is None, with an infinite lapse, when there are no keys.
    """

    key: Key | None
    lapse: float
    kind: Kind | None
    law: LapseLaw | None
    state: CycleState


def effective_period(period: float, minimum_lapse: float, n_keys: int) -> float:
    return max(period, n_keys * minimum_lapse * (1 + JITTER))


def deadline(state: CycleState, *, period: float, minimum_lapse: float) -> float:
    return state.started_at + effective_period(period, minimum_lapse, len(state.order))


def update(
    state: CycleState | None,
    added: Collection[Key],
    removed: Collection[Key],
    rng: random.Random,
    now: float,
) -> CycleState:
    """The state after keys were registered (`added`) or dropped (`removed`) (rule 4).

    The work grows with the size of the change, not with the number of keys (beyond copying
    the order once), so the shell can apply each change as it happens.
    """
    if state is None or (not state.order and added):
        # the first keys start a cycle of their own: an empty cycle's clock (begun when the
        # daemon started) must not squeeze them into what is left of it
        cycle = 1 if state is None else state.cycle
        # an array is the store's ids, ascending and unique already (Store.refresh_ids), and
        # is shuffled as it is: a first cycle of 100,000 keys makes no object per key
        keys = added if isinstance(added, array) else tuple(sorted(set(added)))
        order = _shuffled(keys, rng)
        return CycleState(cycle=cycle, order=order, position=0, started_at=now)
    if len(added) + len(removed) > FEW_CHANGES:  # one index of the order beats many scans
        index = {k: i for i, k in enumerate(state.order)}
        where: Callable[[Key], int | None] = index.get
    else:
        where = partial(_index, state.order)
    at = {k: i for k in set(removed) if (i := where(k)) is not None}
    new = sorted({k for k in added if k not in at and where(k) is None})
    if not at and not new:
        return state
    cut = sorted(at.values())
    kept = [state.order[i + 1 : j] for i, j in pairwise([-1, *cut, len(state.order)])]
    order = _like(state.order, chain.from_iterable(kept))
    position = state.position - bisect_left(cut, state.position)
    rng.shuffle(new)
    order = _like(order, chain(order[:position], _interleave(order[position:], new, rng)))
    return replace(
        state,
        order=order,
        position=position,
        urgent=tuple(u for u in state.urgent if u.key not in at),
        retries=tuple(r for r in state.retries if r.key not in at),
    )


def _like(kind: Order, keys: Iterable[Key]) -> Order:
    """`keys` as the same kind of order as `kind`."""
    if isinstance(kind, array):
        return array(kind.typecode, keys)  # type: ignore[arg-type]
    return tuple(keys)


def _index(order: Order, key: Key) -> int | None:
    """Where `key` is in `order` (a scan at C speed, once per changed key: changes are few)."""
    try:
        return order.index(key)  # type: ignore[arg-type]
    except ValueError:
        return None


def _interleave(base: Order, extra: list[Key], rng: random.Random) -> list[Key]:
    """`base` in its order with `extra` in its order at uniformly random places among it."""
    slots = sorted(rng.sample(range(len(base) + len(extra)), len(extra)))
    out: list[Key] = []
    taken = 0
    for key, slot in zip(extra, slots, strict=True):
        count = slot - len(out)
        out.extend(base[taken : taken + count])
        taken += count
        out.append(key)
    out.extend(base[taken:])
    return out


def _shuffled(order: Order, rng: random.Random) -> Order:
    """A uniformly random permutation (Fisher-Yates) of `order`, of the same kind, from one
    draw of `rng`.

    One getrandbits call instead of one per key: with random.SystemRandom that is one read
    of the kernel's generator rather than 100,000 (a 64-bit draw per position; the modulo's
    bias, under n / 2**64, is far below anything observable).
    """
    out: list[Key] | array[int] = (
        array(order.typecode, order) if isinstance(order, array) else list(order)
    )
    n = len(out)
    if n > 1:
        draws = array("Q", rng.getrandbits(64 * n).to_bytes(8 * n, "little"))
        for i in range(n - 1, 0, -1):
            j = draws[i] % (i + 1)
            out[i], out[j] = out[j], out[i]  # type: ignore[assignment]
    return out if isinstance(out, array) else tuple(out)


def next_refresh(
    state: CycleState, *, now: float, period: float, minimum_lapse: float, rng: random.Random
) -> Step:
    """The next fetch. The key stays due until mark_done/mark_failed records the attempt."""
    if not state.order:
        return Step(None, math.inf, None, None, state)
    if state.urgent:
        first = min(state.urgent, key=lambda u: (u.due, u.key))
        return Step(first.key, max(0.0, first.due - now), "urgent", None, state)
    if state.position >= len(state.order):
        state = next_cycle(state, now=now, period=period, minimum_lapse=minimum_lapse, rng=rng)
    pending = len(state.order) - state.position
    due = [r for r in state.retries if r.due <= now and not state.owed]
    kind: Kind
    if due:
        key, kind, draws = min(due, key=lambda r: (r.due, r.key)).key, "retry", pending + 1
        state = replace(state, owed=True)
    else:
        key, kind, draws = state.order[state.position], "cycle", pending
    law = _law(state, now=now, period=period, minimum_lapse=minimum_lapse, draws=draws)
    return Step(key, law.sample(rng), kind, law, state)


def next_cycle(
    state: CycleState, *, now: float, period: float, minimum_lapse: float, rng: random.Random
) -> CycleState:
    """The cycle after a finished one: a fresh order (rule 1), starting at its deadline.

    next_refresh calls it when the walk is done; it is O(N), so the shell calls it first, off
    the event loop, once state.position reaches the end of the order.
    """
    end = deadline(state, period=period, minimum_lapse=minimum_lapse)
    return replace(
        state,
        cycle=state.cycle + 1,
        order=_shuffled(state.order, rng),
        position=0,
        started_at=max(end, now),
    )


def _law(
    state: CycleState, *, now: float, period: float, minimum_lapse: float, draws: int
) -> LapseLaw:
    origin = max(now, state.started_at)
    budget = deadline(state, period=period, minimum_lapse=minimum_lapse) - origin
    slack = max(budget - draws * minimum_lapse, draws * JITTER * minimum_lapse)
    return LapseLaw(wait=origin - now, floor=minimum_lapse, slack=slack, draws=draws)


def request(
    state: CycleState, key: Key, *, now: float, minimum_lapse: float, rng: random.Random
) -> tuple[float, CycleState]:
    """A `refresh` request for a key of the state: (the time the key is due, new state).

    The caller checks that the key is registered (the daemon asks the store's index; a scan
    of the order here would cost O(N) per request)."""
    for u in state.urgent:
        if u.key == key:
            return u.due, state
    due = now + rng.uniform(0.0, minimum_lapse)
    return due, replace(state, urgent=(*state.urgent, Urgent(key, due)))


def mark_done(state: CycleState, key: Key) -> CycleState:
    """A successful fetch of `key`: done for this cycle, failure count cleared."""
    state = _attempted(state, key)
    if any(r.key == key for r in state.retries):
        state = replace(state, retries=tuple(r for r in state.retries if r.key != key))
    return state


def mark_failed(
    state: CycleState,
    key: Key,
    *,
    now: float,
    base: float,
    cap: float,
    rng: random.Random,
) -> CycleState:
    """A failed fetch of `key`: done for this cycle, retried after its backoff.

    With base = max(minimum_lapse, 60 s) and cap = period (what the shell is meant to pass), a
    source that is down for good costs one retry per period besides the key's cycle turn.
    """
    state = _attempted(state, key)
    if key not in state.order:
        return state
    failures = 1 + sum(r.failures for r in state.retries if r.key == key)
    retry = Retry(key, now + backoff(failures, base=base, cap=cap, rng=rng), failures)
    return replace(state, retries=(*(r for r in state.retries if r.key != key), retry))


def _attempted(state: CycleState, key: Key) -> CycleState:
    if any(u.key == key for u in state.urgent):
        state = replace(state, urgent=tuple(u for u in state.urgent if u.key != key))
    order, position = state.order, state.position
    if position < len(order) and order[position] == key:
        return replace(state, position=position + 1, owed=False)
    try:
        i = order.index(key, position)  # type: ignore[arg-type]
    except ValueError:
        return state  # done already this cycle, or no longer registered
    # the key (order[i]) moved to `position` by joining slices: a copy at memory speed, not a
    # Python loop over every key (C-level for an array of 100,000)
    moved = order[:position] + order[i : i + 1] + order[position:i] + order[i + 1 :]  # type: ignore[operator]
    return replace(state, order=moved, position=position + 1, owed=False)


def backoff(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number `failures` (>= 1): in [c/2, c], c = min(cap, base * 2**(f-1)).

    The jitter keeps retries of many keys from bunching; the halves never overlap, so each
    delay is at least the previous one until the cap.
    """
    if failures < 1:
        raise ValueError("failures must be at least 1")
    if not 0 < base <= cap:
        raise ValueError("backoff needs 0 < base <= cap")
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 64))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def to_json(state: CycleState) -> str:
    """Everything but the order, which the shell keeps apart: it changes only when the set of
    keys or the cycle does, while this small part changes at every step."""
    return json.dumps(
        {
            "version": STATE_VERSION,
            "cycle": state.cycle,
            "keys": len(state.order),
            "position": state.position,
            "started_at": state.started_at,
            "urgent": [[u.key, u.due] for u in state.urgent],
            "retries": [[r.key, r.due, r.failures] for r in state.retries],
            "owed": state.owed,
        },
        separators=(",", ":"),
        allow_nan=False,
    )


def saved_cycle(text: str | bytes) -> int:
    """The cycle number of a saved state (to find its order); ValueError if unreadable."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"schedule state: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("schedule state: not an object")
    return _int(data.get("cycle"), "cycle", 1)


def from_json(text: str | bytes, order: Order) -> CycleState:
    """Parse to_json's output with the order saved beside it; anything else raises ValueError."""
    data = json.loads(text, parse_constant=_no_constant)
    fields = {"version", "cycle", "keys", "position", "started_at", "urgent", "retries", "owed"}
    if not isinstance(data, dict) or set(data) != fields:
        raise ValueError(f"schedule state: expected the fields {sorted(fields)}")
    if data["version"] != STATE_VERSION or isinstance(data["version"], bool):
        raise ValueError(f"schedule state: unknown version {data['version']!r}")
    if _int(data["keys"], "keys", 0) != len(order):
        raise ValueError("schedule state: the saved order does not have the saved length")
    keys = set(order)
    if len(keys) != len(order):
        raise ValueError("schedule state: order must hold distinct keys")
    position = _int(data["position"], "position", 0)
    if position > len(order):
        raise ValueError("schedule state: position beyond the order")
    urgent = tuple(
        Urgent(_key(e[0], keys), _time(e[1], "urgent due"))
        for e in (_entry(x, 2, "urgent") for x in _list(data["urgent"], "urgent"))
    )
    retries = tuple(
        Retry(_key(e[0], keys), _time(e[1], "retry due"), _int(e[2], "failures", 1))
        for e in (_entry(x, 3, "retries") for x in _list(data["retries"], "retries"))
    )
    for name, entries in (("urgent", urgent), ("retries", retries)):
        if len({e.key for e in entries}) != len(entries):
            raise ValueError(f"schedule state: a key appears twice in {name}")
    if not isinstance(data["owed"], bool):
        raise ValueError("schedule state: owed must be true or false")
    return CycleState(
        cycle=_int(data["cycle"], "cycle", 1),
        order=order,
        position=position,
        started_at=_time(data["started_at"], "started_at"),
        urgent=urgent,
        retries=retries,
        owed=data["owed"],
    )


def _no_constant(name: str) -> float:
    raise ValueError(f"schedule state: {name} is not a time")


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"schedule state: {name} must be a list")
    return value


def _entry(value: Any, size: int, name: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != size:
        raise ValueError(f"schedule state: each entry of {name} must be a list of {size}")
    return value


def _int(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"schedule state: {name} must be an integer >= {least}")
    return value


def _time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"schedule state: {name} must be a number")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"schedule state: {name} must be finite")
    return seconds


def _key(value: Any, keys: set[Key]) -> Key:
    if isinstance(value, bool) or not isinstance(value, int | str) or value not in keys:
        raise ValueError("schedule state: an urgent or retry entry names a key not in the order")
    return value
