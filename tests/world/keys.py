"""Real OpenPGP keys for world tests and the benchmark, made by gpg in a throwaway homedir.

Why: servers in the world must hand out keys that independent tools accept; gpg makes them
and is the oracle for what a served key contains.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GPG = "gpg"


@dataclass(frozen=True)
class GpgKey:
    address: str
    fingerprint: str
    binary: bytes
    armored: str


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    argv = [GPG, "--homedir", str(home), "--batch", "--no-tty", "--quiet", *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, check=True, timeout=60)
    return done.stdout


def make_key(address: str) -> GpgKey:
    """A fresh Ed25519/Cv25519 key with one uid `<address>`, no passphrase."""
    with tempfile.TemporaryDirectory(prefix="refreshd-gpg-") as tmp:
        home = Path(tmp)
        _gpg(
            home,
            "--passphrase",
            "",
            "--quick-gen-key",
            f"<{address}>",
            "future-default",
            "default",
            "1y",
        )
        listing = _gpg(home, "--with-colons", "--list-keys", address).decode()
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        binary = _gpg(home, "--export", fingerprint)
        armored = _gpg(home, "--armor", "--export", fingerprint).decode("ascii")
        # Key generation started a gpg-agent for this homedir: stop it before the dir goes.
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, timeout=30
        )
    return GpgKey(address, fingerprint, binary, armored)


def fingerprints_of(key_data: bytes) -> list[str]:
    """Primary-key fingerprints gpg sees in `key_data` (binary or armored), without importing."""
    with tempfile.TemporaryDirectory(prefix="refreshd-gpg-") as tmp:
        listing = _gpg(Path(tmp), "--with-colons", "--show-keys", stdin=key_data).decode()
    fingerprints = []
    primary = False
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            primary = True
        elif fields[0] == "fpr" and primary:
            fingerprints.append(fields[9])
            primary = False
        elif fields[0] == "sub":
            primary = False
    return fingerprints
