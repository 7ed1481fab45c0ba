"""What verification remembers stays small however large and many the keys it sees."""

from __future__ import annotations

import gc
import os
import tracemalloc

from refreshd.openpgp import verify


def test_many_large_distinct_keys_do_not_grow_the_memo() -> None:
    verify.clear_caches()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(6000):  # more than the memo holds, each with 32 KB of its own octets
            body, material = os.urandom(16 << 10), os.urandom(16 << 10)
            assert verify._verified(body, 1, material, 8, os.urandom(32)) is False
        del body, material
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        verify.clear_caches()
    # 4,096 remembered results of 32-byte keys; holding the octets would be over 128 MB
    assert kept < 4 << 20, kept


def test_a_result_is_remembered_and_a_different_input_is_not_confused_with_it() -> None:
    memo: verify.Memo[int] = verify.Memo(2)
    calls: list[str] = []

    def compute(name: str) -> int:
        calls.append(name)
        return len(calls)

    assert memo.get((b"ab", b"c"), lambda: compute("abc")) == 1
    assert memo.get((b"ab", b"c"), lambda: compute("again")) == 1  # remembered
    assert memo.get((b"a", b"bc"), lambda: compute("a|bc")) == 2  # same octets, other parts
    assert memo.get((b"x",), lambda: compute("x")) == 3
    assert len(memo) == 2  # the oldest went
    assert memo.get((b"ab", b"c"), lambda: compute("abc, later")) == 4
