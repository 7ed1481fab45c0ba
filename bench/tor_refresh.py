"""Refresh over the private Tor network: seconds per key and circuits per key.

refreshd runs in process (bench/engine.py) with tor.mode "system" against the loopback Tor
network of tests/world (its client's SOCKS and control ports), so every fetch takes the path a
user's would: Tor supervision, a fresh SOCKS username and password per fetch, the name handed
to Tor (MapAddress sends the test names to the world's nginx on port 443). First contact
(Discovery) fetches each key once; then Refresher.refresh runs for each key, one at a time,
timed one by one, while stem records Tor's STREAM and CIRC events: the SOCKS usernames on the
streams tell the fetches apart, the circuits built for those usernames are counted per key.
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
from tests.world.tornet import EventLog

READY_TIMEOUT = 60.0


async def _refresh_all(eng: Engine, keys: list[keyset.BenchKey]) -> dict[str, Any]:
    out: dict[str, Any] = {"discovery_seconds": [], "refresh_seconds": [], "outcomes": []}
    assert eng.tor is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(eng.tor.run)
        if not await tor_ready(eng.tor, READY_TIMEOUT):
            raise RuntimeError(f"Tor not ready: {eng.tor.detail}")
        for key in keys:
            began = time.perf_counter()
            decision = await eng.discovery.discover(key.address)
            out["discovery_seconds"].append(time.perf_counter() - began)
            if decision is None or decision.fingerprint != key.fingerprint:
                raise RuntimeError(f"first contact over Tor failed for {key.address}")
        for key in keys:
            began = time.perf_counter()
            ok = await eng.refresher.refresh(key.fingerprint)
            out["refresh_seconds"].append(time.perf_counter() - began)
            if not ok:
                raise RuntimeError(f"refresh over Tor failed: {eng.refresher.last}")
            out["outcomes"].append(eng.refresher.last["outcome"])
        nursery.cancel_scope.cancel()
    return out


def _circuits(log: EventLog, n: int) -> dict[str, Any]:
    """For each refresh fetch (its SOCKS username; fetches run one after another, so the last n
    usernames to appear are the refreshes): the circuits its streams used (STREAM events) and
    the circuits Tor tagged with its username (CIRC events). Isolation is judged on streams:
    a circuit that carried streams of two fetches is shared."""

    def done(events: EventLog) -> bool:
        users = {s.socks_username for s in events.streams if s.status == "SUCCEEDED"}
        return len(users - {None}) >= 2 * n

    log.wait_until(done, 30)
    order = list(dict.fromkeys(s.socks_username for s in log.streams if s.socks_username))
    refreshes = order[-n:]
    by_stream: dict[str, set[str]] = {u: set() for u in refreshes}
    for s in log.streams:
        if s.status == "SUCCEEDED" and s.socks_username in by_stream:
            by_stream[s.socks_username].add(s.circ_id)
    by_circ: dict[str, set[str]] = {u: set() for u in refreshes}
    for c in log.circuits:
        if c.socks_username in by_circ:
            by_circ[c.socks_username].add(c.id)
    carried: dict[str, set[str]] = {}  # circuit -> fetches whose streams it carried
    tagged: dict[str, set[str]] = {}  # circuit -> fetch usernames on its CIRC events
    for table, by_user in ((carried, by_stream), (tagged, by_circ)):
        for user, circs in by_user.items():
            for circ in circs:
                table.setdefault(circ, set()).add(user)
    return {
        "refresh_fetches": len(refreshes),
        "circuits_per_fetch_streams": [len(by_stream[u]) for u in refreshes],
        "circuits_per_fetch_circ_events": [len(by_circ[u]) for u in refreshes],
        "circuits_shared_by_fetches": sum(1 for users in carried.values() if len(users) > 1),
        "circuits_tagged_for_several_fetches": {
            circ: {
                "tagged": sorted(users),
                "carried": sorted(carried.get(circ, ())),
                "events": [c.raw for c in log.circuits if c.id == circ],
            }
            for circ, users in tagged.items()
            if len(users) > 1
        },
    }


def run(world: World, quick: bool = False) -> dict[str, Any]:
    if world.tor is None:
        raise RuntimeError("the Tor case needs a world with Tor")
    if not world.wkd.serves_443:
        why = "cannot run: nginx could not listen on port 443 of the world address"
        return {"rows": [Row("refresh over Tor", "seconds", None, peer_note=why)], "details": {}}
    n = 5 if quick else 20
    keys = [keyset.make_key(keyset.address(i, "tor")) for i in range(n)]
    for key in keys:
        world.wkd.publish_wkd(key.address, key.data, methods=("advanced",))
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-tor-"))
    tor = world.tor
    eng = engine(
        root / "state",
        {
            "tor": tor.daemon_config(),
            "network": {"ca_file": str(world.ca.ca_file), "timeout": "60s"},
            "discovery": {"order": ["wkd"], "vks": [], "hkp": []},
        },
    )
    try:
        with tor.record_events() as log:
            timings = trio.run(_refresh_all, eng, keys)
            circuits = _circuits(log, n)
    finally:
        eng.close()
        shutil.rmtree(root, ignore_errors=True)
    per_key = spread(timings["refresh_seconds"])
    first = spread(timings["discovery_seconds"])
    carrying = spread(circuits["circuits_per_fetch_streams"])
    tagged = spread(circuits["circuits_per_fetch_circ_events"])
    shared = circuits["circuits_shared_by_fetches"]
    rows = [
        Row(f"refresh over Tor, {n} unchanged WKD keys: seconds per key", "seconds", per_key,
            "report"),
        Row("first contact over Tor: seconds per key", "seconds", first, "report"),
        Row("circuits per refreshed key: carrying its streams (STREAM events)", "count",
            carrying, "1, none shared", carrying.max == 1 and shared == 0, "", None,
            f"{shared} circuits shared between fetches"),
        Row("of those, built for the fetch (CIRC events with its SOCKS username; else Tor "
            "isolated it on a clean pre-built circuit)", "count", tagged, "report"),
    ]  # fmt: skip
    return {"rows": rows, "details": {"keys": n, "timings": timings, "circuits": circuits,
                                      "tor_start_seconds": tor.start_seconds}}  # fmt: skip
