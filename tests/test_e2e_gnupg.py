"""End to end: `refreshd run` with `[gnupg] sync = true` keeps a GnuPG keyring fresh.

The user's keyring holds a contact whose key is published at WKD (nginx), a contact whose key
is on SKS, the user's own key and another contact. `refreshd import-gnupg` registers them;
upstream copies then change (a longer expiry, a forgery) and the daemon refreshes over the
private Tor network. The keyring is judged by gpg itself: an extension arrives, a key the
keyring never had stays out, a forged copy leaves the exported keyring byte for byte as it was.

The WKD contact is discovered once before the import, as a daemon that already knew the
address would have: a `lookup` of an address that is registered (by the import, for instance)
answers from the store without discovery, so an imported key is refreshed by fingerprint from
discovery.hkp, never from WKD.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from refreshd.gnupg import primary_fingerprints
from tests import world
from tests.daemon_proc import Daemon, write_config
from tests.e2e_support import AuditLine, Scene, colon_expiry, daemon_sections, wait_for
from tests.keyfactory import Gpg
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not world.https_port_443(),
        reason="refreshd asks WKD on port 443: nginx may not bind it here",
    ),
]

WKD_CONTACT = "gale@example.org"
SKS_CONTACT = "gus@example.net"
OTHER_CONTACT = "olive@example.com"
OWN = "me@example.com"
STRANGER = "stan@example.net"
MADE = datetime.now(UTC) - timedelta(days=10)  # extensions made now are clearly newer


@dataclass
class Ring:
    """The daemon (its Scene's gpg is the upstream keyring where contacts make their keys), the
    user's GnuPG home it syncs into, and the fingerprints of the keys in play."""

    scene: Scene
    user: Gpg
    wkd_contact: str
    sks_contact: str
    other: str
    own: str
    imported: dict[str, Any]

    def listing(self, fingerprint: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gpg", "--homedir", str(self.user.home), "--batch", "--no-tty", "--with-colons",
             "--fixed-list-mode", "--list-keys", fingerprint],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def expiry(self, gpg: Gpg, fingerprint: str, record: str) -> int | None:
        out = gpg.run("--with-colons", "--fixed-list-mode", "--list-keys", fingerprint)
        return colon_expiry(out.decode(), record)

    def digest(self, *fingerprints: str) -> str:
        """sha256 of `gpg --export` of the user's keyring (or of those keys in it)."""
        return hashlib.sha256(self.user.run("--export", *fingerprints)).hexdigest()

    def keyring(self) -> frozenset[str]:
        """Fingerprints of the primary keys in the user's keyring."""
        out = self.user.run("--with-colons", "--fixed-list-mode", "--list-keys").decode()
        return primary_fingerprints(out, "pub")

    def synced(self, after: int, match: str | None = None) -> AuditLine:
        """The first gnupg.synced after seq `after` (that updated fingerprint `match`)."""
        return self.scene.wait_audit(
            lambda e: e["event"] == "gnupg.synced" and (match is None or match in e["updated"]),
            after,
            timeout=30,
        )

    def barrier(self, after: int) -> list[AuditLine]:
        """Hand the daemon an extended copy of the other contact's key (a write gpg reports by
        fingerprint) and wait until it is written: every gnupg.synced since seq `after`, up to
        that one. The writer takes changes in order, so anything queued before is written."""
        self.extend(self.other)
        observed = self.scene.daemon.call(
            "observe", address=OTHER_CONTACT, key=self.scene.armored(self.other), origin="autocrypt"
        )
        assert observed["decision"] == "merged", observed
        last = self.synced(after, self.other)
        return [
            e for e in self.scene.audit_since(after)
            if e["event"] == "gnupg.synced" and e["seq"] <= last["seq"]
        ]  # fmt: skip

    def extend(self, fingerprint: str) -> int:
        """Extend primary and subkeys upstream by two years; the new primary expiry."""
        self.scene.gpg.set_expire(fingerprint, "2y")
        self.scene.gpg.set_expire(fingerprint, "2y", "*")
        expiry = self.expiry(self.scene.gpg, fingerprint, "pub")
        assert expiry is not None
        return expiry


@pytest.fixture(scope="module")
def ring(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    sks_server: SksServer,
    test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Ring]:
    root = tmp_path_factory.mktemp("e2e-gnupg")
    user = Gpg(root / "user-gnupg")
    sections = daemon_sections(tor_network, test_ca, sks_server)
    sections["gnupg"] = {"sync": True, "homedir": str(user.home)}
    upstream = Gpg(root / "upstream")
    daemon = Daemon(write_config(root, sections))
    try:
        scene = Scene(daemon, upstream, root / "state")
        wkd_fpr = upstream.generate(f"Gale <{WKD_CONTACT}>", expire="30d", at=MADE)
        sks_fpr = upstream.generate(f"Gus <{SKS_CONTACT}>", expire="30d", at=MADE)
        other = upstream.generate(f"Olive <{OTHER_CONTACT}>", at=MADE)
        own = user.generate(f"Me <{OWN}>", at=MADE)
        user.run("--import", data=upstream.run("--export", wkd_fpr, sks_fpr, other))
        wkd_server.publish_wkd(WKD_CONTACT, upstream.export(wkd_fpr))
        assert sks_server.add_key(scene.armored(sks_fpr)) == 200
        scene.wait_tor("ready", 60)

        found = scene.lookup(WKD_CONTACT)
        assert (found["state"], found["fingerprint"], found["source"]) == (
            "registered",
            wkd_fpr,
            "wkd",
        ), found
        after = scene.last_seq()
        answer = daemon.cli("import-gnupg", "--json")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        imported = json.loads(answer.stdout)

        def written_back() -> list[AuditLine]:
            lines = [e for e in scene.audit_since(after) if e["event"] == "gnupg.synced"]
            return lines if sum(e["written"] for e in lines) >= imported["registered"] else []

        # the newly registered keys are written back as gpg already has them: nothing changes
        lines = wait_for(written_back, 30, "the imported keys to be written back")
        assert all(e["updated"] == {} and e["not_in_keyring"] == 0 for e in lines), lines
        yield Ring(scene, user, wkd_fpr, sks_fpr, other, own, imported)
    finally:
        daemon.stop()
        for gpg in (upstream, user):
            gpg.close()  # gpgconf --kill all: the agents gpg started for these homes
    assert daemon.proc.returncode == 0, (root / "daemon.log").read_text()[-3000:]


def test_import_registers_the_keyring(ring: Ring) -> None:
    imported = ring.imported
    assert imported["homedir"] == str(ring.user.home)
    assert (imported["keys"], imported["addresses"]) == (4, 4)
    # the WKD contact was registered by discovery already: the import only confirms it
    assert imported["registered"] == 3 and imported["rejected"] == 0, imported
    assert imported["kept"] + imported["merged"] == 1, imported
    known = ring.scene.lookup(WKD_CONTACT, wait=0)
    assert (known["fingerprint"], known["validation"], known["source"], known["encrypt"]) == (
        ring.wkd_contact,
        "provider-trust",
        "wkd",
        True,
    ), known
    own = ring.scene.lookup(OWN, wait=0)
    assert (own["fingerprint"], own["validation"]) == (ring.own, "known-key")
    contact = ring.scene.lookup(SKS_CONTACT, wait=0)
    assert (contact["fingerprint"], contact["validation"]) == (ring.sks_contact, "weak-chain")


def test_extension_published_at_wkd_reaches_the_keyring(ring: Ring, wkd_server: WkdServer) -> None:
    fpr = ring.wkd_contact
    old = ring.expiry(ring.user, fpr, "pub")
    new = ring.extend(fpr)
    assert old is not None and new - old > 300 * 86400
    wkd_server.publish_wkd(WKD_CONTACT, ring.scene.public(fpr))
    after = ring.scene.last_seq()

    line = ring.scene.refresh(WKD_CONTACT)

    assert line["event"] == "refresh.fetched", line
    assert (line["source"], line["status"], line["outcome"]) == ("wkd", 200, "key")
    synced = ring.synced(after, fpr)
    assert synced["updated"][fpr] == ["new signatures"]
    assert ring.expiry(ring.user, fpr, "pub") == new
    assert ring.expiry(ring.user, fpr, "sub") == ring.expiry(ring.scene.gpg, fpr, "sub")


def test_extension_merged_into_sks_reaches_the_keyring(ring: Ring, sks_server: SksServer) -> None:
    fpr = ring.sks_contact
    new = ring.extend(fpr)
    assert sks_server.add_key(ring.scene.armored(fpr)) == 200  # SKS merges the new signatures
    after = ring.scene.last_seq()

    line = ring.scene.refresh(SKS_CONTACT)

    assert line["event"] == "refresh.fetched", line
    assert (line["source"], line["status"], line["outcome"]) == ("hkp", 200, "key")
    assert ring.synced(after, fpr)["updated"][fpr] == ["new signatures"]
    assert ring.expiry(ring.user, fpr, "pub") == new
    assert ring.expiry(ring.user, fpr, "sub") == ring.expiry(ring.scene.gpg, fpr, "sub")


def test_a_key_the_keyring_never_had_is_not_added(ring: Ring, sks_server: SksServer) -> None:
    scene = ring.scene
    fpr = scene.new_key(f"Stan <{STRANGER}>", expire="30d", at=MADE)
    after = scene.last_seq()
    observed = scene.daemon.call(
        "observe", address=STRANGER, key=scene.armored(fpr), origin="autocrypt"
    )
    assert (observed["decision"], observed["fingerprint"]) == ("registered", fpr)
    first = scene.wait_audit(
        lambda e: e["event"] == "gnupg.synced" and e["not_in_keyring"] >= 1, after, timeout=30
    )
    assert fpr not in first["updated"]
    new = ring.extend(fpr)
    assert sks_server.add_key(scene.armored(fpr)) == 200
    after = scene.last_seq()

    line = scene.refresh(STRANGER)

    assert line["event"] == "refresh.fetched", line
    assert (line["source"], line["outcome"]) == ("hkp", "key")
    assert scene.lookup(STRANGER, wait=0)["expires"] == datetime.fromtimestamp(new, UTC).isoformat()
    synced = scene.wait_audit(
        lambda e: e["event"] == "gnupg.synced" and e["not_in_keyring"] >= 1, after, timeout=30
    )
    assert fpr not in synced["updated"]
    listed = ring.listing(fpr)
    assert listed.returncode != 0 and "No public key" in listed.stderr, listed
    assert fpr not in ring.user.run("--with-colons", "--list-keys").decode()


def test_tampered_wkd_copies_change_nothing_in_the_keyring(
    ring: Ring, wkd_server: WkdServer
) -> None:
    scene, fpr = ring.scene, ring.wkd_contact
    before = ring.digest()
    keys = ring.keyring()
    unrelated = sorted(keys - {ring.other})
    untouched = ring.digest(*unrelated)
    expiry = ring.expiry(ring.user, fpr, "pub")
    genuine = scene.public(fpr)

    # another key carrying the contact's user id
    impostor = scene.new_key(f"Gale <{WKD_CONTACT}>")
    wkd_server.publish_wkd(WKD_CONTACT, scene.public(impostor))
    after = scene.last_seq()
    assert scene.refresh(WKD_CONTACT)["event"] == "refresh.fetched"
    rejected = scene.wait_audit(
        lambda e: e["event"] == "key.rejected" and e["fingerprint"] == impostor, after
    )
    assert rejected["address"] == WKD_CONTACT and rejected["reason"]

    # the contact's own key with its user id rewritten: its self-signature no longer holds
    forged = genuine.replace(WKD_CONTACT.encode(), b"gaze@example.org")
    assert forged != genuine and len(forged) == len(genuine)
    wkd_server.publish_wkd(WKD_CONTACT, forged)
    forged_at = scene.last_seq()
    assert scene.refresh(WKD_CONTACT)["event"] == "refresh.fetched"
    decided = scene.wait_audit(
        lambda e: str(e["event"]).startswith("key.") and e.get("fingerprint") == fpr, forged_at
    )
    # the forged user id is not self-signed, so the copy brings nothing to the key held: its
    # signatures are dropped (audited as such) or the copy is refused
    assert decided["event"] in ("key.kept", "key.rejected", "key.signatures_rejected"), decided

    history = {k["fingerprint"]: k for k in scene.history(WKD_CONTACT)["keys"]}
    assert history[fpr]["status"] == "registered"
    assert history[impostor]["status"] == "rejected" and history[impostor]["reason"]
    assert ring.digest() == before
    # a write the forgeries might have queued is done once a later genuine change is written
    written = ring.barrier(after)
    assert [e["updated"] for e in written][:-1] == [{}] * (len(written) - 1), written
    assert list(written[-1]["updated"]) == [ring.other]
    assert ring.keyring() == keys
    assert ring.digest(*unrelated) == untouched
    assert ring.expiry(ring.user, fpr, "pub") == expiry
