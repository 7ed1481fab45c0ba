"""Tamper-evident audit log (SPEC section 9), safe against crashes and a full disk.

Rules:
- Every decision and every fetch is one JSON line in state_dir/audit.jsonl with `seq`, `ts`,
  `event`, the event's fields, `prev` and `hash`.
- hash = SHA-256 hex of (prev + canonical JSON of the line without `hash`); canonical JSON is
  sorted keys, no spaces, UTF-8, with U+2028, U+2029, C1 controls (U+0085 among them) and lone
  surrogates written as \\u escapes, so `splitlines()` sees one record a line and any text can
  be written. The first line of a fresh log has prev = 64 zeros.
- A line is written whole or not at all: one append, and if the disk fills part-way the file is
  cut back to where the line began (`DiskFull` names the file). A line that could not be written
  is kept, in order, and written before the next one, so the chain never skips.
- A torn tail (a crash or power loss mid-write) found at start is cut off, never fatal, and the
  cut is the next line: `audit.truncated` with the lost bytes' length, SHA-256 and text.
- A decision and its audit line cannot part. Design: the decision's line is formed (seq, prev,
  hash) before its store transaction, written into the store's `audit_intents` table inside that
  same transaction, and appended to the file after the commit. At start, every intent whose seq
  the file does not hold is appended (re-chained, marked `recovered`, if the file moved on), so
  a SIGKILL between commit and write loses no line; a rolled-back decision leaves none.
- Rotation: before a line that would take the file past `rotate_bytes`, or once its first line
  is older than `rotate_age`, the file is renamed with the next numeric suffix; the new file's
  first line carries the previous file's last hash as `prev` and `seq` continues, so the chain
  spans files. Rotated files whose last line is older than `keep` are removed, and the removal
  is itself a line (`audit.pruned`, with the last seq and hash removed) that `verify` requires
  to accept a chain that no longer starts at genesis.
- The same event also goes to the journal through structlog, named `noun.verb`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from refreshd.clock import utcnow

__all__ = ["AuditLog", "DiskFull", "verify"]

GENESIS = "0" * 64
ROTATE_BYTES = 64 << 20
ROTATE_AGE = 30 * 86400
KEEP = 400 * 86400
MAX_UNWRITTEN = 10_000  # lines held in memory while the disk is full
LOST_TEXT = 2000
log = structlog.get_logger("refreshd")

# everything json.dumps(ensure_ascii=False) leaves raw that a reader could take for a line end,
# or that cannot be encoded as UTF-8
_UNSAFE = re.compile("[\u0080-\u009f\u2028\u2029\ud800-\udfff]")


class DiskFull(OSError):
    """The disk holding the audit log (or the store) has no room; nothing half-written."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on the disk holding {path}", str(path))
        self.path = path


def canonical(record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def chain_hash(prev: str, record_without_hash: dict[str, Any]) -> str:
    return hashlib.sha256((prev + canonical(record_without_hash)).encode("utf-8")).hexdigest()


def _now_text(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_ts(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Intent:
    """A formed line (seq, prev, hash) not yet known to be in the file."""

    seq: int
    record: dict[str, Any]

    @property
    def line(self) -> str:
        return canonical(self.record)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: int
    file: Path | None = None
    line: int = 0
    reason: str = ""


def _last_lines(path: Path, want: int = 1) -> tuple[list[bytes], int]:
    """The last `want` newline-terminated lines of a file and the length of what follows them
    (a torn tail, without a newline), reading only the file's end."""
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        block = min(size, 65536)
        while True:
            fh.seek(size - block)
            data = fh.read(block)
            complete, _, torn = data.rpartition(b"\n")
            lines = complete.split(b"\n") if complete or data.startswith(b"\n") else []
            if block == size or len(lines) > want:
                break
            block = min(size, block * 4)
    if block != size:
        lines = lines[1:]  # the first piece may be the middle of a line
    return [ln for ln in lines if ln.strip()][-want:], len(torn)


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("seq"), int) and "hash" in record:
        return record
    return None


def _first_record(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as fh:
        return _record(fh.readline())


class AuditLog:
    """Appends chained lines; the one place every part of the daemon reports to."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], datetime] = utcnow,
        rotate_bytes: int = ROTATE_BYTES,
        rotate_age: int = ROTATE_AGE,
        keep: int = KEEP,
    ) -> None:
        self.path = path
        self._clock = clock
        self.rotate_bytes, self.rotate_age, self.keep = rotate_bytes, rotate_age, keep
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = self._open()
        torn = self._cut_torn_tail()
        self._seq, self._prev = self._resume()
        self.written_seq = self._seq
        self._unwritten: list[dict[str, Any]] = []
        self._dropped = 0
        self._notes: list[dict[str, Any]] = []  # lines owed by a rotation, written after it
        self._started = self._file_started()
        if torn is not None:
            self.emit(
                "audit.truncated",
                lost_bytes=len(torn),
                lost_sha256=hashlib.sha256(torn).hexdigest(),
                lost=torn[:LOST_TEXT].decode("utf-8", "backslashreplace"),
                reason="the log ended in a partial line (a crash or a full disk while it was "
                "written); the partial line was cut off at start",
            )

    # -- opening --------------------------------------------------------------------------
    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def _cut_torn_tail(self) -> bytes | None:
        """Cut an unterminated or unreadable last line; return what was cut."""
        size = os.fstat(self._fd).st_size
        if not size:
            return None
        lines, torn = _last_lines(self.path)
        if not torn and lines and _record(lines[-1]) is not None:
            return None
        cut = torn if torn else len(lines[-1]) + 1 if lines else size
        with self.path.open("rb") as fh:
            fh.seek(size - cut)
            lost = fh.read(cut)
        os.ftruncate(self._fd, size - cut)
        log.warning("audit.truncated", lost_bytes=cut)
        return lost

    def _resume(self) -> tuple[int, str]:
        for file in [self.path, *reversed(rotated_files(self.path))]:
            if file.exists() and file.stat().st_size:
                lines, _ = _last_lines(file)
                record = _record(lines[-1]) if lines else None
                if record is not None:
                    return record["seq"], str(record["hash"])
        return 0, GENESIS

    def _file_started(self) -> datetime | None:
        first = _first_record(self.path) if self.path.stat().st_size else None
        return _parse_ts(first["ts"]) if first else None

    # -- forming and writing ----------------------------------------------------------------
    def _form(self, event: str, fields: dict[str, Any], ts: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "seq": self._seq + 1,
            "ts": ts or _now_text(self._clock()),
            "event": event,
            **fields,
            "prev": self._prev,
        }
        record["hash"] = chain_hash(self._prev, record)
        return record

    def intent(self, event: str, **fields: Any) -> Intent:
        """The line of a decision about to be committed: written by `commit` after the store
        transaction that also holds it. DiskFull first if earlier lines still wait for room,
        so a decision is only taken when its line can follow."""
        self._flush()
        return Intent(self._seq + 1, self._form(event, fields))

    def commit(self, intent: Intent) -> None:
        """Append a decision's line once its transaction committed (DiskFull: kept to retry,
        and the store's copy writes it at the next start)."""
        if intent.seq != self._seq + 1:
            raise RuntimeError("an audit line was written between a decision and its commit")
        self._advance(intent.record)
        self._flush()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one line; on a full disk it waits, in order, for the next line's write (past
        MAX_UNWRITTEN waiting lines, further ones are counted in an `audit.dropped` line
        instead, never chained, so the chain stays whole)."""
        if len(self._unwritten) >= MAX_UNWRITTEN:
            self._dropped += 1
            log.warning("audit.dropped", line_event=event)
            return {"event": event, **fields}
        record = self._form(event, fields)
        self._advance(record)
        try:
            self._flush()
        except DiskFull:
            log.warning("audit.delayed", line_event=event, waiting=len(self._unwritten))
        return record

    def _advance(self, record: dict[str, Any]) -> None:
        self._seq, self._prev = record["seq"], record["hash"]
        self._unwritten.append(record)
        log.info(record["event"], **{k: v for k, v in record.items() if k not in _FRAME})

    def _flush(self) -> None:
        while self._unwritten:
            record = self._unwritten[0]
            self._write(record)
            self._unwritten.pop(0)
            self.written_seq = record["seq"]
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self.emit("audit.dropped", lines=dropped, reason="the disk was full for too long")
        while self._notes:
            note = self._notes.pop(0)
            self.emit(str(note.pop("event")), **note)

    def _write(self, record: dict[str, Any]) -> None:
        data = (canonical(record) + "\n").encode("utf-8")
        self._maybe_rotate(len(data), _parse_ts(record["ts"]))
        start = os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            os.ftruncate(self._fd, start)  # nothing half-written stays behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(self.path) from exc
            raise
        if self._started is None:
            self._started = _parse_ts(record["ts"])

    # -- rotation ---------------------------------------------------------------------------
    def _maybe_rotate(self, adding: int, now: datetime | None) -> None:
        size = os.fstat(self._fd).st_size
        if not size:
            return
        too_big = size + adding > self.rotate_bytes
        too_old = (
            self._started is not None
            and now is not None
            and now - self._started > timedelta(seconds=self.rotate_age)
        )
        if too_big or too_old:
            self.rotate()

    def rotate(self) -> Path:
        """Move the current file aside; the next line chains onto its last hash."""
        os.close(self._fd)
        existing = rotated_files(self.path)
        number = int(existing[-1].name.rsplit(".", 1)[1]) + 1 if existing else 1
        target = self.path.with_name(f"{self.path.name}.{number}")
        if self.path.exists():
            self.path.rename(target)
        self._fd = self._open()
        self._started = None
        self._prune(self._clock())
        return target

    def _prune(self, now: datetime) -> None:
        """Remove rotated files older than `keep`, oldest first, each removal a line."""
        rotated = rotated_files(self.path)
        for file in rotated[:-1]:  # the newest rotated file always stays
            lines, _ = _last_lines(file)
            last = _record(lines[-1]) if lines else None
            when = _parse_ts(last["ts"]) if last else None
            if last is None or when is None or now - when <= timedelta(seconds=self.keep):
                return
            file.unlink()
            self._notes.append(
                {
                    "event": "audit.pruned",
                    "file": file.name,
                    "last_seq": last["seq"],
                    "last_hash": last["hash"],
                    "reason": f"rotated audit file older than {self.keep // 86400} days removed",
                }
            )

    # -- recovery ---------------------------------------------------------------------------
    def recover(self, intents: Iterable[tuple[int, str]]) -> int:
        """Append the store's decision lines the file lacks (a crash between commit and
        write); returns how many. Lines already in the file are skipped by seq."""
        recovered = 0
        for seq, line in sorted(intents):
            if seq <= self._seq:
                continue
            record = json.loads(line)
            if seq == self._seq + 1 and record.get("prev") == self._prev:
                self._advance(record)  # exactly the line that was formed
            else:
                fields = {k: v for k, v in record.items() if k not in _FRAME}
                self._advance(self._form(record["event"], {**fields, "recovered": True}))
            recovered += 1
        try:
            self._flush()
        except DiskFull:  # they wait in order; the store keeps its copies until written
            log.warning("audit.delayed", waiting=len(self._unwritten))
        return recovered

    def close(self) -> None:
        try:
            self._flush()
        except DiskFull:
            log.error("audit.unwritten", lines=len(self._unwritten))
        os.close(self._fd)


_FRAME = frozenset({"seq", "ts", "event", "prev", "hash"})


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
    """Check the whole chain (rotated files first); report the first bad line.

    A chain whose oldest file was removed by retention starts from that file's first `prev`,
    and is intact only if a later `audit.pruned` line names exactly that seq and hash."""
    files = [*rotated_files(path), *([path] if path.exists() else [])]
    prev, seq, count = GENESIS, 0, 0
    anchor: tuple[int, str] | None = None
    first = _first_record(files[0]) if files and files[0] != path else None
    if first is not None and files[0].name != f"{path.name}.1" and first["prev"] != GENESIS:
        prev, seq = str(first["prev"]), first["seq"] - 1
        anchor = (seq, prev)
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
            except ValueError:
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
            pruned = (record.get("last_seq"), record.get("last_hash"))
            if anchor and record["event"] == "audit.pruned" and pruned == anchor:
                anchor = None
            prev, seq = claimed, record["seq"]
    if anchor is not None:
        return Verdict(
            False,
            count,
            files[0],
            1,
            "the oldest files are missing and no audit.pruned line records their removal",
        )
    return Verdict(True, count)
