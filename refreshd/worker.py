"""CPU-bound OpenPGP work off the trio loop, each call within a time budget.

Rules:
- Taking in a key that came from outside (openpgp/intake.py: the packet filter, the views,
  every self-signature check) runs in a separate process. A thread would not do: a modular
  exponentiation with a huge RSA exponent runs in C holding the GIL, and the loop would stop
  with it. In a process the loop keeps answering the socket whatever the key costs.
- One call may take KEY_BUDGET seconds (one key, or the keys of one answer taken in together);
  past it the process is killed and the call raises KeyRejected naming the budget, so the key
  ends refused with a reason, like any other bad key.
- At most WORKERS calls run at once; the others wait their turn on the loop.
- The worker processes live on between calls (a call costs a pipe round trip, not a process
  start); one that overran its budget, died, or was abandoned by a cancelled caller is killed
  and replaced by a fresh one when next needed. They are forked from a forkserver started once
  with the OpenPGP modules loaded. A worker only computes (bytes in, a value out): the decision
  and the store writes stay on the loop, in the key manager.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import trio

from refreshd.errors import KeyRejected

__all__ = ["Worker"]

KEY_BUDGET = 10.0
WORKERS = 2
T = TypeVar("T")

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["refreshd.openpgp.intake"])


def _serve(conn: Connection) -> None:
    """The worker process: run each (function, arguments) sent, answer the outcome: (False,
    the value) or (True, the exception raised)."""
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            outcome: tuple[bool, Any] = (False, fn(*args))
        except Exception as exc:
            outcome = (True, exc)
        try:
            conn.send(outcome)
        except Exception as exc:  # a value or an error that does not pickle
            conn.send((True, RuntimeError(f"{type(exc).__name__}: {exc}")))


@dataclass
class _Process:
    process: BaseProcess
    conn: Connection

    def kill(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


class Worker:
    """Runs pure functions in worker processes, one budget per call."""

    def __init__(self, budget: float = KEY_BUDGET, workers: int = WORKERS) -> None:
        self.budget = budget
        self._limiter = trio.CapacityLimiter(workers)
        self._idle: list[_Process] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._limiter:
            worker = self._idle.pop() if self._idle else await trio.to_thread.run_sync(_start)
            done = False
            try:
                raised, value = await self._call(worker, fn, args)
                done = True
            finally:
                if done:
                    self._idle.append(worker)
                else:  # overran, died, or the caller was cancelled: its state is unknown
                    await trio.to_thread.run_sync(worker.kill)
        if raised:
            raise value
        return value  # type: ignore[no-any-return]

    async def _call(
        self, worker: _Process, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[bool, Any]:
        try:
            await trio.to_thread.run_sync(worker.conn.send, (fn, args))
            with trio.move_on_after(self.budget) as budget:
                await trio.lowlevel.wait_readable(worker.conn.fileno())
            if budget.cancelled_caught:
                raise KeyRejected(
                    f"checking the key took longer than {self.budget:g} s, the time budget "
                    "for one key (a huge RSA exponent, or thousands of subkeys or user ids)"
                )
            outcome: tuple[bool, Any] = await trio.to_thread.run_sync(worker.conn.recv)
            return outcome
        except (EOFError, OSError):
            raise KeyRejected(
                "the process checking the key ended without an answer (exit code "
                f"{worker.process.exitcode})"
            ) from None

    def close(self) -> None:
        """Stop the idle workers (a busy one is killed by its caller's cancellation)."""
        while self._idle:
            self._idle.pop().kill()


def _start() -> _Process:
    ours, theirs = _CONTEXT.Pipe()
    process = _CONTEXT.Process(target=_serve, args=(theirs,), daemon=True, name="refreshd-key")
    process.start()
    theirs.close()
    return _Process(process, ours)
