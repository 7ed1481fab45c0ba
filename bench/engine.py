"""refreshd's parts wired in process, as refreshd/daemon.py wires them, minus the socket.

Why: the byte and CPU cases drive the real refresh path (Discovery for first contact,
Refresher.refresh for each key, KeyManager.consider for each key's bytes) one call at a time,
so each measurement window holds exactly the work it names. Logs are rendered as the daemon
renders them (refreshd.daemon.configure_logging) and written to /dev/null, so their CPU cost
is counted without filling the benchmark's output.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refreshd import config
from refreshd.audit import AuditLog
from refreshd.clock import utcnow
from refreshd.daemon import configure_logging, prefer_the_loop
from refreshd.discovery import Discovery
from refreshd.keymanager import KeyManager
from refreshd.net.fetch import Fetcher
from refreshd.net.tor import TorSupervisor
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.store import Store


def discard_logs() -> None:
    """Call before anything logs: structlog caches a logger on its first use."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 (kept open for the process's lifetime)
    with contextlib.redirect_stderr(devnull):
        configure_logging()


@dataclass
class Engine:
    cfg: config.Config
    store: Store
    audit: AuditLog
    keys: KeyManager
    tor: TorSupervisor | None
    retriever: Retriever
    discovery: Discovery
    refresher: Refresher

    def close(self) -> None:
        self.store.close()
        self.audit.close()

    def audit_lines(self, after: int = 0) -> list[dict[str, Any]]:
        """Audit lines with seq > after."""
        lines = [json.loads(x) for x in self.cfg.audit_file.read_text().splitlines() if x]
        return [line for line in lines if line["seq"] > after]

    def last_seq(self) -> int:
        lines = self.audit_lines()
        return int(lines[-1]["seq"]) if lines else 0


def engine(state_dir: Path, sections: dict[str, dict[str, Any]]) -> Engine:
    """Every part on one state directory; `sections` as in config.toml."""
    mapping = {"daemon": {"state_dir": str(state_dir), "socket": str(state_dir / "socket")}}
    for name, values in sections.items():
        mapping[name] = {**mapping.get(name, {}), **values}
    cfg = config.from_mapping(mapping)
    prefer_the_loop()  # as `refreshd run` does
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    audit = AuditLog(cfg.audit_file)
    store = Store(cfg.database)
    keys = KeyManager(store, audit, cfg, utcnow)
    tor = None if cfg.tor.mode == "off" else TorSupervisor(cfg, audit.emit)
    retriever = Retriever(cfg, Fetcher(cfg, tor))
    return Engine(
        cfg=cfg,
        store=store,
        audit=audit,
        keys=keys,
        tor=tor,
        retriever=retriever,
        discovery=Discovery(
            keys, retriever, cfg, audit, utcnow, exit_of=tor.exit_of if tor else None
        ),
        refresher=Refresher(keys, retriever, cfg, audit),
    )
