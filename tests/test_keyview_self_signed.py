"""keyview.self_signed: which self-signatures decide a key at a time (the ones openpgp/resign.py
supersedes when it extends the own key), and the facts read from them, on keys signed here
packet by packet (tests/selfsigned.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from refreshd.openpgp.keyview import (
    hash_preferences,
    parse_one,
    self_signed,
    stated_flags,
    states_key_expiry,
)
from refreshd.openpgp.packets import parse_signature
from tests.keyfactory import _subpacket, new_packet
from tests.selfsigned import T0, UID, UID2, Maker

NOW = datetime.fromtimestamp(T0 + 86_400, UTC)


def _read(maker: Maker, *packets):
    return self_signed(parse_one(maker.key(*packets), keep_all=True), NOW)


def test_the_newest_binding_of_each_component_decides() -> None:
    m = Maker()
    uid = new_packet(13, UID)
    old_uid = m.sign(m.uid_ctx(UID), 0x13, T0, _subpacket(27, b"\x03"))
    new_uid = m.sign(m.uid_ctx(UID), 0x13, T0 + 100, _subpacket(27, b"\x01"))
    old_sub = m.sign(m.sub_ctx(), 0x18, T0 + 10, _subpacket(27, b"\x0c"))
    new_sub = m.sign(m.sub_ctx(), 0x18, T0 + 200, _subpacket(27, b"\x04"))
    signed = _read(m, m.packet, uid, new_uid, old_uid, m.sub, new_sub, old_sub)
    ((user_id, binding),) = signed.uids
    assert user_id.uid == UID.decode() and binding.created == T0 + 100
    ((subkey, sub_binding),) = signed.subkeys
    assert subkey.fingerprint == signed.view.subkeys[0].fingerprint
    assert sub_binding.created == T0 + 200
    assert signed.direct is None


def test_a_signature_made_after_now_decides_nothing_yet() -> None:
    m = Maker()
    uid = new_packet(13, UID)
    later = m.sign(m.uid_ctx(UID), 0x13, int(NOW.timestamp()) + 60, _subpacket(27, b"\x03"))
    signed = _read(m, m.packet, uid, m.binding(), later, m.sub, m.subkey_binding())
    assert signed.uids[0][1].created == T0
    assert signed.view.newest_self_signature == datetime.fromtimestamp(T0, UTC)


def test_the_direct_key_signature_is_handed_on() -> None:
    m = Maker()
    direct = m.sign(m.context, 0x1F, T0 + 5, _subpacket(9, (86_400 * 30).to_bytes(4, "big")))
    signed = _read(m, m.packet, direct, new_packet(13, UID), m.binding())
    assert signed.direct is not None and signed.direct.created == T0 + 5
    assert states_key_expiry(signed.direct)


def test_a_binding_that_sits_on_another_component_is_handed_on_where_it_signs() -> None:
    m = Maker()
    first, second = new_packet(13, UID), new_packet(13, UID2)
    for_second = m.sign(m.uid_ctx(UID2), 0x13, T0 + 7, _subpacket(27, b"\x03"))
    signed = _read(m, m.packet, first, m.binding(), for_second, second)
    by_uid = {u.uid: sig.created for u, sig in signed.uids}
    assert by_uid == {UID.decode(): T0, UID2.decode(): T0 + 7}


def test_a_uid_revocation_is_the_newest_self_signature_when_it_came_last() -> None:
    m = Maker()
    uid = new_packet(13, UID)
    revocation = m.sign(m.uid_ctx(UID), 0x30, T0 + 500)
    signed = _read(m, m.packet, uid, m.binding(), revocation, m.sub, m.subkey_binding())
    assert signed.uids[0][0].revoked
    assert signed.view.newest_self_signature == datetime.fromtimestamp(T0 + 500, UTC)


def test_facts_stated_in_a_signature() -> None:
    m = Maker()
    bare = parse_signature(m.sign(m.context, 0x1F, T0).body)
    assert stated_flags(bare) is None
    assert hash_preferences(bare) == ()
    assert not states_key_expiry(bare)
    zero = parse_signature(m.sign(m.context, 0x1F, T0, _subpacket(9, bytes(4))).body)
    assert not states_key_expiry(zero)  # 0 states no expiry, as in gpg and sq
    rich = parse_signature(
        m.sign(
            m.context,
            0x1F,
            T0,
            _subpacket(27, b"\x03")
            + _subpacket(21, bytes([10, 8, 2]))
            + _subpacket(9, b"\0\0\0\x01"),
        ).body
    )
    assert stated_flags(rich) == {"certify", "sign"}
    assert hash_preferences(rich) == (10, 8, 2)
    assert states_key_expiry(rich)
