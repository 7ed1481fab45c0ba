"""Start `refreshd run` as users do (a subprocess with a config file) and talk to its socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REFRESHD = [sys.executable, "-m", "refreshd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_config(root: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A config with test defaults: state and socket under root, Tor pointing nowhere (so it is
    unavailable and nothing is fetched), no upload or keyserver."""
    base: dict[str, dict[str, Any]] = {
        "daemon": {"state_dir": str(root / "state"), "socket": str(root / "run" / "socket")},
        "tor": {
            "mode": "system",
            "socks": f"127.0.0.1:{free_port()}",
            "control": f"127.0.0.1:{free_port()}",
        },
        "discovery": {"vks": [], "hkp": []},
        "own": {"upload": []},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items()) + "\n"
        for name, body in base.items()
    )
    path = root / "config.toml"
    path.write_text(text)
    return path


class Daemon:
    """A running `refreshd run`; stop() sends SIGTERM and waits."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        text = config.read_text()
        self.socket = Path(text.split('socket = "', 1)[1].split('"', 1)[0])
        self.log = (config.parent / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [*REFRESHD, "--config", str(config), "run"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
            preexec_fn=preexec_fn,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"refreshd exited with {self.proc.returncode}: "
                    + (self.config.parent / "daemon.log").read_text()[-3000:]
                )
            try:
                self.call("status")
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("refreshd did not serve its socket")

    def raw(self, line: bytes, timeout: float = 30) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket))
            s.sendall(line)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
        return json.loads(buf)

    def call(self, method: str, **params: Any) -> Any:
        reply = self.raw(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
            + b"\n"
        )
        if "error" in reply:
            raise RpcFailed(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*REFRESHD, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )

    def stop(self, timeout: float = 10) -> float:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self.log.close()
        return time.monotonic() - started

    def audit(self) -> list[dict[str, Any]]:
        path = self.socket.parent.parent / "state" / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]


class RpcFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
