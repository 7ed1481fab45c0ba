"""CPU per refreshed key: refreshd's parse + checks + merge + store against `gpg --import`.

Both sides hold the same 200 keys first (refreshd's store, gpg's keyring), then take the same
typical keys (Ed25519/Cv25519 with 39 third-party certifications, about 5 KB): once as new
keys, once more as unchanged copies (what a refresh that fetched the key in full hands over).

refreshd: KeyManager.consider in this process (the daemon's own path: packet-level strip,
read and verify, rules, merge with the stored copy, SQLite transaction, audit line), CPU time
of this process around each call (time.process_time). gpg: one `gpg --import` process per key,
as a refresh tool that imports what it fetched runs it, CPU time from getrusage(RUSAGE_CHILDREN)
deltas (user + system); and one `gpg --import` of all the keys at once, divided by their
number, which spares gpg's start-up and is the fairer comparison for batch refreshers. The
gpg-agent that gpg starts on the way is a daemon, not a waited-for child: its CPU is not
counted, which favours gpg.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keyset
from bench.engine import engine
from bench.report import Row, spread
from refreshd.core import levels
from refreshd.core.levels import Way
from refreshd.keymanager import Found

KEYRING = 200


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _gpg_import(home: Path, path: Path) -> float:
    """CPU seconds of one `gpg --import`."""
    before = _children_cpu()
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", "--import", str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return _children_cpu() - before


def _refreshd(root: Path, ring: list[keyset.BenchKey], typical: list[keyset.BenchKey]) -> dict:
    eng = engine(root / "refreshd", {"tor": {"mode": "off", "allow_clearnet": True}})
    found = Found(Way.WKD, *levels.for_source(Way.WKD))
    try:
        for key in ring:
            eng.keys.consider(key.address, key.data, found)
        out: dict[str, list[float]] = {"new": [], "unchanged": []}
        for kind in ("new", "unchanged"):
            for key in typical:
                start = time.process_time()
                decision = eng.keys.consider(key.address, key.data, found)
                out[kind].append(time.process_time() - start)
                if not decision.registers:
                    raise RuntimeError(f"refreshd did not take {key.address}: {decision.reason}")
        return out
    finally:
        eng.close()


def _gpg(
    root: Path, ring: list[keyset.BenchKey], typical: list[keyset.BenchKey], repeats: int
) -> dict:
    home = root / "gnupg"
    home.mkdir(mode=0o700)
    files = root / "keys"
    files.mkdir()
    (files / "ring.pgp").write_bytes(b"".join(k.data for k in ring))
    (files / "all.pgp").write_bytes(b"".join(k.data for k in typical))
    paths = []
    for i, key in enumerate(typical):
        paths.append(files / f"{i}.pgp")
        paths[-1].write_bytes(key.data)
    homes = [home]
    try:
        _gpg_import(home, files / "ring.pgp")
        pristine = root / "gnupg-pristine"
        shutil.copytree(home, pristine, ignore=shutil.ignore_patterns("S.*"))
        out: dict[str, list[float]] = {"batch_new": [], "batch_same": []}
        for kind in ("new", "unchanged"):
            out[kind] = [_gpg_import(home, path) for path in paths]
        for r in range(repeats):
            homes.append(root / f"gnupg-batch-{r}")
            shutil.copytree(pristine, homes[-1])
            out["batch_new"].append(_gpg_import(homes[-1], files / "all.pgp") / len(typical))
            out["batch_same"].append(_gpg_import(homes[-1], files / "all.pgp") / len(typical))
        return out
    finally:
        for h in homes:
            subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "all"], check=False)


def run(quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    n_typical = 5 if quick else 20
    ring = [keyset.make_key(keyset.address(i, "ring")) for i in range(20 if quick else KEYRING)]
    typical = [
        keyset.make_key(keyset.address(i, "typical"), certifications=keyset.TYPICAL_CERTIFICATIONS)
        for i in range(n_typical)
    ]
    root = Path(tempfile.mkdtemp(prefix="refreshd-bench-cpu-"))
    try:
        ours = _refreshd(root, ring, typical)
        theirs = _gpg(root, ring, typical, 1 if quick else repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    details = {
        "keyring": len(ring),
        "keys": len(typical),
        "key_bytes": spread(len(k.data) for k in typical).median,
        "refreshd_cpu_seconds": ours,
        "gpg_cpu_seconds": theirs,
    }
    rows = []
    for kind, label in (("new", "new key"), ("unchanged", "unchanged copy")):
        mine = spread(ours[kind])
        per_process = spread(theirs[kind])
        batch = spread(theirs["batch_new" if kind == "new" else "batch_same"])
        rows += [
            Row(f"CPU per {label} (~{details['key_bytes'] / 1000:.0f} KB), keyring of "
                f"{len(ring)}", "seconds", mine, "<= 1× gpg",
                mine.median <= per_process.median, "gpg --import, one process per key",
                per_process),
            Row(f"CPU per {label}, vs one gpg --import of all {len(typical)}", "seconds", mine,
                "<= 1× gpg", mine.median <= batch.median, "gpg --import batch / keys", batch),
        ]  # fmt: skip
    return {"rows": rows, "details": details}
