"""Strip + read cost per real-world key: every blob of the shared corpus through the daemon's
intake path (openpgp/intake.py: packet filter, parse, verified view), in this process.

Each blob is taken in `REPEATS` times, cold (verify's caches cleared before each run), and its
fastest run kept (the machine is shared: the fastest run is the one least disturbed); the
figures are the median, 90th percentile and maximum of those per-blob times. Target: median
under 1 ms. Blobs refreshd refuses (secret keys, malformed ones) count too: refusing costs time
as well.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.report import Row, spread
from refreshd.errors import KeyRejected
from refreshd.openpgp.intake import Limits, intake
from refreshd.openpgp.verify import clear_caches
from tests.corpus_oracle import blobs, corpus_dir

REPEATS = 5
TARGET_MEDIAN = 0.001  # seconds
_LIMITS = Limits(max_response_bytes=8 << 20, max_key_bytes=8 << 20)


def _once(data: bytes, now: datetime) -> float:
    clear_caches()
    began = time.perf_counter()
    with contextlib.suppress(KeyRejected):  # refusing a blob is part of the cost too
        intake(data, frozenset(), _LIMITS, now)
    return time.perf_counter() - began


def run(quick: bool = False) -> dict[str, Any]:
    root = corpus_dir()
    if root is None:
        raise RuntimeError("the shared key corpus (../shared/corpus/keys/) is absent")
    now = datetime.now(UTC)
    repeats = 2 if quick else REPEATS
    times = []
    for path in blobs(root):
        data = path.read_bytes()
        times.append(min(_once(data, now) for _ in range(repeats)))
    times.sort()
    median = statistics.median(times)
    p90 = times[int(0.9 * (len(times) - 1))]
    rows = [
        Row(f"strip + read per corpus blob ({len(times)} blobs, fastest of {repeats})",
            "seconds", spread([median]), "median < 1 ms", median < TARGET_MEDIAN, "", None,
            "gpg and sq only run as processes (startup dominates): no per-blob peer figure"),
        Row("90th percentile blob", "seconds", spread([p90]), "", None),
        Row("slowest blob", "seconds", spread([times[-1]]), "", None, "", None,
            "rnp's fuzzer keyring: 187,537 user ids, refused at its last packet"),
    ]  # fmt: skip
    return {
        "rows": rows,
        "details": {"blobs": len(times), "median": median, "p90": p90, "max": times[-1]},
    }
