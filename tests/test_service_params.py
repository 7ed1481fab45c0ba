"""The socket's address parameter: parsed once per spelling, with a bounded memo that long
input never enters."""

from __future__ import annotations

import contextlib

import pytest

from refreshd.keymanager import MAX_ADDRESS_TEXT, address_or_none
from refreshd.rpc import RpcError
from refreshd.service import SPELLINGS_KEPT, _normalized, address_param


@pytest.mark.parametrize(
    "text",
    ["alice@example.org", " Bob@EXAMPLE.org", "élise@bücher.example", "x@xn--bcher-kva.example"],
)
def test_an_address_is_the_same_asked_once_or_again(text):
    _normalized.cache_clear()
    first, again = address_param(text), address_param(text)
    assert first == again == address_or_none(text)
    assert _normalized.cache_info().hits == 1


@pytest.mark.parametrize("text", ["<alice@example.org>", "alice", "a@b", "a@-x.org", ""])
def test_what_is_no_address_is_refused_asked_once_or_again(text):
    for _ in range(2):
        with pytest.raises(RpcError, match="is not an email address"):
            address_param(text)


def test_the_memo_is_bounded_and_long_input_never_enters_it():
    _normalized.cache_clear()
    for i in range(3 * SPELLINGS_KEPT):  # each long, none an address, all remembered
        with contextlib.suppress(RpcError):
            address_param(f"{'u' * 400}{i}@example.org")
    assert _normalized.cache_info().currsize == SPELLINGS_KEPT
    before = _normalized.cache_info()
    long = "u" * MAX_ADDRESS_TEXT + "@example.org"
    for _ in range(3):
        with pytest.raises(RpcError):
            address_param(long)
    after = _normalized.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)
