"""The streaming packet filter: stripping, caps, armor, and hostile input."""

from __future__ import annotations

import binascii
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.packets import StreamingKeyFilter, armor, crc24, crc24_update
from tests import keyfactory as kf

BIG = 1 << 26


@pytest.fixture(scope="session")
def zoo() -> kf.Zoo:
    return kf.zoo()


@pytest.fixture(scope="session")
def flooded(zoo: kf.Zoo) -> bytes:
    """The transition key (certified by "old") with 3,000 third-party certifications."""
    return kf.flood(zoo.transition["new-certified"], 3000)


@pytest.fixture(scope="session")
def secret_key(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return kf.Sq(tmp_path_factory.mktemp("sq")).generate("S <s@example.org>")


def stream(data: bytes, size: int, **caps: object) -> StreamingKeyFilter:
    options: dict[str, object] = {"max_response_bytes": BIG, "max_key_bytes": BIG, **caps}
    filt = StreamingKeyFilter(**options)  # type: ignore[arg-type]
    for i in range(0, len(data), size):
        filt.feed(data[i : i + size])
    return filt


def crc24_reference(data: bytes) -> int:
    """RFC 4880 6.1, bit by bit."""
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


# --- stripping ---------------------------------------------------------------------------------


def test_flood_is_stripped_to_the_original_key(zoo: kf.Zoo, flooded: bytes) -> None:
    original = zoo.transition["new-certified"]
    old = read_key(zoo.transition["old"], datetime.now(UTC))
    before = stream(original, 65536)
    before.finish()
    assert before.certifications_dropped == 2  # the old key certified both user ids
    filt = stream(flooded, 65536)
    (key,) = filt.finish()
    assert filt.certifications_dropped == 3000 + before.certifications_dropped
    assert filt.bytes_in == len(flooded)
    assert len(key) < len(original)
    assert read_key(key, datetime.now(UTC)) == read_key(
        original, datetime.now(UTC)
    )  # every self-signature kept
    kept = kf.strip_keys(
        flooded, max_response_bytes=BIG, max_key_bytes=BIG, keep_issuers=frozenset({old.key_id})
    )
    assert kept == [original]
    kept = kf.strip_keys(
        armor(flooded).encode(),
        max_response_bytes=BIG,
        max_key_bytes=BIG,
        keep_issuers=frozenset({old.fingerprint}),
    )
    assert kept == [original]


def test_armored_stream_in_any_chunking(zoo: kf.Zoo, flooded: bytes) -> None:
    small = zoo.keys["gpg-multi"]
    for size in (1, 2, 3, 5, 7, 64):
        assert stream(armor(small).encode(), size).finish() == [small]
    text = armor(flooded).encode()
    expected = stream(flooded, 1 << 20).finish()
    for size in (61, 4096, 1 << 20):
        assert stream(text, size).finish() == expected
    crlf = text.replace(b"\n", b"\r\n")
    assert stream(crlf, 333).finish() == expected


def test_armor_is_read_by_gpg_and_sq(zoo: kf.Zoo, tmp_path: Path) -> None:
    key = zoo.keys["gpg-multi"]
    text = armor(key).encode()
    assert subprocess.run(["gpg", "--dearmor"], input=text, capture_output=True).stdout == key
    assert kf.dearmor(text) == key


def test_sq_armor_with_headers_is_read(secret_key: bytes, tmp_path: Path) -> None:
    path = tmp_path / "k.pgp"
    path.write_bytes(secret_key)
    text = subprocess.run(["sq", "key", "extract-cert", str(path)], capture_output=True).stdout
    assert b"Comment:" in text
    (key,) = kf.strip_keys(text, max_response_bytes=BIG, max_key_bytes=BIG)
    assert key == kf.dearmor(text)


def test_several_certificates_and_blocks(zoo: kf.Zoo) -> None:
    a, b = zoo.keys["gpg-ed25519-1y"], zoo.keys["sq-cv25519-3y"]
    assert kf.strip_keys(a + b, max_response_bytes=BIG, max_key_bytes=BIG) == [a, b]
    text = f"Here are keys:\n{armor(a)}\nand\n{armor(b)}trailing words\n".encode()
    assert kf.strip_keys(text, max_response_bytes=BIG, max_key_bytes=BIG) == [a, b]


def test_unsupported_versions_are_skipped(zoo: kf.Zoo) -> None:
    key = zoo.keys["gpg-ed25519-1y"]
    v5 = bytes([key[0], key[1], 5]) + key[3:]  # same packets, primary claims version 5
    assert kf.strip_keys(v5 + key, max_response_bytes=BIG, max_key_bytes=BIG) == [key]
    with pytest.raises(KeyRejected, match="unsupported version"):
        kf.strip_keys(v5, max_response_bytes=BIG, max_key_bytes=BIG)


# --- caps --------------------------------------------------------------------------------------


def test_response_cap(flooded: bytes) -> None:
    filt = StreamingKeyFilter(max_response_bytes=100_000, max_key_bytes=BIG)
    with pytest.raises(KeyRejected, match="larger than the cap of 100000") as caught:
        for i in range(0, len(flooded), 4096):
            filt.feed(flooded[i : i + 4096])
    assert caught.value.reason.endswith("bytes")
    assert filt.bytes_in <= 100_000 + 4096
    with pytest.raises(KeyRejected):
        filt.feed(b"more")


def test_key_cap_applies_after_stripping(zoo: kf.Zoo, flooded: bytes) -> None:
    size = len(zoo.transition["new"])
    assert kf.strip_keys(flooded, max_response_bytes=BIG, max_key_bytes=size)
    with pytest.raises(KeyRejected, match="even after third-party certifications are stripped"):
        kf.strip_keys(flooded, max_response_bytes=BIG, max_key_bytes=size - 1)


# --- refusals ----------------------------------------------------------------------------------


def test_secret_keys_are_refused(secret_key: bytes) -> None:
    for data in (secret_key, kf.armor_secret(secret_key)):
        with pytest.raises(KeyRejected, match="secret key material"):
            kf.strip_keys(data, max_response_bytes=BIG, max_key_bytes=BIG)
        with pytest.raises(KeyRejected, match="secret key material"):
            read_key(data, datetime.now(UTC))


def _checksum_line(text: bytes) -> bytes:
    return next(line for line in text.splitlines() if line.startswith(b"=") and len(line) == 5)


def test_wrong_armor_checksum(zoo: kf.Zoo) -> None:
    text = armor(zoo.keys["gpg-multi"]).encode()
    line = _checksum_line(text)
    wrong = b"=" + binascii.b2a_base64(
        (int.from_bytes(binascii.a2b_base64(line[1:]), "big") ^ 1).to_bytes(3, "big"),
        newline=False,
    )
    with pytest.raises(KeyRejected, match="CRC24"):
        read_key(text.replace(line, wrong), datetime.now(UTC))
    # a flipped body character is caught by the checksum even where the packets still parse
    lines = text.splitlines()
    target = len(lines) // 2
    body = bytearray(lines[target])
    body[10] = ord("A") if body[10] != ord("A") else ord("B")
    lines[target] = bytes(body)
    with pytest.raises(KeyRejected):
        read_key(b"\n".join(lines), datetime.now(UTC))
    # armor without a checksum is allowed (RFC 9580)
    assert read_key(text.replace(line + b"\n", b""), datetime.now(UTC)) == read_key(
        text, datetime.now(UTC)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"hello world, no key here", "no armored public key block"),
        (b"\x00\x01\x02garbage", "no armored public key block"),
        (b"\x98\x00", "impossible length"),
        (b"\xc6\xe5abc", "partial body lengths"),
        (b"\x9b\x00\x00", "indeterminate length"),
        (b"\xc2\x05\x04\x10\x16\x08\x00", "only signatures, no public key"),
        (b"\xc2\x05\x04\x10\x16\x08\x00" * 17, "before any public key"),
        (b"\xc6\xff\xff\xff\xff\xff", "larger than the key size cap"),
        (b"-----BEGIN PGP MESSAGE-----\n\nabcd\n-----END PGP MESSAGE-----\n", "unexpected armor"),
        (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQ!!\n", "invalid base64"),
        (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQIN\n", "truncated"),
    ],
)
def test_garbage_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(KeyRejected, match=reason):
        kf.strip_keys(data, max_response_bytes=BIG, max_key_bytes=1 << 20)
    with pytest.raises(KeyRejected):
        read_key(data, datetime.now(UTC))


def test_truncation_inside_a_packet(zoo: kf.Zoo) -> None:
    key = zoo.keys["gpg-ed25519-1y"]
    for cut in (1, 2, 5, 30, len(key) - 1):
        with pytest.raises(KeyRejected, match="middle of a packet"):
            kf.strip_keys(key[:cut], max_response_bytes=BIG, max_key_bytes=BIG)


def test_length_running_past_the_data(zoo: kf.Zoo) -> None:
    key = bytearray(zoo.keys["gpg-ed25519-1y"])
    assert key[0] == 0x98  # old format, one-octet length
    key[1] = 0xFF
    with pytest.raises(KeyRejected):
        kf.strip_keys(bytes(key), max_response_bytes=BIG, max_key_bytes=BIG)
    key[1] = 3  # too short for a key packet, the rest is then out of step
    with pytest.raises(KeyRejected):
        read_key(bytes(key), datetime.now(UTC))


def test_only_key_rejected_escapes_for_arbitrary_bytes_quick() -> None:
    @given(st.binary(max_size=300))
    @settings(max_examples=300, deadline=None)
    def check(data: bytes) -> None:
        try:
            kf.strip_keys(data, max_response_bytes=BIG, max_key_bytes=1 << 16)
        except KeyRejected as exc:
            assert exc.reason

    check()


# --- CRC24 -------------------------------------------------------------------------------------


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=300))
@settings(max_examples=200, deadline=None)
def test_crc24_matches_the_bitwise_definition(data: bytes, split: int) -> None:
    assert crc24(data) == crc24_reference(data)
    assert crc24_update(crc24(data[:split]), data[split:]) == crc24_reference(data)
