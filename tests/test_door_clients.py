"""The keyserver door (SPEC 11) with real clients against a real `refreshd run`: gpg 2.2's
dirmngr (`--recv-keys`, `--locate-external-keys`, `--refresh-keys`) and sq 0.27
(`sq keyserver get`) import exactly refreshd's registered key; rejected keys are never served,
retired ones only by fingerprint; other users are refused and audited; off unless configured.

Tor points nowhere here, so an unknown address is not discovered (tests/test_door_tor.py does
that over the private Tor network)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refreshd.openpgp.packets import armor
from tests.daemon_proc import Daemon, free_port, write_config
from tests.keyfactory import Workshop

BOB = "bob@example.org"

pytestmark = pytest.mark.skipif(
    not (shutil.which("gpg") and shutil.which("sq")), reason="needs gpg and sq"
)


class Client:
    """A mail user's GnuPG home pointed at the door the way the README says."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        # dirmngr 2.2 reaches 127.x keyservers only with its own resolver off
        (home / "dirmngr.conf").write_text(f"standard-resolver\nkeyserver hkp://127.0.0.1:{port}\n")
        self.port = port

    def gpg(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", *args],
            input=data.decode() if data else None, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def keys(self) -> dict[str, str]:
        """fingerprint -> expiry (field 7 of the pub line) of every key in the keyring."""
        out = self.gpg("--with-colons", "--list-keys").stdout.splitlines()
        found: dict[str, str] = {}
        for i, line in enumerate(out):
            if line.startswith("pub:"):
                fpr = next(x for x in out[i:] if x.startswith("fpr:")).split(":")[9]
                found[fpr] = line.split(":")[6]
        return found

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)


def sq_get(port: int, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sq", "keyserver", "--policy", "insecure", "--server", f"hkp://127.0.0.1:{port}",
         "get", query],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def sq_fingerprints(armored: str) -> list[str]:
    out = subprocess.run(
        ["sq", "inspect"], input=armored, capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[-1] for line in out.splitlines() if "Fingerprint:" in line][:1]


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, bytes | str]:
    ws = Workshop(tmp_path_factory.mktemp("k"))
    try:
        g = ws.gpg
        a = g.generate(f"Bob <{BOB}>", expire="1y")
        a_old = g.export(a)
        g.set_expire(a, "2y")
        b = g.generate(f"Bob two <{BOB}>", expire="1y")
        c = g.generate("Carol <carol@example.net>", expire="1y")
        g.certify(c, b, f"Bob two <{BOB}>")  # a third-party certification refreshd drops
        return {"a": a, "a_old": a_old, "a_new": g.export(a), "b": b, "b_key": g.export(b),
                "c": c}  # fmt: skip
    finally:
        ws.close()


def start_with_door(root: Path) -> tuple[Daemon, int]:
    """A daemon whose door is listening. free_port's port can be taken by another process
    before the daemon binds it (the daemon then audits door.failed and serves only its
    socket): start again on another port rather than test a door that is not there."""
    for attempt in range(3):
        port, home = free_port(), root / f"daemon-{attempt}"
        home.mkdir()
        d = Daemon(write_config(home, {"serve": {"keyserver": f"127.0.0.1:{port}"}}))
        if not any(line["event"] == "door.failed" for line in d.audit()):
            return d, port
        d.stop()
    raise RuntimeError("the door could not bind a free port three times")


@pytest.fixture
def door(tmp_path: Path):
    d, port = start_with_door(tmp_path)
    client = Client(tmp_path / "client", port)
    try:
        yield d, client
    finally:
        client.close()
        d.stop()


def test_gpg_and_sq_get_exactly_the_registered_key(door, keys) -> None:
    d, client = door
    d.call("observe", address=BOB, key=armor(keys["a_new"]), origin="autocrypt")
    d.call("observe", address=BOB, key=armor(keys["b_key"]), origin="attachment")  # rejected

    got = client.gpg("--recv-keys", keys["a"])
    assert got.returncode == 0, got.stderr
    assert client.keys() == {keys["a"]: client.keys()[keys["a"]]}

    by_fpr, by_address = sq_get(client.port, keys["a"]), sq_get(client.port, BOB)
    assert by_fpr.returncode == 0 and by_address.returncode == 0, by_address.stderr
    assert sq_fingerprints(by_fpr.stdout) == sq_fingerprints(by_address.stdout) == [keys["a"]]


def test_locate_external_keys_by_address(door, keys) -> None:
    d, client = door
    d.call("observe", address=BOB, key=armor(keys["a_new"]), origin="autocrypt")
    got = client.gpg("--auto-key-locate", "clear,keyserver", "--locate-external-keys", BOB)
    assert got.returncode == 0, got.stderr
    assert set(client.keys()) == {keys["a"]}


def test_refresh_keys_brings_refreshd_s_copy(door, keys) -> None:
    d, client = door
    client.gpg("--import", data=armor(keys["a_old"]).encode())
    old_expiry = client.keys()[keys["a"]]
    d.call("observe", address=BOB, key=armor(keys["a_old"]), origin="autocrypt")
    d.call("observe", address=BOB, key=armor(keys["a_new"]), origin="autocrypt")  # merged
    got = client.gpg("--refresh-keys")
    assert got.returncode == 0, got.stderr
    new_expiry = client.keys()[keys["a"]]
    assert int(new_expiry) > int(old_expiry) + 300 * 86400  # refreshd's copy: two years


def test_rejected_never_retired_only_by_fingerprint(door, keys) -> None:
    d, client = door
    d.call("observe", address=BOB, key=armor(keys["a_new"]), origin="autocrypt")
    d.call("observe", address=BOB, key=armor(keys["b_key"]), origin="attachment")
    assert http(client.port, f"/vks/v1/by-fingerprint/{keys['b']}")[0] == 404  # rejected
    assert client.gpg("--recv-keys", keys["b"]).returncode != 0
    assert client.keys() == {}

    d.call("verify", address=BOB, fingerprint=keys["b"])  # rule 3.2: B replaces A, A retired
    assert sq_fingerprints(sq_get(client.port, BOB).stdout) == [keys["b"]]
    status, body = http(client.port, f"/pks/lookup?op=get&search=0x{keys['a']}")
    assert status == 200 and sq_fingerprints(body) == [keys["a"]]
    assert client.gpg("--recv-keys", keys["a"]).returncode == 0  # old signatures still verify
    index = http(client.port, f"/pks/lookup?op=index&options=mr&search={BOB}")[1]
    assert f"pub:{keys['b']}:" in index and keys["a"] not in index


def signers(listing: str) -> set[str]:
    """Key ids of every signature in a `gpg --with-colons --list-sigs` listing."""
    return {line.split(":")[4] for line in listing.splitlines() if line.startswith("sig:")}


def test_served_bytes_carry_no_dropped_certification(door, keys) -> None:
    d, client = door
    carol = keys["c"][-16:]
    d.call("observe", address=BOB, key=armor(keys["b_key"]), origin="autocrypt")
    assert client.gpg("--recv-keys", keys["b"]).returncode == 0
    listing = client.gpg("--with-colons", "--list-sigs", keys["b"]).stdout
    assert signers(listing) == {keys["b"][-16:]}  # self-signatures only
    # the key as observed did carry Carol's certification
    client.gpg("--import", data=armor(keys["b_key"]).encode())
    listing = client.gpg("--with-colons", "--list-sigs", keys["b"]).stdout
    assert carol in signers(listing)


def test_uploads_unknown_addresses_and_garbage(door, keys) -> None:
    d, client = door
    assert http(client.port, "/pks/add", "POST")[0] == 403
    status, body = http(client.port, "/pks/lookup?op=get&search=nobody%40example.org")
    assert status == 404 and "nobody@example.org" in body
    assert http(client.port, "/pks/lookup?op=stats")[0] == 501
    with socket.create_connection(("127.0.0.1", client.port), timeout=30) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00" + os.urandom(300) + b"\r\n\r\n")
        assert raw.recv(64).startswith(b"HTTP/1.1 400")
    assert d.call("status")["keys"] == 0  # still serving


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_another_user_is_refused_and_audited(door) -> None:
    d, client = door
    probe = (
        f"import socket; s = socket.create_connection(('127.0.0.1', {client.port}), timeout=30); "
        "s.sendall(b'GET /pks/lookup?op=index&search=bob@example.org HTTP/1.0\\r\\n\\r\\n'); "
        "import sys\n"
        "try: sys.exit(7 if s.recv(100) else 0)\n"
        "except ConnectionResetError: pass"
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for _ in range(3):
        out = subprocess.run(
            [*nobody, "/usr/bin/python3", "-c", probe],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out  # closed (or reset) without a byte of answer
    refused = [e for e in d.audit() if e["event"] == "socket.refused"]
    assert len(refused) == 1 and refused[0]["peer_uid"] == 65534  # rate limited: one line
    assert http(client.port, "/pks/add", "POST")[0] == 403  # the user still gets in


def test_the_door_is_off_unless_configured(tmp_path: Path) -> None:
    port = free_port()
    d = Daemon(write_config(tmp_path, {}))
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert d.call("status")["version"]
    finally:
        d.stop()


def test_a_door_address_in_use_is_audited_and_the_socket_serves(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        d = Daemon(write_config(tmp_path, {"serve": {"keyserver": f"127.0.0.1:{port}"}}))
        try:
            assert d.call("status")["version"]
            failed = [e for e in d.audit() if e["event"] == "door.failed"]
            assert failed and failed[0]["address"] == f"127.0.0.1:{port}"
        finally:
            d.stop()


def test_an_expired_registered_key_is_served_by_fingerprint_only(door) -> None:
    d, client = door
    ws = Workshop()
    try:
        fpr = ws.gpg.generate(f"Short <{BOB}>", expire="seconds=20")
        key = armor(ws.gpg.export(fpr))
    finally:
        ws.close()
    assert d.call("observe", address=BOB, key=key, origin="autocrypt")["decision"] == "registered"
    assert http(client.port, f"/vks/v1/by-email/{BOB}")[0] == 200
    expires = datetime.fromisoformat(d.call("lookup", address=BOB, discover=False)["expires"])
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.5)
    assert d.call("lookup", address=BOB, discover=False)["usable"] is False
    status, body = http(client.port, f"/vks/v1/by-email/{BOB}")
    assert status == 404 and "not usable" in body
    assert http(client.port, f"/vks/v1/by-fingerprint/{fpr}")[0] == 200
