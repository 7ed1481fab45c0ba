"""How often the trio loop runs a 10 ms sleeper while something else goes on: a loop that CPU
work blocks ticks little or not at all."""

from __future__ import annotations

import trio

INTERVAL = 0.01


class Ticks:
    """Start `run` in a nursery, stop it with `stop()`; `count` is how often it woke."""

    def __init__(self) -> None:
        self.count = 0
        self._done = trio.Event()

    async def run(self) -> None:
        while not self._done.is_set():
            await trio.sleep(INTERVAL)
            self.count += 1

    def stop(self) -> None:
        self._done.set()
