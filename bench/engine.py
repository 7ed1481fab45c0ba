"""refreshd's parts wired in process, as refreshd/daemon.py wires them, minus the socket.

Why: the byte and CPU cases drive the real refresh path (Discovery for first contact,
Refresher.refresh for each key, KeyManager.consider for each key's bytes) one call at a time,
so each measurement window holds exactly the work it names. Structured logging is silenced
here (the audit file still gets every line): printing would cost CPU inside the windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from refreshd import config
from refreshd.audit import AuditLog
from refreshd.discovery import Discovery
from refreshd.keymanager import KeyManager
from refreshd.net.fetch import Fetcher
from refreshd.net.tor import TorSupervisor
from refreshd.refresher import Refresher
from refreshd.retrieve import Retriever
from refreshd.store import Store


def quiet_logs() -> None:
    structlog.configure(
        processors=[], logger_factory=structlog.ReturnLoggerFactory(), cache_logger_on_first_use=True
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        discovery=Discovery(keys, retriever, cfg, audit, utcnow),
        refresher=Refresher(keys, retriever, cfg, audit),
    )
