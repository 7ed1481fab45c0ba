"""`python -m tests.world [--no-tor] [--dir DIR]`: start the world, print its endpoints as one
JSON line on stdout, run until stdin reaches EOF or the process gets SIGINT/SIGTERM, then stop
everything by PID. A benchmark starts this as a subprocess, reads the line, and closes stdin.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tests.world import World


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.world", description=__doc__)
    parser.add_argument("--no-tor", action="store_true", help="start everything but Tor")
    parser.add_argument("--dir", type=Path, help="parent directory for the world's files")
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with World(args.dir, with_tor=not args.no_tor) as world:
        print(json.dumps(world.endpoints()), flush=True)
        threading.Thread(target=_wait_eof, args=(done,), daemon=True).start()
        while not done.wait(0.5):
            pass
    return 0


def _wait_eof(done: threading.Event) -> None:
    sys.stdin.read()
    done.set()


if __name__ == "__main__":
    sys.exit(main())
