"""The command line against the daemon's real JSON-RPC server (refreshd.rpc), run in a thread."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from refreshd import cli, rpc


async def echo(params: dict[str, Any]) -> dict[str, Any]:
    return params


async def refuse(params: dict[str, Any]) -> dict[str, Any]:
    raise rpc.RpcError(rpc.INVALID_PARAMS, "Invalid params: 'address' is not an address")


class Served:
    """A real RpcServer on a temp socket; stop() ends it as a shutdown of the daemon would."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "run" / "socket"
        self.config = directory / "config.toml"
        self.config.write_text(f'[daemon]\nsocket = "{self.socket}"\n')
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,))

    async def _main(self) -> None:
        server = rpc.RpcServer({"lookup": echo, "history": refuse}, emit=lambda *a, **k: None)
        with trio.CancelScope() as self._scope:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, self.socket)
                self._ready.set()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join()


@pytest.fixture
def served() -> Iterator[Served]:
    directory = Path(tempfile.mkdtemp(prefix="rd-"))
    server = Served(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory)


def test_request_and_answer_fit_the_real_server(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["lookup", "bob@example.org", "--wait", "5", "--json", "--config",
                     str(served.config)])  # fmt: skip
    assert json.loads(capsys.readouterr().out) == {
        "address": "bob@example.org",
        "discover": True,
        "wait": 5,
        "armor": False,
    }
    assert code == 1, "the echo has no usable key: a negative verdict"


def test_a_method_error_exits_1_with_the_daemons_message(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["history", "x", "--config", str(served.config)]) == 1
    assert "'address' is not an address (JSON-RPC error -32602)" in capsys.readouterr().err


def test_a_stopped_daemon_reads_as_not_running(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served.stop()
    assert cli.main(["status", "--config", str(served.config)]) == 3
    assert capsys.readouterr().err.startswith("refreshd is not running")
