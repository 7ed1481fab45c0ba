"""Merging refreshed copies: real expiry changes made by gpg at different (faked) times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import parse_one, read_key
from refreshd.openpgp.merge import merge
from refreshd.openpgp.packets import Bundle, Cert
from tests import keyfactory as kf


@pytest.fixture(scope="session")
def zoo() -> kf.Zoo:
    return kf.zoo()


def gpg_expiry(key: bytes, home: Path) -> int | None:
    for line in kf.gpg_oracle(key, home).decode().splitlines():
        f = line.split(":")
        if f[0] == "pub":
            return int(f[6]) if f[6] else None
    raise AssertionError("gpg listed no key")


def test_the_chain_really_changes_expiry(zoo: kf.Zoo) -> None:
    c = zoo.chain
    t1, t2, t3 = (read_key(c[n], datetime.now(UTC)) for n in ("t1-short", "t2-long", "t3-shorter"))
    assert t1.expires and t2.expires and t3.expires
    assert t1.expires < t3.expires < t2.expires
    assert t1.newest_self_signature < t2.newest_self_signature < t3.newest_self_signature


def test_replayed_older_copy_keeps_the_stored_expiry(zoo: kf.Zoo, tmp_path: Path) -> None:
    stored, older = zoo.chain["t2-long"], zoo.chain["t1-short"]
    result = merge(stored, older, now=datetime.now(UTC))
    assert result.expiry_refused
    assert not result.changed
    assert result.view.expires == read_key(stored, datetime.now(UTC)).expires
    assert [s.expires for s in result.view.subkeys] == [
        s.expires for s in read_key(stored, datetime.now(UTC)).subkeys
    ]
    assert "kept the stored expiry" in result.reason
    assert gpg_expiry(result.key, tmp_path / "g") == int(result.view.expires.timestamp())


def test_newer_self_signature_with_shorter_expiry_is_taken(zoo: kf.Zoo, tmp_path: Path) -> None:
    stored, newer = zoo.chain["t2-long"], zoo.chain["t3-shorter"]
    result = merge(stored, newer, now=datetime.now(UTC))
    assert not result.expiry_refused
    assert result.changed
    assert (
        result.view.expires
        == read_key(newer, datetime.now(UTC)).expires
        < read_key(stored, datetime.now(UTC)).expires
    )
    assert result.view.subkeys[0].expires == read_key(newer, datetime.now(UTC)).subkeys[0].expires
    assert gpg_expiry(result.key, tmp_path / "g") == int(result.view.expires.timestamp())
    again = merge(
        result.key, stored, now=datetime.now(UTC)
    )  # the older, longer copy coming back changes nothing
    assert again.view.expires == result.view.expires
    assert not again.changed and not again.expiry_refused


def test_newer_longer_expiry_is_taken(zoo: kf.Zoo) -> None:
    result = merge(zoo.chain["t1-short"], zoo.chain["t2-long"], now=datetime.now(UTC))
    assert result.view.expires == read_key(zoo.chain["t2-long"], datetime.now(UTC)).expires
    assert result.changed and not result.expiry_refused


def test_same_copy_is_unchanged(zoo: kf.Zoo) -> None:
    key = zoo.chain["t3-shorter"]
    result = merge(key, key, now=datetime.now(UTC))
    assert not result.changed and not result.expiry_refused
    assert result.key == key
    assert result.reason == "the fresh copy holds nothing new"


def test_new_subkey_uid_and_revocation_are_taken(zoo: kf.Zoo) -> None:
    c = zoo.chain
    with_subkey = merge(c["t3-shorter"], c["t4-new-subkey"], now=datetime.now(UTC))
    assert (
        len(with_subkey.view.subkeys)
        == len(read_key(c["t3-shorter"], datetime.now(UTC)).subkeys) + 1
    )
    assert "1 new subkey" in with_subkey.reason
    with_uid = merge(with_subkey.key, c["t5-new-uid"], now=datetime.now(UTC))
    assert with_uid.view.addresses() == {"chain@example.org", "chain@two.example"}
    revoked = merge(with_uid.key, c["t6-revoked"], now=datetime.now(UTC))
    assert revoked.view.revoked and revoked.changed
    assert read_key(revoked.key, datetime.now(UTC)).revoked


def test_copy_without_uids_still_merges(zoo: kf.Zoo) -> None:
    stored = zoo.chain["t2-long"]
    bare = kf.without_uids(zoo.chain["t4-new-subkey"])
    result = merge(stored, bare, now=datetime.now(UTC))
    assert result.changed
    assert len(result.view.subkeys) == 2
    assert result.view.addresses() == read_key(stored, datetime.now(UTC)).addresses()
    # the subkey binding of t3 is newer, its shorter expiry is taken for the subkey
    t3 = read_key(zoo.chain["t3-shorter"], datetime.now(UTC))
    old_sub = {s.fingerprint: s for s in result.view.subkeys}[t3.subkeys[0].fingerprint]
    assert old_sub.expires == t3.subkeys[0].expires


def test_different_key_is_rejected(zoo: kf.Zoo) -> None:
    with pytest.raises(KeyRejected, match="different key"):
        merge(zoo.chain["t2-long"], zoo.keys["gpg-ed25519-1y"], now=datetime.now(UTC))


def test_signatures_that_do_not_verify_are_dropped(zoo: kf.Zoo) -> None:
    stored, newer = zoo.chain["t2-long"], zoo.chain["t3-shorter"]
    cert = parse_one(newer)

    def forge(bundle: Bundle) -> Bundle:
        sigs = []
        for sig in bundle.sigs:
            body = bytearray(sig.body)
            body[-1] ^= 1
            sigs.append(kf.new_packet(2, bytes(body)))
        return Bundle(bundle.packet, tuple(sigs))

    forged = Cert(cert.primary, tuple(map(forge, cert.uids)), tuple(map(forge, cert.subkeys)))
    result = merge(stored, forged.serialize(), now=datetime.now(UTC))
    assert not result.changed
    assert result.view.expires == read_key(stored, datetime.now(UTC)).expires
    assert "do not verify" in result.reason
    for bundle in forged.uids + forged.subkeys:
        for sig in bundle.sigs:
            assert sig.body not in result.key
