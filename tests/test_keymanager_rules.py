"""Replacement rules 3.1-3.5 both ways, with real keys made by gpg, sq and pgpy, through the
key manager, its store and its audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.audit import AuditLog
from refreshd.config import Config, DaemonConfig
from refreshd.core.levels import Level, Way
from refreshd.core.rules import UseEvent
from refreshd.keymanager import Found, KeyManager
from refreshd.openpgp.keyview import read_key
from refreshd.store import Store
from tests.keyfactory import Workshop, pgpy_key

BOB = "bob@example.org"
WKD = Found(Way.WKD, Level.PROVIDER_TRUST, True)
HKP = Found(Way.HKP, Level.WEAK_CHAIN, False)


@dataclass
class Keys:
    a: bytes  # gpg, Ed25519, 1 year: the registered key in most cases
    a_fpr: str
    b_transition: bytes  # sq key certified by A on bob's uid
    b_other_uid: bytes  # sq key with two uids, certified by A only on robert's
    b_other_signer: bytes  # sq key certified by C (not the registered key) on bob's uid
    p: bytes  # pgpy key, 5 years
    p_fpr: str
    rsa: bytes  # gpg RSA key, no expiry
    r: bytes  # sq key, 1 year, later revoked
    r_revoked: bytes
    extra: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    ws = Workshop(tmp_path_factory.mktemp("keys"))
    try:
        g, s = ws.gpg, ws.sq
        a_fpr = g.generate(f"Bob <{BOB}>", expire="1y")
        c_fpr = g.generate("Carol <carol@example.net>", expire="1y")

        def certified(secret: bytes, signer: str, uid: str) -> bytes:
            public = s.cert(secret)
            g.run("--import", data=public)
            fpr = read_key(public, datetime.now(UTC)).fingerprint
            g.certify(signer, fpr, uid)
            return g.export(fpr)

        b1 = s.generate(f"<{BOB}>", expires_in="5y")
        b2 = s.generate(f"<{BOB}>", "<robert@example.org>", expires_in="5y")
        b3 = s.generate(f"<{BOB}>", expires_in="5y")
        rsa_fpr = g.generate(f"Bob RSA <{BOB}>", algo="rsa2048", expire="never")
        r_secret = s.generate(f"<{BOB}>", expires_in="1y")
        p = pgpy_key(f"Bob P <{BOB}>", expires=timedelta(days=5 * 365))
        return Keys(
            a=g.export(a_fpr),
            a_fpr=a_fpr,
            b_transition=certified(b1, a_fpr, f"<{BOB}>"),
            b_other_uid=certified(b2, a_fpr, "<robert@example.org>"),
            b_other_signer=certified(b3, c_fpr, f"<{BOB}>"),
            p=p,
            p_fpr=read_key(p, datetime.now(UTC)).fingerprint,
            rsa=g.export(rsa_fpr),
            r=s.cert(r_secret),
            r_revoked=s.revoke_certificate(r_secret),
        )
    finally:
        ws.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def km(tmp_path: Path):
    cfg = Config(daemon=DaemonConfig(state_dir=tmp_path, socket=tmp_path / "s"))
    store, audit = Store(cfg.database), AuditLog(cfg.audit_file)
    manager = KeyManager(store, audit, cfg, Clock())
    yield manager
    store.close()
    audit.close()


def events(km: KeyManager) -> list[dict]:
    return [json.loads(line) for line in km.audit.path.read_text().splitlines()]


def register(km: KeyManager, key: bytes, found: Found = WKD) -> str:
    d = km.consider(BOB, key, found)
    assert d.decision == "registered", d.reason
    return d.fingerprint


def test_3_1_transition_on_the_right_uid_replaces(km, keys):
    register(km, keys.a)
    d = km.consider(BOB, keys.b_transition, HKP)  # even at a lower level
    assert (d.decision, d.rule) == ("replaced", "3.1"), d.reason
    assert km.describe(BOB)["fingerprint"] == d.fingerprint
    statuses = {k["fingerprint"]: k["status"] for k in km.history(BOB)["keys"]}
    assert statuses == {keys.a_fpr: "retired", d.fingerprint: "registered"}
    assert events(km)[-1]["event"] == "key.replaced"


@pytest.mark.parametrize("which", ["b_other_uid", "b_other_signer"])
def test_3_1_certification_on_another_uid_or_by_another_key_is_rejected(km, keys, which):
    register(km, keys.a)
    d = km.consider(BOB, getattr(keys, which), WKD)
    assert d.decision == "rejected" and "No replacement rule" in d.reason
    assert km.describe(BOB)["fingerprint"] == keys.a_fpr
    assert events(km)[-1]["event"] == "key.rejected"


def test_3_2_user_verification_replaces(km, keys):
    register(km, keys.a)
    assert km.consider(BOB, keys.p, HKP).decision == "rejected"
    d = km.verify(BOB, keys.p_fpr)
    assert (d.decision, d.rule, d.level) == ("replaced", "3.2", Level.FINGERPRINT)
    assert km.verify(BOB, "F" * 40).decision == "rejected"  # a key we never saw


@pytest.mark.parametrize(
    ("found", "decision"),
    [
        (WKD, "replaced"),
        (HKP, "rejected"),
    ],
)
def test_3_3_expired_registered_key(km, keys, found, decision):
    register(km, keys.a)
    km.clock.now += timedelta(days=2 * 365)  # A (1 year) has expired, P (5 years) has not
    assert km.describe(BOB)["usable"] is False
    d = km.consider(BOB, keys.p, found)
    assert d.decision == decision, d.reason
    if decision == "replaced":
        assert d.rule == "3.3"


@pytest.mark.parametrize(("found", "decision"), [(WKD, "replaced"), (HKP, "rejected")])
def test_3_3_revoked_registered_key(km, keys, found, decision):
    r_fpr = register(km, keys.r)
    merged = km.consider(BOB, keys.r_revoked, WKD)
    assert merged.decision == "merged" and merged.fingerprint == r_fpr
    assert km.describe(BOB)["revoked"] is True and km.describe(BOB)["usable"] is False
    d = km.consider(BOB, keys.p, found)
    assert d.decision == decision, d.reason
    if decision == "replaced":
        assert d.rule == "3.3"


def test_3_4_never_used_key_gives_way_to_a_higher_level(km, keys):
    register(km, keys.a, HKP)
    assert km.used(BOB, keys.a_fpr, UseEvent.SENT_ENCRYPTED) is False  # one direction is not enough
    d = km.consider(BOB, keys.p, WKD)
    assert (d.decision, d.rule) == ("replaced", "3.4")


def test_3_4_successfully_used_key_stays(km, keys):
    register(km, keys.a, HKP)
    km.used(BOB, keys.a_fpr, UseEvent.SENT_ENCRYPTED)
    assert km.used(BOB, keys.a_fpr, UseEvent.RECEIVED_SIGNED) is True
    d = km.consider(BOB, keys.p, WKD)
    assert d.decision == "rejected" and "successfully used" in d.reason
    p_equal = km.consider(BOB, keys.p, HKP)
    assert p_equal.decision == "rejected"


def test_3_5_registered_key_without_expiry(km, keys):
    fpr = register(km, keys.rsa, WKD)
    assert km.describe(BOB)["expires"] is None
    km.used(BOB, fpr, UseEvent.SENT_ENCRYPTED)
    km.used(BOB, fpr, UseEvent.RECEIVED_SIGNED)
    d = km.consider(BOB, keys.p, HKP)  # lower level, used key: only rule 3.5 fires
    assert (d.decision, d.rule) == ("replaced", "3.5")


def test_retired_keys_are_kept_but_never_returned(km, keys):
    register(km, keys.a)
    km.consider(BOB, keys.b_transition, WKD)
    answer = km.describe(BOB, with_key=True)
    assert answer["fingerprint"] != keys.a_fpr
    assert km.store.get_key(keys.a_fpr) is not None  # kept for old signatures


def test_first_contact_and_positive_indication(km, keys):
    d = km.first_contact(BOB, [(keys.a, HKP), (keys.p, WKD)])
    assert d is not None and d.fingerprint == keys.p_fpr and d.level is Level.PROVIDER_TRUST
    assert km.describe(BOB)["encrypt"] is True
    other = "carol@example.net"
    assert km.first_contact(other, [(keys.a, HKP)]) is not None  # no uid for carol
    assert km.describe(other)["state"] == "unknown"


def test_hkp_alone_is_no_positive_indication(km, keys):
    register(km, keys.a, HKP)
    answer = km.describe(BOB)
    assert answer["usable"] is True and answer["encrypt"] is False
    assert "5.4" in answer["reason"]
    km.consider(BOB, keys.a, Found(Way.AUTOCRYPT, Level.WEAK_CHAIN, True))
    assert km.describe(BOB)["encrypt"] is True


def test_forged_uid_in_a_copy_is_rejected_and_changes_nothing(km, keys):
    from refreshd.openpgp.keyview import parse_one
    from refreshd.openpgp.packets import Bundle, Cert
    from tests.keyfactory import new_packet

    register(km, keys.a)
    cert = parse_one(keys.a)
    forged_uid = Bundle(new_packet(13, b"Mallory <bob@example.org>"), cert.uids[0].sigs)
    forged = Cert(cert.primary, (forged_uid, *cert.uids[1:]), cert.subkeys).serialize()
    before = km.store.get_key(keys.a_fpr)
    d = km.consider(BOB, forged, WKD)
    assert d.fingerprint == keys.a_fpr and d.decision in ("kept", "rejected")
    assert km.store.get_key(keys.a_fpr) == before
    dropped = [e for e in events(km) if e["event"] == "key.signatures_rejected"]
    assert dropped and "do not verify" in dropped[-1]["reason"] and dropped[-1]["dropped"] >= 1
