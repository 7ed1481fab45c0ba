"""SKS 1.1.6 with a fresh, empty database on a loopback address, behind a counting tap.

Why: a real HKP keyserver (HTTP/1.0, no ETag/Last-Modified, merges uploads) is the peer
refreshd's HKP source and own-key upload meet in practice. Debian's sks resolves its config,
database, log and socket paths under `-basedir` (etc/sks, var/lib/sks, var/log/sks,
var/run/sks), so all of them are created there; gossip and mail sync are off.

`url` goes through the tap (accepts and bytes are counted); `direct_url` is SKS itself.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.world import procs
from tests.world.tap import Tap, TapCounts

SKS = "sks"
START_TIMEOUT = 15.0


class SksStartError(RuntimeError):
    """SKS did not answer in time; the message carries its log."""


class SksServer(procs.Service):
    """A running `sks db`; context manager, stopped by PID on exit."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address
        self.base_dir = Path()
        self.hkp_port = 0
        self._proc: procs.Proc | None = None
        self._tap: Tap | None = None

    @property
    def direct_url(self) -> str:
        return f"http://{self.address}:{self.hkp_port}"

    @property
    def url(self) -> str:
        """The counted endpoint ("http://ADDRESS:PORT"); give this one to clients."""
        if self._tap is None:
            raise RuntimeError("SKS is not started")
        return f"http://{self.address}:{self._tap.port}"

    @property
    def port(self) -> int:
        """The counted endpoint's port (for `hkp://ADDRESS:PORT` or a mapped test name)."""
        if self._tap is None:
            raise RuntimeError("SKS is not started")
        return self._tap.port

    def counts(self) -> TapCounts:
        """Connections accepted and bytes moved through `url` since start."""
        if self._tap is None:
            raise RuntimeError("SKS is not started")
        return self._tap.counts()

    def _start(self) -> None:
        # Its own short directory: sks binds a Unix socket below it (paths max ~107 bytes).
        self.base_dir = Path(tempfile.mkdtemp(prefix="refreshd-sks-"))
        for sub in ("etc/sks", "var/lib/sks", "var/log/sks", "var/run/sks"):
            (self.base_dir / sub).mkdir(parents=True)
        self.hkp_port = procs.free_port(self.address)
        (self.base_dir / "etc/sks/sksconf").write_text(
            f"hkp_address: {self.address}\n"
            f"hkp_port: {self.hkp_port}\n"
            f"recon_address: {self.address}\n"
            f"recon_port: {procs.free_port(self.address)}\n"
            "disable_mailsync:\n"
            "dontgossip:\n"
        )
        (self.base_dir / "etc/sks/membership").write_text("")
        base = ["-basedir", str(self.base_dir), "-stdoutlog"]
        build = procs.start("sks-build", [SKS, "build", *base], self.base_dir / "build.log")
        try:
            code = build.popen.wait(timeout=START_TIMEOUT)
        finally:
            procs.stop(build)
        if code != 0:
            raise SksStartError(f"sks build failed ({code})\n{build.log_tail()}")
        self._proc = procs.start("sks-db", [SKS, "db", *base], self.base_dir / "db.log")
        if not procs.wait_for(self._answers, START_TIMEOUT):
            raise SksStartError("sks db did not answer\n" + self._proc.log_tail())
        self._tap = Tap(self.address, self.hkp_port, host=self.address)

    def _answers(self) -> bool:
        if self._proc is not None and not self._proc.running():
            raise SksStartError("sks db exited\n" + self._proc.log_tail())
        try:
            with _opener().open(f"{self.direct_url}/pks/lookup?op=stats", timeout=2):
                return True
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None
        if self.base_dir != Path():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def add_key(self, key: bytes | str) -> int:
        """Upload an armored key via POST /pks/add (form field `keytext`); return the status."""
        text = key.decode("ascii") if isinstance(key, bytes) else key
        body = urllib.parse.urlencode({"keytext": text}).encode("ascii")
        request = urllib.request.Request(f"{self.direct_url}/pks/add", data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with _opener().open(request, timeout=10) as answer:
            return int(answer.status)

    def get(self, fingerprint: str) -> bytes | None:
        """The armored key SKS holds for a fingerprint, or None on 404."""
        query = urllib.parse.urlencode(
            {"op": "get", "options": "mr", "search": "0x" + fingerprint.upper()}
        )
        try:
            with _opener().open(f"{self.direct_url}/pks/lookup?{query}", timeout=10) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise


def _opener() -> urllib.request.OpenerDirector:
    """Direct loopback HTTP: never an environment proxy."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))
