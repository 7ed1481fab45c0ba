"""Tamper-evident audit log (SPEC section 9).

Rules:
- Every decision and every fetch is one JSON line in state_dir/audit.jsonl with `seq`, `ts`,
  `event`, the event's fields, `prev` and `hash`.
- hash = SHA-256 hex of (prev + canonical JSON of the line without `hash`); canonical JSON is
  sorted keys, no spaces, UTF-8. The first line of a fresh log has prev = 64 zeros.
- A rotated file keeps its name with a numeric suffix; the new file's first line carries the
  previous file's last hash as `prev`, and `seq` continues, so the chain spans files.
- The same event also goes to the journal through structlog, named `noun.verb`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

__all__ = ["AuditLog", "verify"]

GENESIS = "0" * 64
log = structlog.get_logger("refreshd")


def canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev: str, record_without_hash: dict[str, Any]) -> str:
    return hashlib.sha256((prev + canonical(record_without_hash)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: int
    file: Path | None = None
    line: int = 0
    reason: str = ""


def _tail(path: Path) -> tuple[int, str]:
    """Last seq and hash of a log file, reading only its end."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = min(size, 65536)
        while True:
            fh.seek(size - block)
            data = fh.read(block)
            lines = [ln for ln in data.split(b"\n") if ln.strip()]
            if len(lines) >= 2 or block == size:
                break
            block = min(size, block * 4)
    if not lines:
        return 0, GENESIS
    last = json.loads(lines[-1])
    return int(last["seq"]), str(last["hash"])


class AuditLog:
    """Appends chained lines; the one place every part of the daemon reports to."""

    def __init__(self, path: Path, *, clock=lambda: datetime.now(UTC)) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._seq, self._prev = self._resume()
        self._fh = path.open("a", encoding="utf-8")
        os.chmod(path, 0o600)

    def _resume(self) -> tuple[int, str]:
        if self.path.exists() and self.path.stat().st_size:
            return _tail(self.path)
        rotated = rotated_files(self.path)
        if rotated:
            return _tail(rotated[-1])
        return 0, GENESIS

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "seq": self._seq + 1,
            "ts": self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            **fields,
            "prev": self._prev,
        }
        record["hash"] = chain_hash(self._prev, record)
        self._fh.write(canonical(record) + "\n")
        self._fh.flush()
        self._seq, self._prev = record["seq"], record["hash"]
        log.info(event, **fields)
        return record

    def rotate(self) -> Path:
        """Move the current file aside; the next line chains onto its last hash."""
        self._fh.close()
        existing = rotated_files(self.path)
        target = self.path.with_name(f"{self.path.name}.{len(existing) + 1}")
        if self.path.exists():
            self.path.rename(target)
        self._fh = self.path.open("a", encoding="utf-8")
        os.chmod(self.path, 0o600)
        return target

    def close(self) -> None:
        self._fh.close()


def rotated_files(path: Path) -> list[Path]:
    """Rotated files, oldest first (audit.jsonl.1 is the oldest)."""
    found = []
    for p in path.parent.glob(path.name + ".*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        yield from enumerate(fh, start=1)


def verify(path: Path) -> Verdict:
    """Check the whole chain (rotated files first); report the first bad line."""
    files = [*rotated_files(path), *([path] if path.exists() else [])]
    prev, seq, count = GENESIS, 0, 0
    for file in files:
        for number, raw in _lines(file):
            count += 1

            def bad(
                reason: str, file: Path = file, number: int = number, n: int = count
            ) -> Verdict:
                return Verdict(False, n, file, number, reason)

            if not raw.endswith(b"\n"):
                return bad("line is not terminated (truncated write or edit)")
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                return bad("not valid JSON")
            if (
                not isinstance(record, dict)
                or not {"seq", "prev", "hash", "event"} <= record.keys()
            ):
                return bad("missing seq, event, prev or hash")
            if record["prev"] != prev:
                return bad(f"prev does not match the hash of the line before (seq {record['seq']})")
            if record["seq"] != seq + 1:
                return bad(f"seq {record['seq']} follows seq {seq}: a line was removed or moved")
            claimed = record.pop("hash")
            if chain_hash(record["prev"], record) != claimed:
                return bad(f"hash does not match the line's content (seq {record['seq']})")
            prev, seq = claimed, record["seq"]
    return Verdict(True, count)
