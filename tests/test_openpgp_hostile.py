"""Hostile input: random mutations of real keys and arbitrary bytes never raise anything but
KeyRejected from read_key, StreamingKeyFilter, merge or certifies_uid."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.merge import merge
from refreshd.openpgp.packets import StreamingKeyFilter, armor
from tests import keyfactory as kf
from tests.keyfactory import certifies_uid

MUTATIONS = 10_000
SEEDS = ("gpg-multi", "gpg-rsa2048-never", "sq-cv25519-3y", "pgpy-ed25519-30d", "sq-revoked")


@pytest.fixture(scope="session")
def zoo() -> kf.Zoo:
    return kf.zoo()


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not buf:
            break
        i = rng.randrange(len(buf))
        op = rng.randrange(6)
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.randrange(256)
        elif op == 2:
            del buf[i : i + rng.randrange(1, 40)]
        elif op == 3:
            buf[i:i] = rng.randbytes(rng.randrange(1, 20))
        elif op == 4:
            del buf[i:]
        else:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j : j + rng.randrange(1, 200)]
    return bytes(buf)


NOW = datetime.now(UTC)


def merge_now(stored: bytes, fresh: bytes) -> object:
    return merge(stored, fresh, now=NOW)


def survive(call, *args) -> str:  # type: ignore[no-untyped-def]
    """'ok' or 'rejected'; any other exception fails the test."""
    try:
        call(*args)
    except KeyRejected as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return "rejected"
    return "ok"


def filter_all(data: bytes) -> list[bytes]:
    filt = StreamingKeyFilter(max_response_bytes=1 << 20, max_key_bytes=1 << 16)
    for i in range(0, len(data), 97):
        filt.feed(data[i : i + 97])
    return filt.finish()


def test_ten_thousand_mutations_of_real_keys(zoo: kf.Zoo) -> None:
    rng = random.Random(20240229)
    seeds = [zoo.keys[name] for name in SEEDS]
    seeds += [armor(zoo.keys["gpg-multi"]).encode(), zoo.transition["new-certified"]]
    old = zoo.transition["old"]
    outcomes: dict[str, int] = {"ok": 0, "rejected": 0}
    for n in range(MUTATIONS):
        original = seeds[n % len(seeds)]
        mutated = mutate(original, rng)
        outcomes[survive(read_key, mutated, NOW)] += 1
        survive(filter_all, mutated)
        if n % 5 == 0:
            survive(merge_now, original, mutated)
            survive(merge_now, mutated, original)
        if n % 7 == 0:
            survive(certifies_uid, mutated, old, "tess@example.org")
            survive(certifies_uid, zoo.transition["new-certified"], mutated, "tess@example.org")
    # both outcomes occur: the mutations are neither all harmless nor all fatal
    assert outcomes["ok"] > 100 and outcomes["rejected"] > 1000


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes(data: bytes) -> None:
    survive(read_key, data, NOW)
    survive(filter_all, data)


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_structured_splices(data: st.DataObject) -> None:
    """Packets of real keys cut and recombined: plausible headers, hostile contents."""
    zoo = kf.zoo()
    a = zoo.keys[data.draw(st.sampled_from(SEEDS))]
    b = zoo.keys[data.draw(st.sampled_from(SEEDS))]
    i = data.draw(st.integers(0, len(a)))
    j = data.draw(st.integers(0, len(b)))
    spliced = a[:i] + b[j:]
    survive(read_key, spliced, NOW)
    survive(merge_now, a, spliced)
