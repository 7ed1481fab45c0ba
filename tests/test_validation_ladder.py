"""The validation ladder through the key manager, with real keys and certifications made by gpg
and sq: directory agreement is not consensus, a store written by the old rules is corrected,
pins, endorsers and their consensus, and what gave a level is named."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.core.levels import Level, Way
from refreshd.keymanager import Found, KeyManager
from refreshd.openpgp.keyview import read_key
from refreshd.store import Store
from tests.keyfactory import Workshop

BOB = "bob@example.org"
UID = f"Bob <{BOB}>"
WKD = Found(Way.WKD, Level.PROVIDER_TRUST, True)
VKS = Found(Way.VKS, Level.WEAK_CHAIN, True)
HKP = Found(Way.HKP, Level.WEAK_CHAIN, False)
DATA = Path(__file__).parent / "data"


@dataclass
class Keys:
    endorsers: dict[str, bytes]  # fingerprint -> public key (e1, e3 by gpg, e2 by sq)
    e1: str
    e2: str
    e3: str
    by_e1: bytes  # bob's key certified by e1 (gpg --quick-sign-key)
    by_e1_e2: bytes  # another bob key certified by e1 (gpg) and e2 (sq certify)
    by_e1_e2_fpr: str
    by_e3_other: bytes  # a third bob key, certified by e3
    other_uid: bytes  # certified by e1 on robert@ only
    expired_cert: bytes  # certified by e1 with a certification that has expired
    revoked: bytes  # certified by e1 ...
    revoked_later: bytes  # ... and the same key after e1 revoked that certification
    old: bytes  # an old bob key, later revoked
    old_revoked: bytes
    new: bytes  # its successor, on WKD only


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    ws = Workshop(tmp_path_factory.mktemp("ladder"))
    g, s = ws.gpg, ws.sq
    try:
        start = ws.now - timedelta(days=30)  # so that a certification can be made in the past
        e1 = g.generate("Endorser One <ca@one.example>", expire="2y", at=start)
        e3 = g.generate("Endorser Three <ca@three.example>", expire="2y", at=start)
        e2_secret = s.generate("<ca@two.example>", expires_in="2y")
        e2_public = s.cert(e2_secret)
        e2 = read_key(e2_public, datetime.now(UTC)).fingerprint

        def bob(*uids: str) -> str:
            fpr = g.generate(uids[0], expire="1y", at=start)
            for uid in uids[1:]:
                g.add_uid(fpr, uid, at=start)
            return fpr

        b1 = bob(UID)
        g.certify(e1, b1, UID)
        b2 = bob(UID)
        g.certify(e1, b2, UID)
        g.run("--import", data=s.certify(e2_secret, g.export(b2), UID))
        b3 = bob(UID)
        g.certify(e3, b3, UID)
        b4 = bob(UID, "Robert <robert@example.org>")
        g.certify(e1, b4, "Robert <robert@example.org>")
        b5 = bob(UID)
        past = ws.now - timedelta(days=10)
        g.run("--local-user", e1, "--default-cert-expire", "1d", "--quick-sign-key", b5, UID,
              at=past)  # fmt: skip
        b6 = bob(UID)
        g.certify(e1, b6, UID)
        revoked = g.export(b6)
        g.run("--local-user", e1, "--quick-revoke-sig", b6, e1, UID)
        old_secret = s.generate(f"<{BOB}>", expires_in="1y")
        new = bob(UID)
        return Keys(
            endorsers={e1: g.export(e1), e2: e2_public, e3: g.export(e3)},
            e1=e1,
            e2=e2,
            e3=e3,
            by_e1=g.export(b1),
            by_e1_e2=g.export(b2),
            by_e1_e2_fpr=b2,
            by_e3_other=g.export(b3),
            other_uid=g.export(b4),
            expired_cert=g.export(b5),
            revoked=revoked,
            revoked_later=g.export(b6),
            old=s.cert(old_secret),
            old_revoked=s.revoke_certificate(old_secret),
            new=g.export(new),
        )
    finally:
        ws.close()


def manager(tmp: Path, **validation: object) -> KeyManager:
    cfg = from_mapping(
        {
            "daemon": {"state_dir": str(tmp), "socket": str(tmp / "s")},
            "validation": validation,
        }
    )
    return KeyManager(Store(cfg.database), AuditLog(cfg.audit_file), cfg)


def events(km: KeyManager, name: str) -> list[dict]:
    lines = km.audit.path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def with_endorsers(km: KeyManager, keys: Keys) -> None:
    """The endorsers' keys reach the store like any key (here from VKS): known-key."""
    for fpr, key in keys.endorsers.items():
        if fpr not in km.endorsers:
            continue
        address = sorted(read_key(key, datetime.now(UTC)).addresses())[0]
        d = km.consider(address, key, VKS)
        assert (d.decision, d.level) == ("registered", Level.KNOWN_KEY), d.reason
        assert f"endorser 0x{fpr}" in d.reason


@pytest.fixture
def ladder(tmp_path, keys):
    made: list[KeyManager] = []

    def make(**validation: object) -> KeyManager:
        """A key manager; with endorsers="all", the three endorsers, their keys held."""
        if validation.get("endorsers") == "all":
            validation["endorsers"] = [keys.e1, keys.e2, keys.e3]
        km = manager(tmp_path / str(len(made)), **validation)
        made.append(km)
        with_endorsers(km, keys)
        return km

    yield make
    for km in made:
        km.store.close()
        km.audit.close()


# -- directories agreeing ---------------------------------------------------------------------


def test_wkd_and_vks_agreeing_is_provider_trust_and_a_new_wkd_key_replaces(ladder, keys):
    km = ladder()
    d = km.first_contact(BOB, [(keys.old, WKD), (keys.old, VKS)])
    assert d is not None and (d.decision, d.level) == ("registered", Level.PROVIDER_TRUST)
    assert km.describe(BOB)["validation"] == "provider-trust"
    # they revoke the key and publish a new one on their WKD only; the next refreshes
    assert km.consider(BOB, keys.old_revoked, WKD).decision == "merged"
    d = km.consider(BOB, keys.new, WKD)
    assert (d.decision, d.rule) == ("replaced", "3.3"), d.reason
    assert km.describe(BOB)["fingerprint"] == read_key(keys.new, datetime.now(UTC)).fingerprint


def test_two_hkp_servers_with_the_same_key_stay_weak_chain(ladder, keys):
    km = ladder()
    d = km.first_contact(BOB, [(keys.old, HKP), (keys.old, HKP)])
    assert d is not None and d.level is Level.WEAK_CHAIN
    assert km.describe(BOB)["encrypt"] is False


# -- the store written by the old rules --------------------------------------------------------


def test_a_consensus_registration_of_the_old_rules_is_corrected_at_start(tmp_path):
    """tests/data/store-v1-consensus.sqlite3 was written by refreshd at 5608e89 (schema 1):
    `KeyManager.first_contact(bob, [(key, wkd), (key, vks)])`, which registered the key at
    third-party-consensus from "consensus:vks+wkd"."""
    from refreshd.daemon import Daemon

    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(DATA / "store-v1-consensus.sqlite3", state / "refreshd.sqlite3")
    shutil.copy(DATA / "store-v1-consensus.audit.jsonl", state / "audit.jsonl")
    old = Store(state / "refreshd.sqlite3")  # only to read what is there before
    before = old.db.execute("SELECT fingerprint, level FROM addresses").fetchall()
    old.close()
    assert before[0]["level"] == "third-party-consensus"
    cfg = from_mapping({"daemon": {"state_dir": str(state), "socket": str(tmp_path / "s")}})
    daemon = Daemon(cfg)
    try:
        answer = daemon.keys.describe(BOB)
        assert answer["fingerprint"] == before[0][0]  # the same key stays registered
        assert (answer["validation"], answer["source"]) == ("provider-trust", "wkd")
        corrected = events(daemon.keys, "key.level_corrected")
        assert [(e["old_level"], e["new_level"], e["fingerprint"]) for e in corrected] == [
            ("third-party-consensus", "provider-trust", before[0][0])
        ]
        assert daemon.keys.correct_levels() == 0  # done once
        assert daemon.keys.history(BOB)["keys"][0]["validation"] == "provider-trust"
    finally:
        daemon.store.close()
        daemon.audit.close()


# -- pins ---------------------------------------------------------------------------------------


def test_a_pinned_address_registers_its_key_at_known_key_and_takes_no_other(ladder, keys):
    pinned = read_key(keys.old, datetime.now(UTC)).fingerprint
    km = ladder(known_keys={BOB: pinned})
    assert km.consider(BOB, keys.new, WKD).decision == "rejected"  # not the pinned key
    d = km.consider(BOB, keys.old, HKP)
    assert (d.decision, d.level) == ("registered", Level.KNOWN_KEY)
    assert "pinned by the user" in km.describe(BOB)["reason"]
    km.consider(BOB, keys.old_revoked, HKP)  # even revoked, rule 3.3 does not apply to a pin
    d = km.consider(BOB, keys.new, WKD)
    assert (d.decision, d.rule) == ("rejected", "3") and "pinned to" in d.reason
    assert km.verify(BOB, read_key(keys.new, datetime.now(UTC)).fingerprint).rule == "3.2"


# -- endorsers ----------------------------------------------------------------------------------


def test_one_endorser_of_three_is_third_party_endorsement(ladder, keys):
    km = ladder(endorsers="all")
    d = km.consider(BOB, keys.by_e1, HKP)
    assert (d.decision, d.level) == ("registered", Level.THIRD_PARTY_ENDORSEMENT), d.reason
    assert f"certified by endorser 0x{keys.e1}" in km.describe(BOB)["reason"]
    assert events(km, "key.registered")[-1]["basis"] == f"certified by endorser 0x{keys.e1}"
    (seen,) = [k for k in km.history(BOB)["keys"] if k["fingerprint"] == d.fingerprint]
    assert f"certified by endorser 0x{keys.e1}" in seen["reason"]


@pytest.mark.parametrize(
    ("consensus", "level"),
    [(2, Level.THIRD_PARTY_CONSENSUS), (3, Level.THIRD_PARTY_ENDORSEMENT)],
)
def test_gpg_and_sq_certifications_make_consensus(ladder, keys, consensus, level):
    km = ladder(endorsers="all", consensus=consensus)
    d = km.consider(BOB, keys.by_e1_e2, HKP)
    assert (d.decision, d.level) == ("registered", level), d.reason
    assert keys.e1 in d.reason and keys.e2 in d.reason


def test_an_endorser_certifying_another_key_blocks_consensus(ladder, keys):
    km = ladder(endorsers="all", consensus=2)
    km.consider(BOB, keys.by_e3_other, HKP)  # e3 vouches for another key for bob
    d = km.consider(BOB, keys.by_e1_e2, HKP)
    assert d.fingerprint == keys.by_e1_e2_fpr
    assert d.level is Level.THIRD_PARTY_ENDORSEMENT, d.reason


@pytest.mark.parametrize("variant", ["expired_cert", "other_uid", "revoked_later"])
def test_expired_revoked_and_other_uid_certifications_do_not_count(ladder, keys, variant):
    km = ladder(endorsers="all")
    d = km.consider(BOB, getattr(keys, variant), WKD)
    assert (d.decision, d.level) == ("registered", Level.PROVIDER_TRUST), d.reason


def test_a_revoked_endorsement_lowers_the_level_it_gave(ladder, keys):
    km = ladder(endorsers="all")
    assert km.consider(BOB, keys.revoked, WKD).level is Level.THIRD_PARTY_ENDORSEMENT
    d = km.consider(BOB, keys.revoked_later, WKD)  # the refreshed copy brings the revocation
    assert (d.decision, d.level) == ("merged", Level.PROVIDER_TRUST), d.reason
    assert "lowered from third-party-endorsement" in d.reason
    assert km.describe(BOB)["validation"] == "provider-trust"


def test_certifications_by_keys_that_are_not_endorsers_do_not_count(ladder, keys):
    km = ladder(endorsers=[keys.e3])
    assert km.consider(BOB, keys.by_e1_e2, WKD).level is Level.PROVIDER_TRUST
