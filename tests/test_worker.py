"""Key work runs apart from the trio loop, within a budget: a long computation (one that holds
the GIL, as a modular exponentiation does) neither stops the loop nor runs past its budget."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import trio

from refreshd.errors import KeyRejected
from refreshd.openpgp.intake import Limits, intake
from refreshd.openpgp.packets import armor
from refreshd.worker import Worker
from tests.daemon_proc import Daemon, write_config
from tests.keyfactory import many_subkeys, pgpy_key
from tests.loop_ticks import Ticks

HEAVY = (3, (1 << 200_000) - 1, (1 << 3072) - 159)  # pow() of these runs in C, GIL held


async def test_the_loop_ticks_while_a_worker_computes():
    worker = Worker(budget=600)
    ticks = Ticks()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticks.run)
        started = trio.current_time()
        await worker.run(pow, *HEAVY)
        took = trio.current_time() - started
        ticks.stop()
    worker.close()
    assert ticks.count >= min(5, int(took / 0.05)), (
        ticks.count,
        took,
    )  # the loop went on meanwhile


async def test_a_call_past_its_budget_is_refused_and_the_worker_replaced():
    worker = Worker(budget=0.5)
    with pytest.raises(KeyRejected) as refused:
        await worker.run(time.sleep, 60)
    assert "time budget" in refused.value.reason
    assert await worker.run(len, b"abc") == 3  # a fresh process took its place
    worker.close()


async def test_errors_of_the_work_come_back_as_they_were():
    worker = Worker()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(KeyRejected):
        await worker.run(intake, b"\x99garbage", frozenset(), Limits(1 << 20, 1 << 20), now)
    worker.close()


def test_a_key_with_thousands_of_subkeys_leaves_the_socket_answering(tmp_path):
    """Observe a key with 3,500 subkeys (what fits in a 1 MiB line, armored) through the
    socket while a second client asks status: it is answered meanwhile (before, the loop
    parsed the key for seconds and nobody was answered)."""
    key = armor(many_subkeys(pgpy_key("Bob <bob@example.org>", expires=timedelta(days=400)), 3500))
    d = Daemon(write_config(tmp_path, {}))
    latencies: list[float] = []
    observing = threading.Event()
    finished = threading.Event()

    def second_client() -> None:
        while not finished.is_set():
            started = time.monotonic()
            d.call("status")
            if observing.is_set() and not finished.is_set():
                latencies.append(time.monotonic() - started)
            time.sleep(0.01)

    poller = threading.Thread(target=second_client)
    poller.start()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(d.socket))
            line = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "observe",
                "params": {"address": "bob@example.org", "key": key, "origin": "autocrypt"},
            }
            observing.set()
            s.sendall(json.dumps(line).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += s.recv(65536)
            finished.set()
        answer = json.loads(reply)
        assert "result" in answer or answer["error"]["code"] != -32603, answer
    finally:
        finished.set()
        poller.join()
        d.stop()
    assert len(latencies) >= 3, latencies  # answered while the key was being checked
    print(
        f"status while a 3,500-subkey key was checked: {len(latencies)} answers, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
