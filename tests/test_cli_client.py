"""The command line against a small JSON-RPC server on a real Unix socket.

The server answers canned results in SPEC section 4 shape and records every request, so these
tests pin what the CLI sends (method, params) and how it prints and exits. The real server has
its own tests.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pgpy
import pytest
from pgpy.constants import EllipticCurveOID, HashAlgorithm, KeyFlags, PubKeyAlgorithm

from refreshd import cli

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
OTHER = "89ABCDEF0123456789ABCDEF0123456789ABCDEF"
LOOKUP = {
    "address": "bob@example.org",
    "state": "registered",
    "fingerprint": FPR,
    "validation": "provider-trust",
    "usable": True,
    "encrypt": True,
    "expires": "2027-05-01T00:00:00Z",
    "revoked": False,
    "source": "wkd",
    "reason": "Found in the Web Key Directory of example.org over authenticated HTTPS.",
}
DECISION = {
    "decision": "registered",
    "fingerprint": FPR,
    "validation": "weak-chain",
    "reason": "First key seen for this address (rule 5.2.1).",
}
OWN = {
    "fingerprint": FPR,
    "address": "me@example.org",
    "expires": "2026-11-01T00:00:00Z",
    "next_extension_at": "2026-09-03T10:00:00Z",
    "last_upload": None,
}
HISTORY = {
    "keys": [
        {
            "fingerprint": FPR,
            "validation": "provider-trust",
            "status": "registered",
            "first_seen": "2026-01-02T03:04:05Z",
            "last_seen": "2026-03-01T00:00:00Z",
            "source": "wkd",
            "reason": "Registered at first contact.",
        },
        {
            "fingerprint": OTHER,
            "validation": "weak-chain",
            "status": "rejected",
            "first_seen": "2026-02-01T00:00:00Z",
            "last_seen": "2026-02-01T00:00:00Z",
            "source": "hkp",
            "reason": "Rule 5.2.3: the registered key was used successfully.",
        },
    ]
}
STATUS = {
    "version": "0.1.0",
    "tor": {"mode": "auto", "state": "ready", "detail": "system Tor at 127.0.0.1:9050"},
    "keys": 12,
    "addresses": 10,
    "next_refresh_at": "2026-05-01T12:30:00Z",
    "own": [OWN],
}
ARMORED = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


@dataclass
class FakeDaemon:
    """Serves one JSON-RPC line per connection from `answers` (method -> response body)."""

    socket_path: Path
    config_path: Path
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_reply: bytes | None = None

    def serve(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
                self.requests.append(request)
                if self.raw_reply is not None:
                    conn.sendall(self.raw_reply)
                    continue
                body = self.answers.get(request["method"])
                if body is None:
                    body = {"error": {"code": -32601, "message": "Method not found"}}
                reply = {"jsonrpc": "2.0", "id": request["id"], **body}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def answer(self, method: str, result: Any) -> None:
        self.answers[method] = {"result": result}

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def write_config(directory: Path, socket_path: Path) -> Path:
    path = directory / "config.toml"
    path.write_text(f'[daemon]\nsocket = "{socket_path}"\nstate_dir = "{directory / "state"}"\n')
    return path


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(short_dir / "sock", write_config(short_dir, short_dir / "sock"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(fake.socket_path))
    listener.listen()
    listener.settimeout(0.05)
    stop = threading.Event()
    thread = threading.Thread(target=fake.serve, args=(listener, stop), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        stop.set()
        thread.join()
        listener.close()


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli.main([*argv, "--config", str(daemon.config_path)])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


# --- what is sent ---


@pytest.mark.parametrize(
    ("argv", "method", "params"),
    [
        (
            ["lookup", "bob@example.org"],
            "lookup",
            {"address": "bob@example.org", "discover": True, "wait": 0, "armor": False},
        ),
        (
            ["lookup", "bob@example.org", "--no-discover", "--wait", "2.5", "--armor"],
            "lookup",
            {"address": "bob@example.org", "discover": False, "wait": 2.5, "armor": True},
        ),
        (
            ["lookup", "bob@example.org", "--wait", "30"],
            "lookup",
            {"address": "bob@example.org", "discover": True, "wait": 30, "armor": False},
        ),
        (
            ["used", "bob@example.org", FPR.lower(), "sent"],
            "used",
            {"address": "bob@example.org", "fingerprint": FPR, "event": "sent-encrypted"},
        ),
        (
            ["used", "bob@example.org", " ".join(FPR[i : i + 4] for i in range(0, 40, 4)),
             "received"],
            "used",
            {"address": "bob@example.org", "fingerprint": FPR, "event": "received-signed"},
        ),
        (
            ["verify", "bob@example.org", "0x" + FPR],
            "verify",
            {"address": "bob@example.org", "fingerprint": FPR},
        ),
        (["history", "bob@example.org"], "history", {"address": "bob@example.org"}),
        (["refresh", "bob@example.org"], "refresh", {"address": "bob@example.org"}),
        (["refresh", FPR.lower()], "refresh", {"fingerprint": FPR}),
        (["import-gnupg"], "import_gnupg", {}),
        (["import-gnupg", "--homedir", "/tmp/gh"], "import_gnupg", {"homedir": "/tmp/gh"}),
        (["own", "generate", "me@example.org"], "own_generate", {"address": "me@example.org"}),
        (
            ["own", "generate", "me@example.org", "--name", "Me Myself"],
            "own_generate",
            {"address": "me@example.org", "name": "Me Myself"},
        ),
        (["own", "status"], "own", {}),
        (["status"], "status", {}),
    ],
)  # fmt: skip
def test_each_command_sends_its_method_and_params(
    run: Run, daemon: FakeDaemon, argv: list[str], method: str, params: dict[str, Any]
) -> None:
    daemon.answer(method, {})
    run(*argv)
    assert daemon.last == {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def test_observe_sends_the_armored_key_file(run: Run, daemon: FakeDaemon, tmp_path: Path) -> None:
    key = tmp_path / "bob.asc"
    key.write_text(ARMORED)
    daemon.answer("observe", DECISION)
    code, out, _ = run(
        "observe", "bob@example.org", "--key", str(key), "--origin", "autocrypt",
        "--dkim", "pass", "--url", "https://example.org/k",
    )  # fmt: skip
    assert code == 0
    assert daemon.last["params"] == {
        "address": "bob@example.org",
        "key": ARMORED,
        "origin": "autocrypt",
        "dkim": "pass",
        "url": "https://example.org/k",
    }
    assert out == f"registered: {FPR} (weak-chain)\n  why: {DECISION['reason']}\n"


def test_own_import_sends_key_and_first_line_of_the_passphrase_file(
    run: Run, daemon: FakeDaemon, tmp_path: Path
) -> None:
    (tmp_path / "secret.asc").write_text(ARMORED)
    (tmp_path / "pass").write_text("correct horse\nignored second line\n")
    daemon.answer("own_import", OWN)
    code, out, _ = run(
        "own", "import", str(tmp_path / "secret.asc"), "--passphrase-file", str(tmp_path / "pass")
    )
    assert code == 0
    assert daemon.last["params"] == {"key": ARMORED, "passphrase": "correct horse"}
    assert out.startswith(f"{FPR} <me@example.org> expires 2026-11-01")


def test_binary_public_key_is_sent_armored(run: Run, daemon: FakeDaemon, tmp_path: Path) -> None:
    key = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
    key.add_uid(pgpy.PGPUID.new("Bob", email="bob@example.org"), usage={KeyFlags.Sign},
                hashes=[HashAlgorithm.SHA256])  # fmt: skip
    binary = bytes(key.pubkey)
    (tmp_path / "bob.gpg").write_bytes(binary)
    daemon.answer("observe", DECISION)
    code, _, _ = run("observe", "bob@example.org", "--key", str(tmp_path / "bob.gpg"),
                     "--origin", "attachment")  # fmt: skip
    assert code == 0
    sent = daemon.last["params"]["key"]
    assert sent.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    (tmp_path / "gnupg").mkdir(mode=0o700)
    dearmored = subprocess.run(
        ["gpg", "--homedir", str(tmp_path / "gnupg"), "--dearmor"],
        input=sent.encode(), capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert dearmored == binary


def test_binary_secret_or_missing_key_file_is_a_usage_error(
    run: Run, daemon: FakeDaemon, tmp_path: Path
) -> None:
    (tmp_path / "secret.gpg").write_bytes(b"\x95\x01\x0d\x04" + bytes(range(40)))
    code, _, err = run("own", "import", str(tmp_path / "secret.gpg"))
    assert code == 2
    assert "--export-secret-keys" in err
    code, _, err = run("own", "import", str(tmp_path / "absent.asc"))
    assert code == 2
    assert "absent.asc" in err
    code, _, err = run("observe", "a@example.org", "--key", str(tmp_path / "absent.asc"),
                       "--origin", "attachment")  # fmt: skip
    assert code == 2
    assert daemon.requests == []


# --- what is printed, and exit codes ---


def test_lookup_human_output(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("lookup", LOOKUP)
    code, out, _ = run("lookup", "bob@example.org")
    assert code == 0
    assert out == (
        f"bob@example.org: {FPR} (provider-trust, from wkd) usable, encrypt: yes, "
        f"expires 2027-05-01\n  why: {LOOKUP['reason']}\n"
    )


def test_json_prints_the_raw_result_including_unknown_fields(run: Run, daemon: FakeDaemon) -> None:
    result = LOOKUP | {"key": ARMORED, "extra": {"nested": [1, 2]}}
    daemon.answer("lookup", result)
    code, out, _ = run("lookup", "bob@example.org", "--armor", "--json")
    assert code == 0
    assert json.loads(out) == result


def test_lookup_armor_prints_the_key_after_the_decision(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("lookup", LOOKUP | {"key": ARMORED})
    _, out, _ = run("lookup", "bob@example.org", "--armor")
    assert out.endswith("\n" + ARMORED)


@pytest.mark.parametrize(
    ("result", "shown"),
    [
        ({"address": "x@example.org", "state": "unknown", "fingerprint": None,
          "usable": False, "reason": "No source had a key."}, "x@example.org: no key (unknown)"),
        ({"address": "x@example.org", "state": "pending", "fingerprint": None, "usable": False},
         "x@example.org: no key yet, discovery is running"),
        (LOOKUP | {"usable": False, "encrypt": False, "revoked": True}, "revoked, encrypt: no"),
        (LOOKUP | {"usable": False, "encrypt": False, "expires": "2020-01-01T00:00:00Z"},
         "not usable, encrypt: no, expires 2020-01-01"),
    ],
)  # fmt: skip
def test_lookup_without_a_usable_key_exits_1(
    run: Run, daemon: FakeDaemon, result: dict[str, Any], shown: str
) -> None:
    daemon.answer("lookup", result)
    code, out, _ = run("lookup", "x@example.org")
    assert code == 1
    assert shown in out
    assert (json.loads(run("lookup", "x@example.org", "--json")[1]), code) == (result, 1)


def test_lookup_of_a_key_without_expiry(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("lookup", LOOKUP | {"expires": None, "encrypt": False})
    code, out, _ = run("lookup", "bob@example.org")
    assert code == 0
    assert "usable, encrypt: no, does not expire\n" in out


def test_rejected_observation_exits_1(run: Run, daemon: FakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "k.asc").write_text(ARMORED)
    rejected = DECISION | {"decision": "rejected", "reason": "Rule 5.2.3: no transition."}
    daemon.answer("observe", rejected)
    code, out, _ = run("observe", "bob@example.org", "--key", str(tmp_path / "k.asc"),
                       "--origin", "signature")  # fmt: skip
    assert code == 1
    assert out.startswith(f"rejected: {FPR} (weak-chain)\n  why: Rule 5.2.3")
    daemon.answer("verify", rejected)
    assert run("verify", "bob@example.org", FPR)[0] == 1


def test_history_is_a_table_with_reasons(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("history", HISTORY)
    code, out, _ = run("history", "bob@example.org")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STATUS", "VALIDATION", "FINGERPRINT", "FIRST", "SEEN", "LAST",
                                "SEEN", "SOURCE"]  # fmt: skip
    assert lines[1].split() == ["registered", "provider-trust", FPR, "2026-01-02", "03:04", "UTC",
                                "2026-03-01", "00:00", "UTC", "wkd"]  # fmt: skip
    assert lines[2] == "  why: Registered at first contact."
    assert lines[3].split()[:3] == ["rejected", "weak-chain", OTHER]
    assert lines[4].startswith("  why: Rule 5.2.3")
    assert lines[1].index(FPR) == lines[3].index(OTHER) == lines[0].index("FINGERPRINT")


def test_history_lists_every_decision_after_the_keys(run: Run, daemon: FakeDaemon) -> None:
    decisions = [
        {"ts": "2026-01-02T03:04:05Z", "fingerprint": FPR, "decision": "registered",
         "level": "provider-trust", "source": "wkd", "rule": "5.2.1", "reason": "First contact."},
        {"ts": "2026-02-01T00:00:00Z", "fingerprint": OTHER, "decision": "rejected",
         "level": "weak-chain", "source": "hkp", "rule": "5.2.3", "reason": "No transition."},
    ]  # fmt: skip
    daemon.answer("history", HISTORY | {"decisions": decisions})
    code, out, _ = run("history", "bob@example.org")
    assert code == 0
    lines = out.splitlines()
    tail = lines[lines.index("decisions, oldest first:") + 1 :]
    assert tail[0].split() == ["WHEN", "DECISION", "FINGERPRINT", "LEVEL", "SOURCE", "RULE"]
    assert tail[1].split() == ["2026-01-02", "03:04", "UTC", "registered", FPR, "provider-trust",
                               "wkd", "5.2.1"]  # fmt: skip
    assert tail[2:] == [
        "  why: First contact.",
        tail[3],
        "  why: No transition.",
    ]
    assert tail[3].split()[3:5] == ["rejected", OTHER]


def test_history_of_an_unknown_address(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("history", {"keys": []})
    assert run("history", "nobody@example.org")[:2] == (0, "no key seen for this address\n")


def test_status_names_daemon_tor_counts_refresh_and_own_keys(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("status", STATUS | {"own_key_locked": True})
    code, out, _ = run("status")
    assert code == 0
    assert out.splitlines() == [
        "daemon: running (refreshd 0.1.0)",
        "tor: ready (mode auto): system Tor at 127.0.0.1:9050",
        "keys: 12 for 10 addresses",
        "next refresh: 2026-05-01 12:30 UTC",
        "own key locked: yes",
        "own keys:",
        f"  {FPR} <me@example.org> expires 2026-11-01, next extension 2026-09-03, "
        "last upload never",
    ]


def test_status_reports_refresh_progress_and_failures(run: Run, daemon: FakeDaemon) -> None:
    refresh = {
        "next_refresh_at": STATUS["next_refresh_at"],
        "cycle": 2,
        "position": 3,
        "keys_in_cycle": 12,
        "effective_period_seconds": 8 * 86400,
        "lengthened": True,
        "last": None,
        "failures_by_host": {"keys.example.net": 2},
    }
    daemon.answer("status", STATUS | {"refresh": refresh, "own": []})
    code, out, _ = run("status")
    assert code == 0
    assert out.splitlines()[4:] == [
        "refresh cycle 2: 3 of 12 keys done, a cycle takes 8 days "
        "(longer than refresh.period: minimum_lapse bounds the rate)",
        "refresh failures: keys.example.net 2",
        "own keys: none",
    ]


def test_own_status_without_a_key_says_how_to_make_one(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("own", [])
    code, out, _ = run("own", "status")
    assert code == 0
    assert "refreshd own generate" in out


def test_used_and_refresh_output(run: Run, daemon: FakeDaemon) -> None:
    daemon.answer("used", {"successfully_used": True})
    assert run("used", "bob@example.org", FPR, "received")[:2] == (
        0,
        "recorded; key successfully used: yes\n",
    )
    daemon.answer("refresh", {"scheduled_at": "2026-05-01T12:05:00+00:00"})
    assert run("refresh", "bob@example.org")[1] == "refresh scheduled at 2026-05-01 12:05 UTC\n"


def test_daemon_error_exits_1_with_its_message(run: Run, daemon: FakeDaemon) -> None:
    daemon.answers["lookup"] = {"error": {"code": -32602, "message": "address: not an address"}}
    code, out, err = run("lookup", "not-an-address")
    assert (code, out) == (1, "")
    assert "address: not an address (JSON-RPC error -32602)" in err


@pytest.mark.parametrize(
    "reply",
    [b"not json\n", b"[1, 2]\n", b'{"jsonrpc": "2.0", "id": 1}\n', b"", b'{"jsonrpc": "2.0"'],
)
def test_garbage_or_no_answer_exits_1(run: Run, daemon: FakeDaemon, reply: bytes) -> None:
    daemon.raw_reply = reply
    code, out, err = run("status")
    assert (code, out) == (1, "")
    assert err.startswith("refreshd: ")


def test_config_is_accepted_before_and_after_the_command(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.answer("own", [OWN])
    assert cli.main(["--config", str(daemon.config_path), "own", "status"]) == 0
    assert cli.main(["own", "status", "--config", str(daemon.config_path)]) == 0
    assert cli.main(["own", "--config", str(daemon.config_path), "status", "--json"]) == 0
    assert [r["method"] for r in daemon.requests] == ["own", "own", "own"]
    assert json.loads(capsys.readouterr().out.split("\n", 2)[2]) == [OWN]


# --- errors before any request ---


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["lookup"],
        ["lookup", "a@example.org", "--wait", "-1"],
        ["lookup", "a@example.org", "--wait", "soon"],
        ["observe", "a@example.org", "--key", "k.asc"],
        ["observe", "a@example.org", "--key", "k.asc", "--origin", "carrier-pigeon"],
        ["used", "a@example.org", FPR, "forwarded"],
        ["used", "a@example.org", "DEADBEEF", "sent"],
        ["verify", "a@example.org", "Z" * 40],
        ["refresh", "not-a-fingerprint"],
        ["own"],
        ["own", "delete"],
        ["audit"],
        ["run", "--json"],
    ],
)
def test_usage_errors_exit_2_without_contacting_the_daemon(
    run: Run, daemon: FakeDaemon, argv: list[str]
) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert err
    assert daemon.requests == []


def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[refresh]\nperiod = "7x"\n')
    assert cli.main(["status", "--config", str(bad)]) == 2
    assert "refresh.period" in capsys.readouterr().err


def test_missing_socket_exits_3_with_the_hint(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(short_dir, short_dir / "no-such-dir" / "socket")
    assert cli.main(["status", "--config", str(config)]) == 3
    assert capsys.readouterr().err == cli.NOT_RUNNING_HINT + "\n"


def test_stale_socket_file_exits_3(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A socket file left behind by a daemon that died: connection refused."""
    path = short_dir / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    config = write_config(short_dir, path)
    assert cli.main(["lookup", "bob@example.org", "--config", str(config)]) == 3
    assert "systemctl --user start refreshd" in capsys.readouterr().err


def test_controls_bidi_and_surrogates_from_the_daemon_are_shown_escaped(
    run: Run, daemon: FakeDaemon
) -> None:
    hostile = "\u202eevil\x1b[2J\x9b\ud800@example.org"
    daemon.answer("lookup", LOOKUP | {"address": hostile, "reason": "a\rb\u2028c"})
    code, out, _ = run("lookup", "bob@example.org")
    assert code == 0
    for raw in ("\u202e", "\x1b", "\x9b", "\ud800", "\r", "\u2028"):
        assert raw not in out
    assert "\\u202eevil\\x1b[2J\\x9b\\ud800@example.org" in out and "a\\x0db\\u2028c" in out
    code, out, _ = run("lookup", "bob@example.org", "--json")
    assert "\u202e" not in out and json.loads(out)["address"] == hostile
