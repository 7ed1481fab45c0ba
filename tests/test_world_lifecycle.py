"""Whatever happens (a failed start, an exception, Ctrl-C), the world's processes are stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.world import names, procs
from tests.world.ca import LocalCA
from tests.world.nginx import NginxStartError, WkdServer
from tests.world.sks import SksServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_failed_nginx_start_leaves_nothing(tmp_path: Path, test_ca: LocalCA) -> None:
    before = set(procs.live_world_pids())
    # 192.0.2.1 (TEST-NET-1) is on no interface here, so nginx cannot bind it and exits.
    server = WkdServer(test_ca, ["example.org"], base_dir=tmp_path, extra_listen=[("192.0.2.1", 0)])
    with pytest.raises(NginxStartError, match=r"192\.0\.2\.1"):
        server.start()
    assert set(procs.live_world_pids()) <= before


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_servers_stop_on_exception(tmp_path: Path, test_ca: LocalCA, exc: type) -> None:
    before = set(procs.registered())
    started: set[int] = set()
    with (
        pytest.raises(exc),
        SksServer() as sks,
        WkdServer(test_ca, names.web_hosts(), base_dir=tmp_path) as web,
    ):
        started = set(procs.registered()) - before
        assert sks.get("00" * 20) is None
        assert web.accepted_connections() == 0
        raise exc()
    assert started
    assert all(gone(pid) for pid in started)


@pytest.mark.parametrize("stop", ["eof", "sigint"])
def test_main_prints_endpoints_and_stops(tmp_path: Path, stop: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.world", "--no-tor", "--dir", str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            endpoints = json.loads(child.stdout.readline())
            pids = [int(pid) for pid in endpoints["pids"]]
            assert sorted(endpoints["pids"].values()) == ["nginx", "sks-db"]
            assert endpoints["tor"] is None
            assert Path(endpoints["ca_file"]).is_file()
            assert endpoints["nicknym"]["uri"].startswith(f"https://{names.NICKNYM_HOST}:")
            if stop == "eof":
                child.stdin.close()
            else:
                os.kill(child.pid, signal.SIGINT)
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
    assert all(gone(pid) for pid in pids)
