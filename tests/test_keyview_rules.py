"""The rules at the top of keyview.py, one by one, on keys signed here packet by packet.

The keys are real Ed25519 keys (signatures verify); what varies is where a signature sits and
what its hashed area says, which no key generator lets a test choose.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import read_key, view_of
from refreshd.openpgp.packets import (
    Bundle,
    Cert,
    LoneSignatures,
    SecretKeyRefused,
    StreamingKeyFilter,
    armor,
)
from tests.keyfactory import _mpi, _subpacket, new_packet
from tests.selfsigned import T0, UID, UID2, Maker, critical, notation

NOW = datetime.fromtimestamp(T0 + 86_400, UTC)


@pytest.fixture
def alice() -> Maker:
    return Maker()


def test_a_plain_key_is_usable_and_encrypts(alice: Maker) -> None:
    view = read_key(alice.key(*alice.plain()), NOW)
    assert view.usable(NOW) and view.can_encrypt(NOW)
    assert view.addresses() == {"alice@example.org"}


def test_a_revocation_after_the_subkeys_revokes_the_key(alice: Maker) -> None:
    view = read_key(alice.key(*alice.plain(), alice.revocation()), NOW)
    assert view.revoked and not view.usable(NOW) and not view.can_encrypt(NOW)


def test_a_revocation_as_its_own_armor_block_revokes_after_or_before_the_key(
    alice: Maker,
) -> None:
    key, rev = alice.key(*alice.plain()), alice.revocation().raw
    for blocks in ((key, rev), (rev, key)):
        view = read_key("".join(armor(b) for b in blocks).encode(), NOW)
        assert view.revoked


def test_a_lone_revocation_certificate_is_handed_back_for_a_key_we_hold(alice: Maker) -> None:
    rev = alice.revocation()
    filt = StreamingKeyFilter(max_response_bytes=1 << 20, max_key_bytes=1 << 20)
    filt.feed(armor(rev.raw).encode())
    with pytest.raises(LoneSignatures) as caught:
        filt.finish_certificates()
    assert [p.raw for p in caught.value.signatures] == [rev.raw]


def test_a_v3_key_revocation_revokes(alice: Maker) -> None:
    v3 = alice.sign_v3(alice.context, 0x20, T0 + 60)
    assert read_key(alice.key(*alice.plain(), v3), NOW).revoked


def test_a_forged_revocation_does_not_revoke(alice: Maker) -> None:
    other = Maker()
    forged = other.sign(alice.context, 0x20, T0 + 60)  # right place, wrong signer
    assert not read_key(alice.key(*alice.plain(), forged), NOW).revoked


def test_a_revocation_made_after_now_is_not_in_force_yet(alice: Maker) -> None:
    key = alice.key(*alice.plain(), alice.revocation(created=T0 + 7 * 86_400))
    assert not read_key(key, NOW).revoked
    assert read_key(key, NOW + timedelta(days=7)).revoked


def test_a_key_created_in_the_future_is_refused_until_its_time(alice: Maker) -> None:
    future = Maker(created=T0 + 365 * 86_400)
    key = future.key(*future.plain())
    with pytest.raises(KeyRejected, match="created in the future"):
        read_key(key, NOW)
    assert read_key(key, NOW + timedelta(days=366)).usable(NOW + timedelta(days=366))


def test_an_expired_uid_binding_no_longer_binds(alice: Maker) -> None:
    expiring = alice.binding(extra=_subpacket(3, (3600).to_bytes(4, "big")))
    key = alice.key(alice.packet, new_packet(13, UID), expiring, alice.sub, alice.subkey_binding())
    early = read_key(key, datetime.fromtimestamp(T0 + 60, UTC))
    assert early.addresses() == {"alice@example.org"} and early.uids[0].expires is not None
    late = read_key(key, NOW)
    assert late.addresses() == frozenset()
    assert not late.usable(NOW) and not late.can_encrypt(NOW)


def test_an_expired_binding_of_one_uid_leaves_the_other(alice: Maker) -> None:
    expiring = alice.binding(UID2, extra=_subpacket(3, (3600).to_bytes(4, "big")))
    key = alice.key(*alice.plain()[:3], new_packet(13, UID2), expiring, *alice.plain()[3:])
    view = read_key(key, NOW)
    assert view.addresses() == {"alice@example.org"} and view.can_encrypt(NOW)


def test_a_critical_notation_voids_its_signature_a_plain_one_does_not(alice: Maker) -> None:
    noted = notation(b"test@example.org", b"x")
    for extra, listed in ((critical(20, noted), False), (_subpacket(20, noted), True)):
        binding = alice.binding(extra=extra)
        key = alice.key(alice.packet, new_packet(13, UID), binding, alice.sub)
        key += alice.subkey_binding().raw
        view = read_key(key, NOW)
        assert bool(view.uids) is listed
        assert view.can_encrypt(NOW) is listed


def test_an_unknown_critical_subpacket_voids_a_subkey_binding(alice: Maker) -> None:
    binding = alice.sign(alice.sub_ctx(), 0x18, T0, _subpacket(27, b"\x0c") + critical(99, b"?"))
    view = read_key(alice.key(*alice.plain()[:3], alice.sub, binding), NOW)
    assert view.subkeys == () and not view.can_encrypt(NOW)


def test_a_subkey_binding_alone_does_not_make_a_usable_key(alice: Maker) -> None:
    view = read_key(alice.key(alice.packet, alice.sub, alice.subkey_binding()), NOW)
    assert not view.primary.bound and view.primary.flags == frozenset()
    assert not view.usable(NOW) and not view.can_encrypt(NOW)


def test_misplaced_signatures_count_where_they_sign(alice: Maker) -> None:
    uid, uid2 = new_packet(13, UID), new_packet(13, UID2)
    # uid2's binding under uid, uid's under uid2, the subkey binding under the primary
    key = alice.key(
        alice.packet,
        alice.subkey_binding(),
        uid,
        alice.binding(UID2),
        uid2,
        alice.binding(UID),
        alice.sub,
    )
    view = read_key(key, NOW)
    assert view.addresses() == {"alice@example.org", "alice@work.example"}
    assert view.can_encrypt(NOW)


def test_two_copies_of_one_key_are_read_as_one(alice: Maker) -> None:
    first = alice.key(*alice.plain())
    second = alice.key(alice.packet, new_packet(13, UID2), alice.binding(UID2))
    view = read_key(first + second + first, NOW)
    assert view.addresses() == {"alice@example.org", "alice@work.example"}


def test_equal_timestamps_the_later_binding_decides(alice: Maker) -> None:
    expiring = alice.binding(extra=_subpacket(9, (600).to_bytes(4, "big")))
    plain = alice.binding()
    uid = new_packet(13, UID)
    assert read_key(alice.key(alice.packet, uid, expiring, plain), NOW).expires is None
    assert read_key(alice.key(alice.packet, uid, plain, expiring), NOW).expires is not None


def test_a_zero_key_expiration_on_a_newer_direct_signature_states_nothing(alice: Maker) -> None:
    uid = new_packet(13, UID)
    expiring = alice.binding(extra=_subpacket(9, (10 * 86_400).to_bytes(4, "big")))
    direct = alice.sign(alice.context, 0x1F, T0 + 60, _subpacket(9, b"\0\0\0\0"))
    view = read_key(alice.key(alice.packet, direct, uid, expiring), NOW)
    assert view.expires == datetime.fromtimestamp(T0 + 10 * 86_400, UTC)


def _rsa_key(e: int) -> bytes:
    n = (1 << 2047) | 1
    body = b"\x04" + T0.to_bytes(4, "big") + b"\x01" + _mpi(n.to_bytes(256, "big"))
    return body + _mpi(e.to_bytes((e.bit_length() + 7) // 8, "big"))


@pytest.mark.parametrize(
    ("e", "reason"), [((1 << 2000) + 1, "exponent of 2001 bits"), (65536, "exponent of 17 bits")]
)
def test_absurd_rsa_exponents_are_refused_at_read_time(e: int, reason: str) -> None:
    key = new_packet(6, _rsa_key(e)).raw + new_packet(13, UID).raw
    with pytest.raises(KeyRejected, match=reason):
        read_key(key, NOW)


def test_a_dsa_size_the_backend_cannot_verify_is_named_as_such() -> None:
    """Nothing here can sign with such a key: the reason must name the limit, not blame the
    key's signatures (the corpus test shows gpg and sq verifying real ones)."""
    p, q = (1 << 1016) | 1, (1 << 159) | 1
    fields = b"".join(_mpi(v.to_bytes((v.bit_length() + 7) // 8, "big")) for v in (p, q, 2, 3))
    body = b"\x04" + T0.to_bytes(4, "big") + b"\x11" + fields
    with pytest.raises(KeyRejected, match="DSA with a 1017-bit p and a 160-bit q cannot be"):
        read_key(new_packet(6, body).raw + new_packet(13, UID).raw, NOW)


def test_the_view_of_a_parsed_cert_places_signatures_too(alice: Maker) -> None:
    parts = alice.plain()
    cert = Cert(
        Bundle(alice.packet),
        (Bundle(parts[1], (parts[2],)),),
        (Bundle(parts[3], (parts[4], alice.revocation())),),
    )
    assert view_of(cert, NOW).revoked


def test_misplaced_signature_search_is_bounded(alice: Maker, monkeypatch) -> None:
    """300 user ids whose bindings all fail: each is tried where it stands and the search
    elsewhere stops after MAX_RELOCATIONS tries, so a hostile key cannot make it quadratic."""
    from refreshd.openpgp import keyview

    parts = [alice.packet]
    for i in range(300):
        uid = f"U{i} <u{i}@example.org>".encode()
        ghost = alice.uid_ctx(b"someone else")  # by alice, but over no user id of this key
        parts += [new_packet(13, uid), alice.sign(ghost, 0x13, T0)]
    calls = 0
    real = keyview.verify

    def counting(*args: object) -> bool:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(keyview, "verify", counting)
    with pytest.raises(KeyRejected):
        read_key(alice.key(*parts), NOW)
    assert calls <= 2 * 300 + 256


def test_the_refusals_with_their_own_class_survive_a_worker_process(alice: Maker) -> None:
    """Key intake runs in worker processes (refreshd/worker.py): what it raises is pickled."""
    import pickle

    lone = LoneSignatures((alice.revocation(),))
    back = pickle.loads(pickle.dumps(lone))
    assert isinstance(back, LoneSignatures) and back.signatures == lone.signatures
    assert back.reason == lone.reason
    secret = pickle.loads(pickle.dumps(SecretKeyRefused()))
    assert isinstance(secret, SecretKeyRefused) and "public keys only" in secret.reason
