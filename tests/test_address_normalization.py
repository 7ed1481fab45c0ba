"""The ASCII fast path of address normalisation agrees with the full IDNA (UTS 46) path."""

from __future__ import annotations

import idna
from hypothesis import given
from hypothesis import strategies as st

from refreshd.openpgp.keyview import _LABEL, normalize_address

ascii_domains = st.text(alphabet="abcXYZ019-._~ ", min_size=1, max_size=30)


def slow(domain: str) -> str | None:
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_domain


@given(ascii_domains)
def test_ascii_domains_normalise_as_idna_does(domain):
    got = normalize_address(f"bob@{domain}")
    want = slow(domain.rstrip(" "))  # white space around a user id is not part of its address
    assert got == (None if want is None else f"bob@{want}")


def test_examples():
    assert normalize_address("Bob <Bob@Example.ORG>") == "Bob@example.org"
    assert normalize_address("bob@bücher.example") == "bob@xn--bcher-kva.example"
    assert normalize_address("bob@XN--BCHER-KVA.example") == "bob@xn--bcher-kva.example"
    assert normalize_address("bob@xn--zz.example") is None  # invalid punycode
    assert normalize_address("bob@-bad.example") is None
