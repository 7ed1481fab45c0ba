"""Bytes for one refresh cycle of N unchanged keys, over WKD (nginx, HTTPS) and HKP (SKS).

refreshd runs in process (bench/engine.py): Discovery makes first contact with every address
(an unconditional fetch: the full-fetch reference), then each measured cycle calls
Refresher.refresh(fingerprint) for every key, one at a time, with tor.mode "off" and
network.connect_to pointing the test names at loopback (no Tor in this case: Tor's cells would
hide what the protocol costs). GnuPG runs as users run it: `gpg --locate-external-keys
--auto-key-locate clear,wkd` for WKD and `gpg --refresh-keys --keyserver hkp://...` for HKP,
both refetching every key in full.

Counting:
- wire bytes: a counting TCP forwarder (tests/world/tap.py) in front of nginx and SKS; it sees
  TLS records, so handshakes and certificates count.
- body bytes: nginx's access log (`body_bytes_sent`) for WKD; for HKP refreshd's own count of
  the body it read (audit `refresh.fetched` bytes) and, for gpg, the size of SKS's answer to
  the same query (SKS speaks plain HTTP/1.0 and keeps no access log).

gpg and WKD: dirmngr resolves names through the system and trusts only the system CA store,
and WKD has no port. As root, gpg runs in a private mount namespace (unshare) whose /etc/hosts
maps the test names to a loopback address where a forwarder on port 443 leads to the tap,
whose resolv.conf names only 127.0.0.1, and whose CA bundle adds the test CA; nothing outside
that namespace changes. Without root the peer cannot run the WKD case and the table says so.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from bench import feedwire, keyset
from bench.engine import Engine, engine
from bench.report import Row, spread
from refreshd.core import levels
from refreshd.core.levels import Way
from refreshd.keymanager import Found
from refreshd.net.hkp import lookup as hkp_lookup
from refreshd.openpgp.packets import armor
from tests.world import World, names
from tests.world.tap import Tap, TapCounts

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
GPG_TIMEOUT = 600


def _delta(after: TapCounts, before: TapCounts) -> dict[str, int]:
    return {
        "connections": after.accepts - before.accepts,
        "bytes_up": after.bytes_up - before.bytes_up,
        "bytes_down": after.bytes_down - before.bytes_down,
        "wire_bytes": (after.bytes_up + after.bytes_down) - (before.bytes_up + before.bytes_down),
    }


class Forward:
    """Listen on (host, port) and hand each connection to `target` unchanged (no counting: the
    tap behind it counts). Only needed because WKD clients always dial port 443."""

    def __init__(self, host: str, port: int, target: tuple[str, int]) -> None:
        self._listener = socket.create_server((host, port))
        self._target = target
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=10)
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def _free_loopback_443() -> str | None:
    """A loopback address whose port 443 this process may bind, or None."""
    rng = random.SystemRandom()
    for _ in range(50):
        host = f"127.{rng.randrange(1, 192)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        with socket.socket() as probe:
            try:
                probe.bind((host, 443))
            except OSError:
                continue
        return host
    return None


def namespace_problem() -> str | None:
    """Why gpg cannot be pointed at the loopback WKD server here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace and port 443 (dirmngr has no host map)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if not SYSTEM_CA_BUNDLE.exists():
        return f"no system CA bundle at {SYSTEM_CA_BUNDLE}"
    return None


class GnuPG:
    """A GnuPG home holding the benchmark's keys. With `namespace`, gpg runs in a private mount
    namespace that sees its own hosts (the SKS address, and the test names at `wkd_address`
    when given), a resolv.conf naming only 127.0.0.1, and the system CA bundle plus the test
    CA; dirmngr looks up the keyserver's address in hosts, so no query leaves the machine."""

    def __init__(
        self,
        root: Path,
        ca_file: Path,
        *,
        namespace: bool,
        sks_address: str,
        wkd_address: str | None,
    ) -> None:
        self.home = root / "gnupg"
        self.home.mkdir(mode=0o700)
        (self.home / "dirmngr.conf").write_text("standard-resolver\n")
        self.mounts: dict[str, Path] = {}
        if not namespace:
            return
        etc = root / "etc"
        etc.mkdir()
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        hosts = f"127.0.0.1 localhost\n{sks_address} sks.bench.invalid\n"
        if wkd_address is not None:
            hosts += f"{wkd_address} {' '.join(names.web_hosts())}\n"
        (etc / "hosts").write_text(hosts)
        bundle = SYSTEM_CA_BUNDLE.read_bytes() + b"\n" + ca_file.read_bytes()
        (etc / "ca-certificates.crt").write_bytes(bundle)
        self.mounts = {
            "/etc/resolv.conf": etc / "resolv.conf",
            "/etc/hosts": etc / "hosts",
            str(SYSTEM_CA_BUNDLE): etc / "ca-certificates.crt",
        }

    def run(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", *args]
        if self.mounts:
            binds = "".join(f'mount --bind "{s}" "{d}" && ' for d, s in self.mounts.items())
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    binds + 'exec "$@"', "sh", *argv]  # fmt: skip
        return subprocess.run(
            argv,
            input=data,
            capture_output=True,
            timeout=GPG_TIMEOUT,
        )  # fmt: skip

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)


def _engine(root: Path, name: str, world: World, tap: Tap, order: list[str]) -> Engine:
    return engine(
        root / name,
        {
            "tor": {"mode": "off", "allow_clearnet": True},
            "network": {
                "ca_file": str(world.ca.ca_file),
                "timeout": "60s",
                "connect_to": [f"{h}:443:127.0.0.1:{tap.port}" for h in names.web_hosts()],
            },
            "discovery": {"order": order, "vks": [], "hkp": [world.sks.url]},
        },
    )


async def _first_contact_wkd(eng: Engine, keys: list[keyset.BenchKey]) -> None:
    for key in keys:
        decision = await eng.discovery.discover(key.address)
        if decision is None or not decision.registers or decision.fingerprint != key.fingerprint:
            raise RuntimeError(f"first contact with {key.address} failed: {decision}")


async def _first_contact_hkp(eng: Engine, keys: list[keyset.BenchKey]) -> None:
    level, positive = levels.for_source(Way.HKP)
    for key in keys:
        found = Found(Way.HKP, level, positive)
        decision = await eng.discovery.by_fingerprint(key.address, key.fingerprint, found)
        if not decision.registers:
            raise RuntimeError(f"first contact with {key.fingerprint} failed: {decision.reason}")


async def _cycle(eng: Engine, keys: list[keyset.BenchKey]) -> None:
    for key in keys:
        if not await eng.refresher.refresh(key.fingerprint):
            raise RuntimeError(f"refresh of {key.fingerprint} failed: {eng.refresher.last}")


@contextlib.contextmanager
def _window(counts: Any, world: World) -> Iterator[dict[str, Any]]:
    """Tap counts and nginx log lines of the work done inside the block."""
    out: dict[str, Any] = {}
    before, logged = counts(), len(world.wkd.access_log())
    yield out
    out.update(_delta(counts(), before))
    entries = world.wkd.access_log()[logged:]
    out["nginx_body_bytes"] = sum(e.body_bytes_sent for e in entries)
    out["status_counts"] = dict(Counter(str(e.status) for e in entries))


def run(quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    repeats = 1 if quick else repeats
    tiers = keyset.SPREAD_QUICK if quick else keyset.SPREAD_200
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-wire-"))
    try:
        with World(root, with_tor=False) as world:
            return _measure(world, root, keyset.spread_keys(tiers), repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(world: World, root: Path, keys: list[keyset.BenchKey], repeats: int) -> dict[str, Any]:
    for key in keys:
        world.wkd.publish_wkd(key.address, key.data, methods=("advanced",))
        if world.sks.add_key(armor(key.data)) != 200:
            raise RuntimeError(f"SKS refused {key.fingerprint}")
    sks_bodies = sum(len(world.sks.get(k.fingerprint) or b"") for k in keys)
    tap = Tap("127.0.0.1", world.wkd.port)
    try:
        details: dict[str, Any] = {
            "keys": len(keys),
            "key_bytes": {
                "total": sum(len(k.data) for k in keys),
                **_sizes([len(k.data) for k in keys]),
            },
            "sks_answer_bytes_per_cycle": sks_bodies,
        }
        details["refreshd"] = _refreshd_side(world, root, tap, keys, repeats)
        details["gpg"] = _gpg_side(world, root, tap, keys, repeats)
        details["prefix_log"] = feedwire.run(keys)
    finally:
        tap.close()
    return {"rows": _rows(details), "details": details}


def _sizes(sizes: list[int]) -> dict[str, float]:
    s = spread(sizes)
    return {"min": s.min, "median": s.median, "max": s.max}


def _refreshd_side(
    world: World, root: Path, tap: Tap, keys: list[keyset.BenchKey], repeats: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"wkd_cycles": [], "hkp_cycles": []}
    wkd = _engine(root, "refreshd-wkd", world, tap, ["wkd"])
    try:
        with _window(tap.counts, world) as first:
            trio.run(_first_contact_wkd, wkd, keys)
        out["wkd_first_contact"] = first
        for _ in range(repeats):
            with _window(tap.counts, world) as cycle:
                trio.run(_cycle, wkd, keys)
            out["wkd_cycles"].append(cycle)
    finally:
        wkd.close()
    hkp = _engine(root, "refreshd-hkp", world, tap, ["hkp"])
    try:
        with _window(world.sks.counts, world) as first:
            trio.run(_first_contact_hkp, hkp, keys)
        out["hkp_first_contact"] = first
        for _ in range(repeats):
            seq = hkp.last_seq()
            with _window(world.sks.counts, world) as cycle:
                trio.run(_cycle, hkp, keys)
            fetched = [e for e in hkp.audit_lines(seq) if e["event"] == "refresh.fetched"]
            cycle["body_bytes"] = sum(int(e["bytes"]) for e in fetched)
            cycle["unchanged"] = sum(1 for e in fetched if e["outcome"] == "unchanged")
            out["hkp_cycles"].append(cycle)
        urls = {s.url for k in keys for s in hkp.store.sources_of(k.fingerprint)}
        expected = {hkp_lookup(world.sks.url, k.fingerprint).url for k in keys}
        if urls != expected:
            raise RuntimeError("HKP refreshes did not use the by-fingerprint URLs")
    finally:
        hkp.close()
    return out


def _gpg_side(
    world: World, root: Path, tap: Tap, keys: list[keyset.BenchKey], repeats: int
) -> dict[str, Any]:
    problem = namespace_problem()
    hosts_address = _free_loopback_443() if problem is None else None
    if problem is None and hosts_address is None:
        problem = "no loopback address with a free port 443"
    out: dict[str, Any] = {"wkd_runs": [], "hkp_runs": [], "wkd_problem": problem}
    forward = None
    if hosts_address is not None:
        forward = Forward(hosts_address, 443, ("127.0.0.1", tap.port))
    gpg = GnuPG(
        root,
        world.ca.ca_file,
        namespace=namespace_problem() is None,
        sks_address=world.sks.address,
        wkd_address=hosts_address,
    )
    try:
        imported = gpg.run("--import", data=b"".join(k.data for k in keys))
        if imported.returncode:
            raise RuntimeError(f"gpg --import: {imported.stderr.decode(errors='replace')}")
        if problem is None:
            addresses = [k.address for k in keys]
            for _ in range(repeats):
                with _window(tap.counts, world) as run_:
                    done = gpg.run("--auto-key-locate", "clear,wkd", "--locate-external-keys",
                                   *addresses)  # fmt: skip
                run_["returncode"] = done.returncode
                if run_["status_counts"].get("200") != len(keys):
                    raise RuntimeError(
                        f"gpg WKD run fetched {run_['status_counts']} for {len(keys)} keys: "
                        + done.stderr.decode(errors="replace")[-2000:]
                    )
                out["wkd_runs"].append(run_)
        keyserver = f"hkp://{world.sks.address}:{world.sks.port}"
        for _ in range(repeats):
            with _window(world.sks.counts, world) as run_:
                done = gpg.run("--keyserver", keyserver, "--refresh-keys")
            run_["returncode"] = done.returncode
            if run_["connections"] < len(keys):
                raise RuntimeError(
                    f"gpg --refresh-keys made {run_['connections']} requests for {len(keys)} "
                    "keys: " + done.stderr.decode(errors="replace")[-2000:]
                )
            out["hkp_runs"].append(run_)
    finally:
        gpg.close()
        if forward is not None:
            forward.close()
    return out


def _rows(d: dict[str, Any]) -> list[Row]:
    ours, gpg = d["refreshd"], d["gpg"]
    n = d["keys"]
    wkd_body = spread(c["nginx_body_bytes"] for c in ours["wkd_cycles"])
    wkd_wire = spread(c["wire_bytes"] for c in ours["wkd_cycles"])
    first_wire = spread([ours["wkd_first_contact"]["wire_bytes"]])
    rows: list[Row] = []
    if gpg["wkd_problem"] is None:
        gpg_body = spread(r["nginx_body_bytes"] for r in gpg["wkd_runs"])
        gpg_wire = spread(r["wire_bytes"] for r in gpg["wkd_runs"])
        name = "gpg --locate-external-keys"
        rows += [
            Row(f"WKD body bytes, {n} unchanged keys", "bytes", wkd_body, "0",
                wkd_body.max == 0, name, gpg_body),
            Row("WKD wire bytes incl. TLS", "bytes", wkd_wire, "<= 20% of full refetch",
                wkd_wire.median <= 0.2 * gpg_wire.median, name, gpg_wire),
            Row("WKD full fetch (refreshd's first contact) vs gpg's refetch", "bytes",
                first_wire, "", None, name, gpg_wire),
        ]  # fmt: skip
    else:
        note = f"peer cannot run this case ({gpg['wkd_problem']})"
        rows += [
            Row(f"WKD body bytes, {n} unchanged keys", "bytes", wkd_body, "0",
                wkd_body.max == 0, "gpg", None, note),
            Row("WKD wire bytes incl. TLS, vs refreshd's unconditional first fetch", "bytes",
                wkd_wire, "<= 20% of full refetch",
                wkd_wire.median <= 0.2 * first_wire.median, "refreshd first contact",
                first_wire),
        ]  # fmt: skip
    hkp_body = spread(c["body_bytes"] for c in ours["hkp_cycles"])
    hkp_wire = spread(c["wire_bytes"] for c in ours["hkp_cycles"])
    gpg_hkp_wire = spread(r["wire_bytes"] for r in gpg["hkp_runs"])
    gpg_hkp_body = spread([d["sks_answer_bytes_per_cycle"]] * len(gpg["hkp_runs"]))
    name = "gpg --refresh-keys"
    rows += [
        Row("HKP (SKS) body bytes", "bytes", hkp_body, "", None, name, gpg_hkp_body,
            "SKS's answers to the same queries"),
        Row("HKP (SKS) wire bytes", "bytes", hkp_wire, "<= 20% of full refetch",
            hkp_wire.median <= 0.2 * gpg_hkp_wire.median, name, gpg_hkp_wire),
    ]  # fmt: skip
    feed = d["prefix_log"]
    unchanged, changed, absent = feed["unchanged"], feed["one-changed"], feed["no-feed"]
    feed_wire = spread([unchanged["wire_bytes"]])
    rows += [
        Row(f"HKP with Hockeypuck's prefix log: wire bytes of a 7-day cycle, {n} unchanged "
            f"keys ({unchanged['feed_requests']} feed requests, {unchanged['keys_fetched']} "
            "keys fetched)", "bytes", feed_wire, "<= 20% of gpg --refresh-keys",
            feed_wire.median <= 0.2 * gpg_hkp_wire.median, name, gpg_hkp_wire),
        Row("  one key changed on day 2: fetched at its turn, and only it", "count",
            spread([changed["keys_fetched"]]), "1 (the changed key)",
            bool(changed["fetched_only_the_changed"])),
        Row("  no prefix log (404): keys refreshed in the 7 days", "count",
            spread([absent["keys_fetched"]]), f"{n} (every key, as without a feed)",
            absent["keys_fetched"] == n, "", None,
            f"{absent['wire_bytes']:,} wire bytes"),
    ]  # fmt: skip
    return rows
