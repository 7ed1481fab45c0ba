"""A daemon state holding N registered keys, and a GnuPG keyring with the same keys.

Why: the socket, idle and start-up cases need a daemon as big as a heavy user's (10,000 keys)
without waiting for 10,000 discoveries. Each address gets its own distinct real key
(keyset.minimal_key), read by refreshd's own key reader (read_key: parsed and self-signature
verified), and is written through Store.put_key / Store.apply / Store.put_source in one
transaction, exactly the rows first contact over WKD leaves (key, registration at
provider-trust, history, decision, WKD source URL). The audit log starts empty; the daemon
appends to it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import keyset
from refreshd.core.levels import Level, Way
from refreshd.core.rules import Decision, DecisionKind, Rule
from refreshd.keymanager import facts_of
from refreshd.net import wkd
from refreshd.openpgp.keyview import read_key
from refreshd.store import Source, Store, iso


@dataclass(frozen=True)
class Population:
    state_dir: Path  # a template: copy it, never run a daemon on it
    addresses: list[str]
    keys: list[bytes]


def build(state_dir: Path, n: int) -> Population:
    now = datetime.now(UTC)
    addresses: list[str] = []
    blobs: list[bytes] = []
    store = Store(state_dir / "refreshd.sqlite3")
    try:
        with store.transaction():
            for address, raw in keyset.minimal_keys(n):
                view = read_key(raw, datetime.now(UTC))
                reason = (
                    f"First key found for {address}, at level provider-trust from wkd (rule 1)."
                )
                store.put_key(facts_of(view), raw, now)
                decision = Decision(
                    DecisionKind.REGISTERED,
                    view.fingerprint,
                    Level.PROVIDER_TRUST,
                    Way.WKD,
                    True,
                    Rule.FIRST_CONTACT,
                    reason,
                )
                store.apply(address, decision, now)
                store.put_source(
                    Source(
                        url=wkd.requests_for(address)[0].url,
                        kind=Way.WKD,
                        address=address,
                        fingerprint=view.fingerprint,
                        last_fetch=iso(now),
                        last_status="200",
                    )
                )
                addresses.append(address)
                blobs.append(raw)
        store.maintain()
    finally:
        store.close()
    return Population(state_dir, addresses, blobs)


def copy_state(population: Population, root: Path) -> Path:
    """A fresh copy of the template under root/state (where daemon_proc.write_config puts it)."""
    target = root / "state"
    shutil.copytree(population.state_dir, target)
    return target


def gnupg_home(population: Population, home: Path, limit: int | None = None) -> int:
    """A GnuPG home with the population's keys (the first `limit`); returns how many."""
    keys = population.keys[:limit] if limit is not None else population.keys
    home.mkdir(mode=0o700, parents=True)
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", "--import"],
        input=b"".join(keys),
        check=True,
        capture_output=True,
        timeout=1800,
    )
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    return len(keys)
