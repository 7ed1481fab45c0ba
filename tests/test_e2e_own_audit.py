"""End to end, over the private Tor network: the own key's publication audited (time-compressed
by own.audit_period), and first contact over two network paths of a one-exit network.

A real `refreshd run` publishes its own key to SKS and finds it at WKD (nginx) and HKP; when the
WKD tree swaps in another key for the own address, the audit says `mismatch` with the served
fingerprint, `own status` and `status` warn, and own.audit_command hears of it once. With one
exit, first contact still registers and the perspectives line says the paths shared the exit,
which Tor's own circuit events confirm.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.openpgp import resign
from tests import world
from tests.e2e_support import Scene, daemon_sections, running_scene, wait_for
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork
from tests.world.vks import VksServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not world.https_port_443(),
        reason="refreshd asks WKD on port 443: nginx may not bind it here",
    ),
]

OWN = "ona@example.net"
HOOK = "import sys, pathlib; pathlib.Path(sys.argv[1]).open('a').write(sys.stdin.read())"


@pytest.fixture(scope="module")
def vks_server(test_ca: LocalCA) -> Iterator[VksServer]:
    with VksServer(test_ca, world.world_address()) as server:
        yield server


@pytest.fixture(scope="module")
def scene(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    sks_server: SksServer,
    vks_server: VksServer,
    test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("e2e-audit")
    sections = daemon_sections(tor_network, test_ca, sks_server)
    sections["discovery"] = {
        **sections["discovery"],
        "order": ["wkd", "hkp", "vks"],
        "vks": [vks_server.url],
    }
    sections["own"] = {
        "upload": ["hkp", "vks"],
        "audit_period": "4s",  # time-compressed: about one audit of the address every 4 s
        "audit_command": [sys.executable, "-c", HOOK, str(root / "hook.jsonl")],
    }
    sections["validation"] = {"perspectives": 2}
    with running_scene(root, sections) as scene:
        yield scene


def audits(scene: Scene, after: int = 0) -> list[dict]:
    return [e for e in scene.audit_since(after) if e["event"] == "own.audit"]


def test_the_own_key_audit_sees_a_swapped_key(
    scene: Scene, wkd_server: WkdServer, sks_server: SksServer
) -> None:
    made = scene.daemon.call("own_generate", address=OWN)
    own_fpr = made["fingerprint"]
    public = resign.read_own(
        (scene.state_dir / "own-key.asc").read_text(), datetime.now(UTC)
    ).public
    wkd_server.publish_wkd(OWN, public.encode())
    start = scene.last_seq()

    # the provider (WKD) and the keyserver it was uploaded to serve the own key: ok everywhere
    def all_ok() -> dict | None:
        return next(
            (
                e
                for e in audits(scene, start)
                if e["state"] == "ok" and all(f["result"] == "ok" for f in e["findings"])
            ),
            None,
        )

    ok = wait_for(all_ok, 90, "an own.audit with every directory ok")
    assert ok["address"] == OWN and ok["fingerprint"] == own_fpr
    assert [f["source"] for f in ok["findings"]] == ["wkd", "hkp", "vks"]
    assert scene.daemon.call("own")[0]["audit"]["state"] == "ok"

    # the provider swaps in another key for the own address
    intruder = scene.new_key(f"Not Ona <{OWN}>")
    wkd_server.publish_wkd(OWN, scene.public(intruder))
    swapped = scene.last_seq()
    mismatch = scene.wait_audit(
        lambda e: e["event"] == "own.audit" and e["state"] == "mismatch", swapped, timeout=90
    )
    wkd = next(f for f in mismatch["findings"] if f["source"] == "wkd")
    assert wkd["result"] == "other-key" and wkd["served"] == [intruder]
    assert {f["source"]: f["result"] for f in mismatch["findings"]}["hkp"] == "ok"

    shown = scene.daemon.cli("own", "status")
    assert shown.returncode == 0, shown.stderr
    assert "WARNING" in shown.stdout and intruder in shown.stdout
    status = scene.daemon.cli("status")
    assert status.stdout.splitlines()[0].startswith("WARNING"), status.stdout
    assert intruder in status.stdout

    # two more audits with the same mismatch: the hook ran once, with the finding
    wait_for(lambda: len(audits(scene, swapped)) >= 3, 90, "two more audits")
    hook = Path(scene.state_dir.parent / "hook.jsonl")
    heard = [json.loads(line) for line in hook.read_text().splitlines()]
    assert len(heard) == 1, heard
    assert heard[0]["address"] == OWN and heard[0]["state"] == "mismatch"
    assert [f["served"] for f in heard[0]["findings"]] == [[intruder]]
    ran = [e for e in scene.audit_since(start) if e["event"] == "own.audit_command"]
    assert len(ran) == 1 and ran[0]["ok"] is True
    wkd_server.remove_wkd(OWN)


def test_with_one_exit_first_contact_works_and_says_the_paths_shared_it(
    scene: Scene, wkd_server: WkdServer, tor_network: TorNetwork
) -> None:
    address = "pia@example.org"
    fingerprint = scene.new_key(f"Pia <{address}>")
    wkd_server.publish_wkd(address, scene.public(fingerprint))
    after = scene.last_seq()

    with tor_network.record_events() as log:
        answer = scene.lookup(address, wait=60)
        paths = scene.wait_audit(
            lambda e: e["event"] == "discovery.perspectives" and e["address"] == address, after
        )
        log.wait_until(lambda lg: len(_succeeded(lg)) >= 2)
        streams = _succeeded(log)
        circuits = {c.id: c for c in log.circuits if c.status == "BUILT"}

    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == fingerprint
    assert paths["verdict"] == "agree" and paths["shared_exit"] is True
    assert paths["exits"] == [tor_network.exit_fingerprint] * 2
    assert "shared an exit" in paths["reason"]
    assert paths["asked_again"] == 0  # Tor lists one exit: fresh circuits could not help
    # Tor's own events: two streams with distinct credentials, both ending at the one exit
    assert len({s.socks_username for s in streams}) >= 2
    assert all(s.circ_id in circuits for s in streams)
    assert {circuits[s.circ_id].path[-1] for s in streams} == {tor_network.exit_fingerprint}


def _succeeded(log) -> list:
    return [s for s in log.streams if s.status == "SUCCEEDED" and s.socks_username]


def test_a_vks_still_serving_the_old_expiry_gets_the_key_uploaded_again(
    scene: Scene, vks_server: VksServer, tmp_path: Path
) -> None:
    address = "vera@example.net"
    made = datetime.now(UTC) - timedelta(days=170)
    fingerprint = scene.new_key(f"Vera <{address}>", expire="180d", at=made)
    scene.gpg.set_expire(fingerprint, "180d", "*", at=made + timedelta(hours=1))
    old = scene.armored(fingerprint)
    vks_server.keys[address] = old.encode()  # what VKS had before the extension
    vks_server.hold = True  # the upload after the extension does not propagate
    secret = tmp_path / "vera.asc"
    secret.write_bytes(scene.gpg.run("--armor", "--export-secret-keys", fingerprint))
    after = scene.last_seq()
    uploads = len(vks_server.uploads)

    imported = scene.daemon.cli("own", "import", str(secret))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    scene.wait_audit(
        lambda e: e["event"] == "own.extended" and e["fingerprint"] == fingerprint, after
    )
    wait_for(lambda: len(vks_server.uploads) > uploads, 60, "the upload after the extension")
    stale = scene.wait_audit(
        lambda e: (
            e["event"] == "own.audit"
            and e["address"] == address
            and any(f["source"] == "vks" and f["result"] == "stale-expiry" for f in e["findings"])
        ),
        after,
        timeout=90,
    )
    assert stale["state"] == "mismatch"
    held = len(vks_server.uploads)
    vks_server.hold = False  # from now on uploads propagate

    again = scene.wait_audit(
        lambda e: e["event"] == "own.reupload" and e["fingerprint"] == fingerprint, after, 90
    )
    assert again["mechanisms"] == ["vks"]
    wait_for(lambda: len(vks_server.uploads) > held, 60, "the upload again")
    fixed = scene.wait_audit(
        lambda e: (
            e["event"] == "own.audit"
            and e["address"] == address
            and any(f["source"] == "vks" and f["result"] == "ok" for f in e["findings"])
        ),
        again["seq"],
        timeout=90,
    )
    assert fixed["fingerprint"] == fingerprint
