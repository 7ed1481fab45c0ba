"""First contact over two network paths vs one: what the second perspective costs a waiting
person, in seconds, over the private Tor network.

refreshd runs in process (bench/engine.py) with tor.mode "system" against the loopback Tor
network of tests/world, as in the tor case. Keys are published on nginx's WKD; each first
contact (Discovery.discover) is timed alone, alternating one engine with
validation.perspectives = 1 and one with 2 so that drift in the machine's load hits both alike.
With 2, the two WKD requests run at once over separately isolated circuits and each path's exit
is then read from Tor's circuit list, so the figure includes that control-port round trip.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import keyset
from bench.engine import Engine, engine
from bench.report import Row, spread
from tests.net_servers import tor_ready
from tests.world import World

READY_TIMEOUT = 60.0


async def _first_contacts(
    engines: dict[int, Engine], keys: dict[int, list[keyset.BenchKey]]
) -> dict[int, list[float]]:
    seconds: dict[int, list[float]] = {paths: [] for paths in engines}
    async with trio.open_nursery() as nursery:
        for eng in engines.values():
            assert eng.tor is not None
            await nursery.start(eng.tor.run)
            if not await tor_ready(eng.tor, READY_TIMEOUT):
                raise RuntimeError(f"Tor not ready: {eng.tor.detail}")
        rounds = min(len(k) for k in keys.values())
        for i in range(rounds):
            for paths, eng in engines.items():
                key = keys[paths][i]
                began = time.perf_counter()
                decision = await eng.discovery.discover(key.address)
                seconds[paths].append(time.perf_counter() - began)
                if decision is None or decision.fingerprint != key.fingerprint:
                    raise RuntimeError(f"first contact over {paths} path(s) failed: {key.address}")
        nursery.cancel_scope.cancel()
    return seconds


def run(world: World, quick: bool = False) -> dict[str, Any]:
    if world.tor is None:
        raise RuntimeError("the perspectives case needs a world with Tor")
    if not world.wkd.serves_443:
        why = "cannot run: nginx could not listen on port 443 of the world address"
        return {"rows": [Row("first contact, 2 paths", "seconds", None, peer_note=why)]}
    n = 5 if quick else 20
    tor = world.tor
    keys = {
        paths: [keyset.make_key(keyset.address(i, f"persp{paths}")) for i in range(n)]
        for paths in (1, 2)
    }
    for batch in keys.values():
        for key in batch:
            world.wkd.publish_wkd(key.address, key.data, methods=("advanced",))
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-persp-"))
    engines: dict[int, Engine] = {}
    try:
        for paths in (1, 2):
            engines[paths] = engine(
                root / f"state{paths}",
                {
                    "tor": tor.daemon_config(),
                    "network": {"ca_file": str(world.ca.ca_file), "timeout": "60s"},
                    "discovery": {"order": ["wkd"], "vks": [], "hkp": []},
                    "validation": {"perspectives": paths},
                },
            )
        seconds = trio.run(_first_contacts, engines, keys)
        shared = [
            e["shared_exit"]
            for e in engines[2].audit_lines()
            if e["event"] == "discovery.perspectives"
        ]
    finally:
        for eng in engines.values():
            eng.close()
        shutil.rmtree(root, ignore_errors=True)
    one, two = spread(seconds[1]), spread(seconds[2])
    extra = spread(b - a for a, b in zip(seconds[1], seconds[2], strict=True))
    exits = len(set(tor.exit_fingerprints))
    rows = [
        Row(f"first contact over Tor, {n} WKD keys each: 2 paths vs 1 (seconds per key)",
            "seconds", two, "report", None, "refreshd with validation.perspectives = 1", one,
            f"{exits} exit(s) in the network; paths shared an exit in {sum(shared)} of "
            f"{len(shared)} lookups"),
        Row("extra first-contact seconds of the second path (paired by round)", "seconds",
            extra, "report"),
    ]  # fmt: skip
    return {
        "rows": rows,
        "details": {"keys": n, "seconds": {str(k): v for k, v in seconds.items()},
                    "shared_exit": shared},
    }  # fmt: skip
