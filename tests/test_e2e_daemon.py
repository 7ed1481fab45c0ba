"""End to end: `refreshd run` against a private Tor network, nginx (WKD) and SKS on loopback.

One daemon serves the whole module, as one would on a user's machine; each scenario uses its
own addresses, so scenarios do not lean on each other's keys. The daemon is judged only by
its socket and command line answers, its audit log and its store (read-only), and by what
Tor and the servers saw. The scenarios that stop Tor and that verify the audit chain run last.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import world
from tests.e2e_support import (
    Scene,
    colon_expiry,
    daemon_sections,
    recv_keyring,
    running_scene,
    wait_for,
)
from tests.world import names
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer, wkd_path
from tests.world.sks import SksServer
from tests.world.tornet import EventLog, StreamRecord, TorNetwork

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not world.https_port_443(),
        reason="refreshd asks WKD on port 443: nginx may not bind it here",
    ),
]

DAY = 86400


@pytest.fixture(scope="module")
def scene(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    sks_server: SksServer,
    test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("e2e")
    with running_scene(root, daemon_sections(tor_network, test_ca, sks_server)) as scene:
        yield scene


def publish(wkd: WkdServer, address: str, key: bytes) -> str:
    """Put `key` in the WKD tree (both methods); the advanced method's path, which refreshd
    asks first."""
    wkd.publish_wkd(address, key)
    return wkd_path(address, "advanced")[1]


def events(scene: Scene, name: str, after: int = 0, **fields: object) -> list[dict[str, object]]:
    return [
        e
        for e in scene.audit_since(after)
        if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
    ]


def register_from_wkd(scene: Scene, wkd: WkdServer, address: str, **key_args: Any) -> str:
    fingerprint = scene.new_key(f"Someone <{address}>", **key_args)
    publish(wkd, address, scene.public(fingerprint))
    answer = scene.lookup(address)
    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == fingerprint
    return fingerprint


def gpg_expiry(scene: Scene, fingerprint: str, record: str = "pub") -> datetime:
    listing = scene.gpg.run("--with-colons", "--fixed-list-mode", "--list-keys", fingerprint)
    seconds = colon_expiry(listing.decode(), record)
    assert seconds is not None
    return datetime.fromtimestamp(seconds, UTC)


# -- 1. first contact ----------------------------------------------------------------------


def test_first_contact_through_wkd_is_provider_trust_and_encrypts(
    scene: Scene, wkd_server: WkdServer
) -> None:
    address = "wendy@example.org"
    fingerprint = scene.new_key(f"Wendy <{address}>")
    path = publish(wkd_server, address, scene.public(fingerprint))

    answer = scene.lookup(address)

    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == fingerprint
    assert answer["validation"] == "provider-trust"
    assert answer["source"] == "wkd"
    assert answer["usable"] is True
    assert answer["encrypt"] is True
    assert answer["expires"] == gpg_expiry(scene, fingerprint).isoformat()
    # nginx saw the advanced-method request for the test name (TLS with its SNI), from Tor.
    served = [e for e in wkd_server.access_log() if e.uri.startswith(path)]
    assert served and served[-1].status == 200
    assert served[-1].sni == "openpgpkey.example.org"
    # The command line gives the same answer.
    cli = scene.daemon.cli("lookup", address, "--json")
    assert cli.returncode == 0, cli.stderr
    assert f'"fingerprint": "{fingerprint}"' in cli.stdout


def test_first_contact_through_hkp_is_weak_chain_without_encrypt(
    scene: Scene, sks_server: SksServer
) -> None:
    address = "harry@example.net"
    fingerprint = scene.new_key(f"Harry <{address}>")
    assert sks_server.add_key(scene.armored(fingerprint)) == 200
    accepts = sks_server.counts().accepts
    after = scene.last_seq()

    answer = scene.lookup(address)

    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == fingerprint
    assert answer["validation"] == "weak-chain"
    assert answer["source"] == "hkp"
    assert answer["usable"] is True
    assert answer["encrypt"] is False
    # WKD was asked first (example.net publishes nothing), then SKS, through its tap.
    failed = events(scene, "discovery.failed", after, address=address, source="wkd")
    assert failed and all(e["status"] == 404 for e in failed)
    fetched = events(scene, "discovery.fetched", after, address=address, source="hkp")
    assert len(fetched) == 1
    assert str(fetched[0]["url"]).startswith(f"http://{names.HKP_HOSTS[0]}:{sks_server.port}/")
    assert sks_server.counts().accepts > accepts


# -- 2. refresh picks up an extended expiry ------------------------------------------------


def test_refresh_picks_up_an_extended_expiry(scene: Scene, wkd_server: WkdServer) -> None:
    address = "erin@example.org"
    made = datetime.now(UTC) - timedelta(days=10)
    fingerprint = register_from_wkd(scene, wkd_server, address, expire="30d", at=made)
    before = scene.lookup(address)["expires"]
    assert before == gpg_expiry(scene, fingerprint).isoformat()

    scene.gpg.set_expire(fingerprint, "2y")
    scene.gpg.set_expire(fingerprint, "2y", "*")
    extended = gpg_expiry(scene, fingerprint)
    after = scene.last_seq()
    publish(wkd_server, address, scene.public(fingerprint))
    line = scene.refresh(address)

    assert line["event"] == "refresh.fetched", line
    assert (line["status"], line["outcome"], line["source"]) == (200, "key", "wkd")
    assert events(scene, "key.merged", after, address=address, fingerprint=fingerprint)
    answer = scene.lookup(address, wait=0)
    assert answer["expires"] == extended.isoformat()
    assert datetime.fromisoformat(answer["expires"]) - datetime.fromisoformat(before) > timedelta(
        days=300
    )


# -- 3. a 304 costs no parse and no store write --------------------------------------------


def test_unchanged_wkd_key_is_a_304_without_store_write(
    scene: Scene, wkd_server: WkdServer
) -> None:
    address = "nora@example.org"
    fingerprint = register_from_wkd(scene, wkd_server, address)
    path = wkd_path(address, "advanced")[1]
    etag = next(e for e in reversed(wkd_server.access_log()) if e.uri.startswith(path))
    row = scene.key_row(fingerprint)
    assert row is not None
    wait_for(lambda: scene.key_row(fingerprint) == row and _second_passed(row), 5, "a new second")
    after = scene.last_seq()

    line = scene.refresh(address)

    assert line["event"] == "refresh.fetched", line
    assert (line["status"], line["outcome"], line["bytes"]) == (304, "unchanged", 0)
    # The bookkeeping is the last write of a refresh: once it shows the 304, all is written.
    wait_for(
        lambda: (
            scene.query("SELECT last_status FROM sources WHERE url = ?", line["url"]) == [("304",)]
        ),
        10,
        "the source row to record the 304",
    )
    assert scene.key_row(fingerprint) == row
    assert [e for e in scene.audit_since(after) if str(e["event"]).startswith("key.")] == []
    # nginx answered 304 to a request that carried the ETag it had sent.
    last = next(e for e in reversed(wkd_server.access_log()) if e.uri.startswith(path))
    assert last.status == 304
    assert last.headers.get("if-none-match")
    assert last.time > etag.time


def _second_passed(row: tuple[object, ...]) -> bool:
    """keys.updated has one-second resolution: wait until a write now would change it."""
    updated = datetime.fromisoformat(str(row[3]))
    return datetime.now(UTC) - updated >= timedelta(seconds=1.2)


# -- 4. SKS sends no validators: an unchanged body is detected by its hash ------------------


def test_unchanged_sks_body_is_detected_by_hash(scene: Scene, sks_server: SksServer) -> None:
    address = "sam@example.net"
    fingerprint = scene.new_key(f"Sam <{address}>")
    assert sks_server.add_key(scene.armored(fingerprint)) == 200
    assert scene.lookup(address)["fingerprint"] == fingerprint

    first = scene.refresh(address)  # by fingerprint now: the first answer gives the hash
    assert first["event"] == "refresh.fetched", first
    assert first["source"] == "hkp" and first["status"] == 200
    row = scene.key_row(fingerprint)
    accepts = sks_server.counts().accepts
    after = scene.last_seq()

    second = scene.refresh(address)

    assert second["event"] == "refresh.fetched", second
    assert (second["status"], second["outcome"]) == (200, "unchanged")
    assert int(str(second["bytes"])) > 0  # the body did come: no validators to avoid it
    assert sks_server.counts().accepts == accepts + 1
    assert scene.key_row(fingerprint) == row
    assert [e for e in scene.audit_since(after) if str(e["event"]).startswith("key.")] == []


# -- 5.-7. replacement rules on refresh -------------------------------------------------------


def test_transition_certified_by_the_old_key_replaces_it(
    scene: Scene, wkd_server: WkdServer
) -> None:
    address = "tess@example.org"
    uid = f"Tess <{address}>"
    old = register_from_wkd(scene, wkd_server, address)
    new = scene.new_key(uid)
    scene.gpg.certify(old, new, uid)
    publish(wkd_server, address, scene.public(new))
    after = scene.last_seq()

    line = scene.refresh(address)

    assert line["event"] == "refresh.fetched", line
    assert scene.lookup(address, wait=0)["fingerprint"] == new
    assert scene.statuses(address) == {old: "retired", new: "registered"}
    assert events(scene, "key.replaced", after, address=address, fingerprint=new)


def test_unrelated_new_key_is_rejected(scene: Scene, wkd_server: WkdServer) -> None:
    address = "ursula@example.org"
    registered = register_from_wkd(scene, wkd_server, address)  # expires: rule 3.5 is out
    stranger = scene.new_key(f"Ursula <{address}>")
    publish(wkd_server, address, scene.public(stranger))
    after = scene.last_seq()

    line = scene.refresh(address)

    assert line["event"] == "refresh.fetched", line
    answer = scene.lookup(address, wait=0)
    assert answer["fingerprint"] == registered and answer["usable"] is True
    assert scene.statuses(address) == {registered: "registered", stranger: "rejected"}
    rejected = events(scene, "key.rejected", after, address=address, fingerprint=stranger)
    assert rejected and rejected[0]["reason"]


def test_revoked_key_is_replaced_by_an_equal_level_key(scene: Scene, wkd_server: WkdServer) -> None:
    address = "rob@example.org"
    old = register_from_wkd(scene, wkd_server, address)
    publish(wkd_server, address, scene.revoke(old))
    assert scene.refresh(address)["event"] == "refresh.fetched"
    revoked = scene.lookup(address, wait=0)
    assert (revoked["fingerprint"], revoked["revoked"], revoked["usable"]) == (old, True, False)

    new = scene.new_key(f"Rob <{address}>")
    publish(wkd_server, address, scene.public(new))
    after = scene.last_seq()
    assert scene.refresh(address)["event"] == "refresh.fetched"

    answer = scene.lookup(address, wait=0)
    assert answer["fingerprint"] == new
    assert (answer["validation"], answer["usable"], answer["encrypt"]) == (
        "provider-trust",
        True,
        True,
    )
    assert scene.statuses(address) == {old: "retired", new: "registered"}
    assert events(scene, "key.replaced", after, address=address, fingerprint=new)


# -- 8. own key: extended, uploaded to SKS over Tor, read back by gpg -------------------------


def test_own_key_extension_is_uploaded_and_gpg_receives_it(
    scene: Scene, sks_server: SksServer, tmp_path: Path
) -> None:
    address = "olga@example.net"
    made = datetime.now(UTC) - timedelta(days=170)
    fingerprint = scene.new_key(f"Olga <{address}>", expire="180d", at=made)
    # gpg gives the encryption subkey no expiry; give both the same one, a moment later.
    scene.gpg.set_expire(fingerprint, "180d", at=made + timedelta(hours=1))
    scene.gpg.set_expire(fingerprint, "180d", "*", at=made + timedelta(hours=1))
    old_expiry = gpg_expiry(scene, fingerprint)
    assert old_expiry == gpg_expiry(scene, fingerprint, "sub")
    assert old_expiry - datetime.now(UTC) < timedelta(days=11)
    secret = tmp_path / "own.asc"
    secret.write_bytes(scene.gpg.run("--armor", "--export-secret-keys", fingerprint))
    accepts = sks_server.counts().accepts
    after = scene.last_seq()

    imported = scene.daemon.cli("own", "import", str(secret), "--json")

    assert imported.returncode == 0, imported.stdout + imported.stderr
    extended = scene.wait_audit(
        lambda e: e["event"] == "own.extended" and e["fingerprint"] == fingerprint, after
    )
    uploaded = scene.wait_audit(
        lambda e: e["event"] == "own.uploaded" and e["fingerprint"] == fingerprint, after
    )
    assert uploaded["ok"] is True, uploaded
    assert uploaded["mechanism"] == "hkp"
    assert str(uploaded["url"]).startswith(f"http://{names.HKP_HOSTS[0]}:{sks_server.port}/")
    assert sks_server.counts().accepts > accepts
    new_expiry = old_expiry + timedelta(days=90)
    assert extended["expiries"][fingerprint] == new_expiry.isoformat()
    own = scene.daemon.call("own")
    assert own[0]["expires"] == new_expiry.isoformat()
    assert own[0]["last_upload"]

    with recv_keyring(f"hkp://{sks_server.address}:{sks_server.port}") as recv:
        listing = recv(fingerprint)
    assert colon_expiry(listing, "pub") == int(new_expiry.timestamp())
    assert colon_expiry(listing, "sub") == int(new_expiry.timestamp())


# -- issue 4 acceptance 1: one circuit per fetch, names resolved by Tor only ------------------


def test_twenty_fetches_use_twenty_circuits_and_tor_resolves_the_names(
    scene: Scene, wkd_server: WkdServer, tor_network: TorNetwork
) -> None:
    address = "iris@example.org"
    register_from_wkd(scene, wkd_server, address)
    with tor_network.record_events() as log:
        lines = [scene.refresh(address) for _ in range(20)]

        def all_closed(events: EventLog) -> bool:
            closed = {s.id for s in events.streams if s.status in ("CLOSED", "FAILED")}
            return {s.id for s in _user_streams(events, "NEW")} <= closed

        assert log.wait_until(all_closed, 15)
        with tor_network.controller() as ctl:
            circuits = {c.id: c for c in ctl.get_circuits()}

    assert [e["event"] for e in lines] == ["refresh.fetched"] * 20
    # Every fetch the daemon made meanwhile (ours and any background refresh) is one stream.
    new = _user_streams(log, "NEW")
    assert len(new) >= 20
    usernames = [s.socks_username for s in new]
    assert len(set(usernames)) == len(usernames), "two fetches shared SOCKS credentials"
    passwords = [s.socks_password for s in new]
    assert len(set(passwords)) == len(passwords)
    succeeded = _user_streams(log, "SUCCEEDED")
    assert len(succeeded) == len(new)
    circuit_ids = [s.circ_id for s in succeeded]
    assert len(set(circuit_ids)) == len(circuit_ids), "two fetches rode the same circuit"
    for stream in succeeded:
        if stream.circ_id in circuits:  # still open: Tor built it for these credentials
            assert circuits[stream.circ_id].socks_username == stream.socks_username
        assert stream.target.startswith(tuple(set(tor_network.mapping.values())))
    # The daemon handed Tor the names; only Tor's MapAddress turned them into addresses.
    for stream in new:
        host = stream.target.rpartition(":")[0]
        assert host in names.all_names(), stream.raw
        with pytest.raises(ValueError):
            ipaddress.ip_address(host)
    remapped = {s.id for s in log.streams if s.status == "REMAP" and "SOURCE=CACHE" in s.raw}
    assert {s.id for s in new} <= remapped


def _user_streams(log: EventLog, status: str) -> list[StreamRecord]:
    return [s for s in log.streams if s.status == status and s.socks_username]


# -- 9. Tor dies: nothing leaves without it; it returns: fetches go through -------------------


def test_tor_killed_means_no_connection_then_recovery(
    scene: Scene, wkd_server: WkdServer, sks_server: SksServer, tor_network: TorNetwork
) -> None:
    address = "kim@example.org"
    register_from_wkd(scene, wkd_server, address)
    web_accepts = wkd_server.accepted_connections()
    sks_accepts = sks_server.counts().accepts

    tor_network.stop_client()
    try:
        scene.wait_tor("unavailable", 30)
        failed = scene.refresh(address)
        assert failed["event"] == "refresh.failed", failed
        assert failed["reason"] == "Tor unavailable"
        lookup = scene.lookup("nobody@example.com", wait=5)  # first contact waits too
        assert lookup["state"] != "registered"
        assert wkd_server.accepted_connections() == web_accepts
        assert sks_server.counts().accepts == sks_accepts
    finally:
        tor_network.start_client()

    scene.wait_tor("ready", 60)
    after = scene.last_seq()
    line = scene.refresh(address)
    assert line["event"] == "refresh.fetched", line
    assert line["status"] in (200, 304)
    assert wkd_server.accepted_connections() > web_accepts
    failures = events(scene, "refresh.failed", after)
    assert all(e["reason"] != "Tor unavailable" for e in failures)


# -- 10. the audit log verifies at the end ------------------------------------------------------


def test_audit_log_verifies(scene: Scene) -> None:
    lines = scene.audit()
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    for e in lines:
        if e["event"] in ("refresh.fetched", "discovery.fetched"):
            assert {"status", "bytes", "seconds", "source"} <= set(e), e
    verified = scene.daemon.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
