"""`refreshd audit verify` on real logs written by AuditLog, untouched and tampered with."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from refreshd import cli
from refreshd.audit import AuditLog, chain_hash

Verify = Callable[[], tuple[int, str]]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def verify(tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> Verify:
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state}"\n')

    def run() -> tuple[int, str]:
        capsys.readouterr()  # AuditLog also logs each event to stdout through structlog
        code = cli.main(["audit", "verify", "--config", str(config)])
        return code, capsys.readouterr().out

    return run


def write_log(state: Path, count: int = 5) -> Path:
    log = AuditLog(state / "audit.jsonl")
    for n in range(count):
        log.emit("refresh.fetched", status=200, bytes=1000 + n, seconds=0.5, source="wkd")
    log.close()
    return state / "audit.jsonl"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def broken_at(out: str) -> tuple[str, int]:
    match = re.fullmatch(r"audit log broken at (\S+) line (\d+): .+\n", out)
    assert match, out
    return Path(match.group(1)).name, int(match.group(2))


def test_untouched_log_is_intact(state: Path, verify: Verify) -> None:
    write_log(state)
    assert verify() == (0, "audit log intact: 5 lines\n")


def test_edited_field_is_found(state: Path, verify: Verify) -> None:
    path = write_log(state)
    content = lines(path)
    record = json.loads(content[2])
    record["status"] = 304
    content[2] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(content))
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl", 3)


def test_deleted_line_is_found(state: Path, verify: Verify) -> None:
    path = write_log(state)
    content = lines(path)
    del content[1]
    path.write_text("".join(content))
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl", 2)


def test_swapped_lines_are_found(state: Path, verify: Verify) -> None:
    path = write_log(state)
    content = lines(path)
    content[2], content[3] = content[3], content[2]
    path.write_text("".join(content))
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl", 3)


def _forged(prev: str, seq: int, fix_hash: bool) -> str:
    record = {"seq": seq, "ts": "2026-01-01T00:00:00.000Z", "event": "key.replaced", "prev": prev}
    record["hash"] = chain_hash(prev, record) if fix_hash else "f" * 64
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


@pytest.mark.parametrize(
    "forge",
    [
        lambda last: _forged("0" * 64, last["seq"] + 1, fix_hash=True),
        lambda last: _forged(last["hash"], last["seq"] + 1, fix_hash=False),
        lambda last: _forged(last["hash"], last["seq"] + 2, fix_hash=True),
    ],
    ids=["wrong-prev", "wrong-hash", "skipped-seq"],
)
def test_appended_forged_line_is_found(
    state: Path, verify: Verify, forge: Callable[[dict[str, object]], str]
) -> None:
    path = write_log(state)
    last = json.loads(lines(path)[-1])
    with path.open("a") as fh:
        fh.write(forge(last))
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl", 6)


def test_truncated_last_line_is_found(state: Path, verify: Verify) -> None:
    path = write_log(state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl", 5)


def test_rotation_keeps_the_chain(state: Path, verify: Verify) -> None:
    log = AuditLog(state / "audit.jsonl")
    log.emit("tor.state", state="ready")
    log.rotate()
    log.emit("key.registered", address="bob@example.org")
    log.rotate()
    log.emit("socket.refused", uid=1001)
    log.close()
    assert verify() == (0, "audit log intact: 3 lines\n")
    # the chain spans files: an edit in the oldest rotated file is still caught
    first = state / "audit.jsonl.1"
    first.write_text(first.read_text().replace("ready", "off"))
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl.1", 1)


def test_removed_rotated_file_breaks_the_chain(state: Path, verify: Verify) -> None:
    log = AuditLog(state / "audit.jsonl")
    log.emit("tor.state", state="ready")
    log.rotate()
    log.emit("key.registered", address="bob@example.org")
    log.close()
    (state / "audit.jsonl.1").unlink()
    code, out = verify()
    assert code == 1
    assert broken_at(out) == ("audit.jsonl", 1)


def test_json_verdict(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_log(state, count=2)
    path.write_text(lines(path)[1])
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--json", "--config", str(config)]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict == {"ok": False, "lines": 1, "file": str(path), "line": 1,
                       "reason": verdict["reason"]}  # fmt: skip
    assert verdict["reason"]


def test_audit_verify_needs_no_daemon(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The socket path points nowhere, yet audit verify answers."""
    write_log(state, count=1)
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state}"\nsocket = "{tmp_path}/none/socket"\n')
    capsys.readouterr()
    assert cli.main(["--config", str(config), "audit", "verify"]) == 0
    assert capsys.readouterr().out == "audit log intact: 1 lines\n"
