"""The Autocrypt Level 1 header reader (refreshd/core/autocrypt.py): what voids a header, what
is taken from it, the message date and the last_seen rule; hostile values never raise."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from refreshd.core.autocrypt import (
    Header,
    PreferEncrypt,
    Void,
    changes_state,
    effective_date,
    message_date,
    parse,
)

BOB = "bob@example.org"
KEY = bytes(range(256)) * 3  # parse() only decodes; the key manager judges the bytes


def folded(attrs: str, keydata: bytes = KEY) -> str:
    """A header value as a mail client keeps it after reading: base64 folded into 76-column
    lines with CRLF and a leading blank, as a sending MUA wraps a long header."""
    b64 = base64.b64encode(keydata).decode()
    lines = [b64[i : i + 76] for i in range(0, len(b64), 76)]
    return f"{attrs} keydata=\r\n " + "\r\n ".join(lines)


def test_a_folded_header_gives_the_key_and_the_preference() -> None:
    header = parse(folded(f"addr={BOB}; prefer-encrypt=mutual;"), BOB)
    assert header == Header(BOB, KEY, PreferEncrypt.MUTUAL)


def test_without_prefer_encrypt_or_with_another_value_it_is_nopreference() -> None:
    for attrs in (f"addr={BOB};", f"addr={BOB}; prefer-encrypt=nopreference;",
                  f"addr={BOB}; prefer-encrypt=always;"):  # fmt: skip
        header = parse(folded(attrs), BOB)
        assert isinstance(header, Header)
        assert header.prefer_encrypt is PreferEncrypt.NOPREFERENCE


def test_addr_is_compared_as_an_address() -> None:
    assert isinstance(parse(folded("addr=bob@EXAMPLE.org;"), BOB), Header)
    void = parse(folded("addr=mallory@example.org;"), BOB)
    assert isinstance(void, Void) and "mallory@example.org" in void.reason


def test_an_unknown_critical_attribute_voids_the_header_a_non_critical_one_does_not() -> None:
    void = parse(folded(f"addr={BOB}; type=1;"), BOB)
    assert isinstance(void, Void) and "'type'" in void.reason
    header = parse(folded(f"addr={BOB}; _venue=lab; prefer-encrypt=mutual;"), BOB)
    assert isinstance(header, Header) and header.prefer_encrypt is PreferEncrypt.MUTUAL


def test_missing_repeated_or_malformed_attributes_void_it() -> None:
    cases = {
        "no addr": folded("prefer-encrypt=mutual;"),
        "no keydata": f"addr={BOB}; prefer-encrypt=mutual",
        "twice": folded(f"addr={BOB}; addr={BOB};"),
        "no =": folded(f"addr={BOB}; mutual;"),
        "not base64": f"addr={BOB}; keydata=****",
        "empty key": f"addr={BOB}; keydata=",
    }
    for name, value in cases.items():
        assert isinstance(parse(value, BOB), Void), name


def test_gossip_never_carries_a_preference() -> None:
    header = parse(folded(f"addr={BOB}; prefer-encrypt=mutual;"), BOB, gossip=True)
    assert isinstance(header, Header) and header.prefer_encrypt is PreferEncrypt.NOPREFERENCE


def test_message_dates_in_both_forms() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert message_date("Wed, 04 Mar 2026 06:06:07 +0100") == moment
    assert message_date("2026-03-04T05:06:07+00:00") == moment
    assert message_date("2026-03-04T05:06:07") == moment
    for garbage in ("", "yesterday", "Wed, 99 Foo 2026", "\x00" * 10, "9" * 5000):
        assert message_date(garbage) is None


def test_the_last_seen_rule() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert effective_date(None, now) == now
    assert effective_date(now + timedelta(days=3), now) == now  # a date in the future: now
    older = effective_date(now - timedelta(days=1), now)
    assert changes_state(older, None)
    assert not changes_state(older, now)
    assert changes_state(now, older) and changes_state(now, now)


attribute_names = st.one_of(
    st.sampled_from(["addr", "keydata", "prefer-encrypt", "_x", "type", "ADDR", ""]),
    st.text(max_size=12),
)


@given(st.text(max_size=3000))
def test_any_text_is_a_header_or_void(value: str) -> None:
    assert isinstance(parse(value, BOB), Header | Void)


@given(
    st.lists(st.tuples(attribute_names, st.text(max_size=40)), max_size=8),
    st.binary(min_size=1, max_size=200),
)
def test_assembled_headers_follow_the_rules(attrs: list[tuple[str, str]], key: bytes) -> None:
    value = "; ".join(f"{n}={v}" for n, v in attrs) + f"; keydata={base64.b64encode(key).decode()}"
    result = parse(value, BOB)
    names = [n.strip() for n, _ in attrs]
    critical_unknown = any(
        n and not n.startswith("_") and n not in ("addr", "prefer-encrypt") for n in names
    )
    if isinstance(result, Header):
        assert not critical_unknown
        assert result.addr == BOB and result.keydata == key
        assert names.count("addr") == 1
    elif critical_unknown:
        assert isinstance(result, Void)
