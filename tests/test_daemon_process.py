"""`refreshd run` as a real process: every socket method of SPEC section 4 over the real socket,
bad input while a good client is served, clean SIGTERM, bad config."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.packets import armor
from tests.daemon_proc import REFRESHD, Daemon, RpcFailed, write_config
from tests.keyfactory import Workshop, pgpy_key

BOB = "bob@example.org"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    ws = Workshop(tmp_path_factory.mktemp("k"))
    try:
        a = ws.gpg.generate(f"Bob <{BOB}>", expire="1y")
        return {
            "a": armor(ws.gpg.export(a)),
            "a_fpr": a,
            "p": armor(pgpy_key(f"P <{BOB}>", expires=timedelta(days=400))),
        }
    finally:
        ws.close()


def test_every_method_over_the_socket(daemon, keys):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700
    status = daemon.call("status")
    assert status["tor"]["mode"] == "system"
    assert status["tor"]["state"] in ("starting", "unavailable")
    assert status["keys"] == 0 and status["addresses"] == 0 and status["own"] == []

    unknown = daemon.call("lookup", address=BOB, discover=False)
    assert unknown["state"] == "unknown" and unknown["fingerprint"] is None

    obs = daemon.call("observe", address=BOB, key=keys["a"], origin="autocrypt", dkim="none")
    assert obs["decision"] == "registered" and obs["validation"] == "weak-chain"
    assert obs["fingerprint"] == keys["a_fpr"] and "rule 1" in obs["reason"]

    found = daemon.call("lookup", address="bob@EXAMPLE.org", armor=True)
    assert found["address"] == BOB and found["state"] == "registered"
    assert found["usable"] and found["encrypt"] and not found["revoked"]
    assert found["source"] == "autocrypt" and found["expires"] is not None
    assert read_key(found["key"].encode(), datetime.now(UTC)).fingerprint == keys["a_fpr"]

    other = daemon.call("observe", address=BOB, key=keys["p"], origin="attachment")
    assert other["decision"] == "rejected" and "rules 3.1-3.5" in other["reason"]
    p_fpr = other["fingerprint"]

    assert daemon.call("used", address=BOB, fingerprint=keys["a_fpr"], event="sent-encrypted") == {
        "successfully_used": False
    }
    assert daemon.call("used", address=BOB, fingerprint=keys["a_fpr"], event="received-signed") == {
        "successfully_used": True
    }

    ver = daemon.call("verify", address=BOB, fingerprint=p_fpr)
    assert ver["decision"] == "replaced" and ver["validation"] == "fingerprint"

    hist = daemon.call("history", address=BOB)
    statuses = {k["fingerprint"]: k["status"] for k in hist["keys"]}
    assert statuses == {keys["a_fpr"]: "retired", p_fpr: "registered"}
    assert {
        "fingerprint",
        "validation",
        "status",
        "first_seen",
        "last_seen",
        "source",
        "reason",
    } <= set(hist["keys"][0]) | {"validation"}

    scheduled = daemon.call("refresh", address=BOB)
    assert scheduled["scheduled_at"] and scheduled["fingerprint"] == p_fpr
    by_fpr = daemon.call("refresh", fingerprint=p_fpr)
    assert by_fpr["scheduled_at"] == scheduled["scheduled_at"]  # already queued: same moment
    for retired in (keys["a_fpr"], "0" * 40):  # no longer registered; never seen
        with pytest.raises(RpcFailed) as refused:
            daemon.call("refresh", fingerprint=retired)
        assert refused.value.code == -32602 and "not a registered key" in refused.value.message

    pending = daemon.call("lookup", address="carol@example.net")
    assert pending["state"] == "pending"

    own = daemon.call("own_generate", address="alice@example.net", name="Alice")
    assert own["address"] == "alice@example.net" and own["expires"]
    assert own["next_extension_at"] and "last_upload" in own
    assert [k["fingerprint"] for k in daemon.call("own")] == [own["fingerprint"]]
    with pytest.raises(RpcFailed) as bad:
        daemon.call("own_import", key="not a key")
    assert bad.value.code == -32602

    status = daemon.call("status")
    assert status["keys"] == 1 and status["addresses"] == 1
    assert status["own"][0]["fingerprint"] == own["fingerprint"]
    assert status["next_refresh_at"] is not None

    events = [e["event"] for e in daemon.audit()]
    for name in (
        "daemon.started",
        "key.registered",
        "key.rejected",
        "key.replaced",
        "own.generated",
    ):
        assert name in events


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"address": 5}, -32602),
        ({"address": "not an address"}, -32602),
        ({"address": BOB, "wait": "soon"}, -32602),
        ({"address": BOB, "bogus": 1}, -32602),
    ],
)
def test_bad_params(daemon, params, code):
    with pytest.raises(RpcFailed) as err:
        daemon.call("lookup", **params)
    assert err.value.code == code


def test_hostile_clients_do_not_stop_a_good_one(daemon, keys):
    stop = threading.Event()
    answered = []

    def good():
        while not stop.is_set():
            answered.append(daemon.call("status")["version"])
            time.sleep(0.02)

    t = threading.Thread(target=good)
    t.start()
    try:
        assert daemon.raw(b"{oops\n")["error"]["code"] == -32700
        assert daemon.raw(b"[1]\n")["error"]["code"] == -32600
        assert daemon.raw(b'{"jsonrpc":"2.0","id":1,"method":"nope"}\n')["error"]["code"] == -32601
        held = []
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(daemon.socket))
            s.sendall(b'{"jsonrpc":')
            held.append(s)
        big = socket.socket(socket.AF_UNIX)
        big.connect(str(daemon.socket))
        with contextlib.suppress(OSError):  # refused and closed before we finished: fine
            big.sendall(b"a" * (2 << 20))
        big.close()
        obs = daemon.call(
            "observe",
            address=BOB,
            key="-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
            "\n!!!garbage!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
            origin="autocrypt",
        )
        assert obs["decision"] == "rejected"
        # 200 stalled connections are still open: the good client is still answered
        assert [daemon.call("status")["keys"] for _ in range(10)] == [0] * 10
        for s in held:
            s.close()
    finally:
        stop.set()
        t.join()
    assert answered and all(v == answered[0] for v in answered)
    assert daemon.call("status")["keys"] == 0


def test_sigterm_stops_quickly_and_removes_the_socket(tmp_path):
    d = Daemon(write_config(tmp_path, {}))
    assert d.socket.exists()
    took = d.stop()
    # quickly: without waiting out a network timeout (30 s) or systemd's stop timeout (90 s);
    # the margin is for a loaded machine, not a speed target (those are in bench/)
    assert took < 15.0, took
    assert d.proc.returncode == 0
    assert not d.socket.exists()
    result = d.cli("status")
    assert result.returncode == 3 and "not running" in result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path):
    def start() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*REFRESHD, "--config", str(cfg), "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )

    cfg = write_config(tmp_path, {"refresh": {"period": "7x"}})
    done = start()
    assert done.returncode == 2 and "refresh.period" in done.stderr
    cfg.write_text(cfg.read_text() + "\n[tor]\nbogus = 1\n")
    done = start()
    assert done.returncode == 2


def test_restart_keeps_state(tmp_path, keys):
    config = write_config(tmp_path, {})
    d = Daemon(config)
    d.call("observe", address=BOB, key=keys["a"], origin="autocrypt")
    d.stop()
    d = Daemon(config)
    try:
        assert d.call("lookup", address=BOB, discover=False)["fingerprint"] == keys["a_fpr"]
    finally:
        d.stop()
    assert d.cli("audit", "verify").returncode == 0


def test_no_config_and_no_tor_still_serves_the_socket(tmp_path):
    """The README's first command: embedded defaults, no Tor anywhere (here: no tor binary on
    PATH and no system Tor), and the daemon still starts, serves the socket and says so."""
    home = tmp_path / "home"
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PATH": str(tmp_path / "empty-bin"),
        "PYTHONPATH": os.getcwd(),
    }
    (tmp_path / "run").mkdir(mode=0o700)
    proc = subprocess.Popen(
        [*REFRESHD, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    socket_path = tmp_path / "run" / "refreshd" / "socket"
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            done = subprocess.run(
                [*REFRESHD, "status", "--json"], env=env, capture_output=True, text=True, timeout=30
            )
            if done.returncode == 0:
                status = json.loads(done.stdout)
                if status["tor"]["state"] == "unavailable":
                    break
            time.sleep(0.2)
        assert status is not None, "the socket was never served"
        assert status["tor"]["mode"] == "auto" and status["tor"]["state"] == "unavailable"
        assert status["tor"]["detail"]
        assert (home / ".local" / "state" / "refreshd" / "refreshd.sqlite3").exists()
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    finally:
        proc.terminate()
        proc.wait(10)
    assert not socket_path.exists()


def test_locked_own_key_is_reported_and_nothing_else_breaks(tmp_path, keys):
    """Issue 6: a protected own key due for extension, without (or with a wrong) passphrase:
    nothing is written, status says why, lookups keep working."""
    ws = Workshop()  # a short home: gpg-agent's socket path must fit
    try:
        past = datetime.now(UTC) - timedelta(days=170)
        g = ws.gpg
        fpr = g._created(
            "--passphrase",
            "right horse",
            "--quick-gen-key",
            "<me@example.net>",
            "ed25519",
            "default",
            "180d",
            at=past,
        )
        armored = g.run("--passphrase", "right horse", "--armor", "--export-secret-keys", fpr)
    finally:
        ws.close()
    d = Daemon(write_config(tmp_path, {}))
    try:
        own = d.call("own_import", key=armored.decode(), passphrase="wrong")
        assert own["fingerprint"] == fpr and "locked" in own["problem"]
        key_file = tmp_path / "state" / "own-key.asc"
        assert key_file.read_bytes() == armored  # nothing rewritten
        assert "own key locked: cannot extend" in d.call("status")["own"][0]["problem"]
        d.call("observe", address=BOB, key=keys["a"], origin="autocrypt")
        assert d.call("lookup", address=BOB, discover=False)["state"] == "registered"
        assert "own.extended" not in [e["event"] for e in d.audit()]
    finally:
        d.stop()
    # with the right passphrase from own.passphrase_file, the next start extends it
    secret = tmp_path / "pass"
    secret.write_text("right horse\n")
    d = Daemon(write_config(tmp_path, {"own": {"passphrase_file": str(secret), "upload": []}}))
    try:
        # the start-up policy check runs beside the socket, right after READY
        deadline = time.monotonic() + 60
        while "own.extended" not in [e["event"] for e in d.audit()]:
            assert time.monotonic() < deadline, "the key was not extended at start"
            time.sleep(0.1)
        own = d.call("own")[0]
        assert own["problem"] is None
        assert datetime.fromisoformat(own["expires"]) > datetime.now(UTC) + timedelta(days=90)
    finally:
        d.stop()


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs systemd")
def test_socket_activation_serves_the_inherited_socket(tmp_path):
    """systemd's own socket activator holds the socket; the first client starts the daemon,
    which serves that very socket and leaves the file to its owner when it stops."""
    config = write_config(tmp_path, {})  # its own socket path is elsewhere: only the
    path = tmp_path / "activation" / "socket"  # inherited socket can answer here
    path.parent.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(path),
            "-E",
            f"PYTHONPATH={os.getcwd()}",
            *REFRESHD,
            "--config",
            str(config),
            "run",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))  # this connection starts the daemon
            s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
            reply = b""
            while not reply.endswith(b"\n"):
                reply += s.recv(65536)
        assert json.loads(reply)["result"]["version"]
        events = (tmp_path / "state" / "audit.jsonl").read_text()
        assert '"daemon.started"' in events
        assert not (tmp_path / "run" / "socket").exists()
    finally:
        proc.terminate()
        proc.wait(10)
