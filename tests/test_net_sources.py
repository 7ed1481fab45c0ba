"""The four key sources: request builders and answer readers (pure), with gpg-wks-client as the
oracle for WKD hashing and hypothesis for every reader."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd.errors import SourceError
from refreshd.net import hkp, nicknym, vks, wkd
from refreshd.net.answers import Outcome, normalize_fingerprint
from refreshd.net.fetch import Kind, Redirects, Validators

WKS_CLIENT = "/usr/lib/gnupg/gpg-wks-client"
FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
ARMORED = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjMEZ\n-----END PGP PUBLIC KEY BLOCK-----\n"

ADDRESSES = [
    "alice@example.org",
    "Alice@Example.ORG",
    "BOB.SMITH@example.net",
    "joe.doe@Example.org",
    "Joe.Doe@example.org",
    "x@example.org",
    "a+tag@example.org",
    "first_last@sub.example.org",
    "UPPER_lower-123@example.com",
    "o'brien@example.ie",
    "jörg@example.de",
    "JÖRG@example.de",
    "Jörg.Müller@example.de",
    "zoë@example.org",
    "ÉLODIE@example.fr",
    "δοκιμή@example.gr",
    "ДМИТРИЙ@example.ru",
    "用户@example.cn",
    "ǅemal@example.org",
    "ﬁnance@example.org",
]


def test_wkd_hash_matches_gpg_wks_client() -> None:
    out = subprocess.run(
        [WKS_CLIENT, "--print-wkd-hash", *ADDRESSES],
        capture_output=True,
        check=True,
        text=True,
        timeout=30,
    ).stdout.splitlines()
    assert len(out) == len(ADDRESSES) == 20
    for address, line in zip(ADDRESSES, out, strict=True):
        expected_hash, expected_address = line.split(" ", 1)
        local, domain = wkd.split_address(address)
        assert (wkd.wkd_hash(address.rpartition("@")[0]), f"{local}@{domain}") == (
            expected_hash,
            expected_address,
        ), address


def test_wkd_urls_match_gpg_wks_client() -> None:
    """Same URL as gpg's, except that we percent-encode "+" in l= (a form decoder reads a space)."""
    for address in ("Joe.Doe@Example.ORG", "a+tag@example.org", "jörg@example.de"):
        expected = subprocess.run(
            [WKS_CLIENT, "--print-wkd-url", address],
            capture_output=True,
            check=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        advanced, direct = wkd.requests_for(address)
        ours, gpgs = urlsplit(advanced.url), urlsplit(expected)
        assert (ours.netloc, ours.path) == (gpgs.netloc, gpgs.path)
        assert unquote(ours.query) == unquote(gpgs.query)
        _, domain = wkd.split_address(address)
        assert direct.url == advanced.url.replace(
            f"openpgpkey.{domain}/.well-known/openpgpkey/{domain}/",
            f"{domain}/.well-known/openpgpkey/",
        )
        assert advanced.redirects is direct.redirects is Redirects.SAME_DOMAIN_HTTPS
        assert advanced.kind is Kind.KEY


def test_zbase32_known_vectors() -> None:
    assert wkd.zbase32(b"") == ""
    assert wkd.zbase32(b"\x00") == "yy"
    assert wkd.zbase32(b"\xf0\xbf\xc7") == "6n9hq"  # the z-base-32 specification's example


def test_wkd_requests_carry_validators() -> None:
    v = Validators(etag='"x"')
    assert all(r.validators == v for r in wkd.requests_for("a@example.org", v))


@pytest.mark.parametrize(
    "bad", ["", "no-at-sign", "@example.org", "a@", "a@b/c.org", "a@exa mple.org", "a@localhost"]
)
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(SourceError, match="not an email address"):
        wkd.requests_for(bad)


def test_same_address_is_exact_on_the_local_part_and_not_on_the_domain() -> None:
    assert wkd.same_address("alice@example.org", "alice@Example.org")
    assert not wkd.same_address("alice@example.org", "Alice@example.org")
    assert not wkd.same_address("alice@example.org", "mallory@example.org")
    assert not wkd.same_address("alice@example.org", "alice@example.net")
    assert not wkd.same_address("@example.org", "@example.org")


def test_nicknym_capability_requests() -> None:
    provider, discovery = nicknym.capability_requests("Example.org")
    assert provider.url == "https://example.org/provider.json" and provider.kind is Kind.JSON
    assert discovery.url == "https://example.org/.well-known/key-discovery"
    assert provider.redirects is discovery.redirects is Redirects.SAME_DOMAIN_HTTPS


@pytest.mark.parametrize(
    ("provider", "discovery", "uri", "reason"),
    [
        (
            (200, b'{"nicknym_uri": "https://nicknym.example.org:6425"}'),
            None,
            "https://nicknym.example.org:6425",
            "names",
        ),
        ((404, b""), (200, b"nicknym\n"), "https://nicknym.example.org:6425", "key-discovery"),
        ((200, b"<html>"), (200, b""), "https://nicknym.example.org:6425", "key-discovery"),
        ((200, b"<html>"), (404, b""), None, "provider.json is not valid JSON"),
        ((200, b"[]"), None, None, "not a JSON object"),
        ((200, b"{}"), (404, b""), None, "names no nicknym_uri"),
        ((200, b'{"nicknym_uri": "http://nicknym.example.org"}'), None, None, "not an https URL"),
        ((200, b'{"nicknym_uri": "https://nicknym.evil.net"}'), None, None, "another domain"),
        ((200, b'{"nicknym_uri": "https://x.example.org:99999"}'), None, None, "not a URL"),
        ((500, b""), None, None, "provider.json answered 500; key-discovery: no answer"),
        (None, None, None, "no answer"),
    ],
)
def test_nicknym_capability(
    provider: tuple[int, bytes] | None,
    discovery: tuple[int, bytes] | None,
    uri: str | None,
    reason: str,
) -> None:
    cap = nicknym.read_capability("example.org", provider, discovery)
    assert cap.nicknym_uri == uri and reason in cap.reason


def test_nicknym_queries() -> None:
    uri = "https://nicknym.example.org:6425"
    req = nicknym.by_address(uri, "a+b@example.org", Validators(etag='"1"'))
    assert parse_qs(urlsplit(req.url).query) == {"address": ["a+b@example.org"]}
    assert req.kind is Kind.JSON and req.validators == Validators(etag='"1"')
    req = nicknym.by_address(uri + "/?v=2", "a@example.org")
    assert parse_qs(urlsplit(req.url).query) == {"v": ["2"], "address": ["a@example.org"]}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (304, Outcome.UNCHANGED),
        (400, Outcome.ERROR),
        (404, Outcome.NOT_FOUND),
        (409, Outcome.NOT_ENDORSED),
        (410, Outcome.GONE),
        (500, Outcome.RETRY_LATER),
        (502, Outcome.RETRY_LATER),
        (504, Outcome.RETRY_LATER),
        (418, Outcome.ERROR),
    ],
)
def test_nicknym_status_codes(status: int, outcome: Outcome) -> None:
    answer = nicknym.read_answer(status, b"ignored")
    assert (answer.outcome, answer.key) == (outcome, None) and str(status) in answer.reason


def test_nicknym_key_answers() -> None:
    body = json.dumps({"address": "Alice@example.org", "openpgp": ARMORED}).encode()
    answer = nicknym.read_answer(200, body, "Alice@EXAMPLE.org")
    assert (answer.outcome, answer.key) == (Outcome.KEY, ARMORED)
    assert nicknym.read_answer(200, ARMORED.encode()).key == ARMORED
    wrong = nicknym.read_answer(200, body, "bob@example.org")
    assert wrong.outcome is Outcome.REJECTED and "another address" in wrong.reason
    no_key = nicknym.read_answer(200, b'{"address": "a@example.org", "openpgp": 5}')
    assert no_key.outcome is Outcome.REJECTED and "no armored key" in no_key.reason
    assert "neither JSON" in nicknym.read_answer(200, b"garbage").reason
    assert "not UTF-8" in nicknym.read_answer(200, b"\xff\xfe").reason


def test_nicknym_negative_cache() -> None:
    cache = nicknym.NegativeCache()
    assert not cache.knows("example.org", 0.0)
    cache = cache.remember("Example.ORG", now=100.0, ttl=50.0)
    assert cache.knows("example.org", 120.0) and not cache.knows("other.org", 120.0)
    assert not cache.knows("example.org", 150.0)
    later = cache.remember("other.org", now=200.0, ttl=50.0)
    assert dict(later.until) == {"other.org": 250.0}  # the expired entry is dropped
    assert cache.knows("example.org", 120.0)  # the old value is unchanged


def test_vks_requests() -> None:
    base = "https://keys.example.net/"
    assert (
        vks.by_fingerprint(base, FPR.lower()).url
        == f"https://keys.example.net/vks/v1/by-fingerprint/{FPR}"
    )
    assert vks.by_email(base, "a+b@example.org").url == (
        "https://keys.example.net/vks/v1/by-email/a%2Bb%40example.org"
    )
    up = vks.upload(base, ARMORED)
    assert (up.method, up.content_type, up.kind) == ("POST", "application/json", Kind.JSON)
    assert json.loads(up.body or b"") == {"keytext": ARMORED}


def test_vks_upload_answers() -> None:
    body = json.dumps(
        {"key_fpr": FPR.lower(), "status": {"a@example.org": "unpublished"}, "token": "t0k"}
    ).encode()
    result = vks.read_upload(200, body)
    assert (result.key_fpr, dict(result.status), result.token) == (
        FPR,
        {"a@example.org": "unpublished"},
        "t0k",
    )
    with pytest.raises(SourceError, match="answered 400: Invalid key"):
        vks.read_upload(400, b'{"error": "Invalid key"}')
    with pytest.raises(SourceError, match=r"answered 502$"):
        vks.read_upload(502, b"<html>bad gateway</html>")
    with pytest.raises(SourceError, match="valid status"):
        vks.read_upload(
            200, json.dumps({"key_fpr": FPR, "status": {"a": "odd"}, "token": "t"}).encode()
        )
    with pytest.raises(SourceError, match="no token"):
        vks.read_upload(200, json.dumps({"key_fpr": FPR, "status": {}}).encode())


def test_hkp_urls() -> None:
    assert hkp.base_url("hkp://keys.example.net") == "http://keys.example.net:11371"
    assert hkp.base_url("hkps://keys.example.net") == "https://keys.example.net:443"
    assert hkp.base_url("hkp://keys.example.net:8080/") == "http://keys.example.net:8080"
    assert hkp.base_url("https://keys.example.net/sub/") == "https://keys.example.net:443/sub"
    assert hkp.base_url("hkps://[::1]:9") == "https://[::1]:9"
    req = hkp.lookup("hkp://keys.example.net", FPR.lower())
    assert req.url == (f"http://keys.example.net:11371/pks/lookup?op=get&options=mr&search=0x{FPR}")
    assert req.redirects is Redirects.NONE and req.kind is Kind.KEY
    for bad in ("ldap://keys.example.net", "hkp://", "hkp://host:99999", "keys.example.net"):
        with pytest.raises(SourceError, match="not a keyserver URL"):
            hkp.base_url(bad)


def test_hkp_lookup_by_address() -> None:
    req = hkp.lookup_address("hkps://keys.example.net", "A+b@example.org")
    assert urlsplit(req.url).path == "/pks/lookup"
    query = parse_qs(urlsplit(req.url).query)
    assert query == {"op": ["get"], "options": ["mr"], "search": ["A+b@example.org"]}
    with pytest.raises(SourceError):
        hkp.lookup_address("hkps://keys.example.net", "not an address")


def test_hkp_upload() -> None:
    req = hkp.upload("hkps://keys.example.net", ARMORED)
    assert req.url == "https://keys.example.net:443/pks/add" and req.method == "POST"
    assert req.content_type == "application/x-www-form-urlencoded"
    assert parse_qs((req.body or b"").decode()) == {"keytext": [ARMORED]}
    hkp.read_upload(200, b"Key block added")
    with pytest.raises(SourceError, match="refused the upload with 500: boom"):
        hkp.read_upload(500, b"boom")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (FPR.lower(), FPR),
        ("0x" + FPR, FPR),
        (" ".join([FPR[i : i + 4] for i in range(0, 40, 4)]), FPR),
        ("A" * 64, "A" * 64),
    ],
)
def test_fingerprints(text: str, expected: str) -> None:
    assert normalize_fingerprint(text) == expected


# -- hostile input: every reader gives an answer or SourceError, nothing else -----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "key_fpr": st.one_of(st.text(max_size=70), st.just(FPR), st.integers()),
        "status": st.one_of(
            json_values,
            st.dictionaries(st.text(max_size=10), st.sampled_from(sorted(vks.ADDRESS_STATES))),
        ),
        "token": st.one_of(st.text(max_size=10), st.none()),
        "address": st.one_of(st.text(max_size=20), st.just("a@example.org"), st.integers()),
        "openpgp": st.one_of(st.text(max_size=20), st.just(ARMORED), st.none()),
        "nicknym_uri": st.one_of(
            st.text(max_size=40), st.just("https://n.example.org:6425/"), st.integers()
        ),
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100000),
    st.just(b'{"a":' * 5000),
)
statuses = st.sampled_from([200, 200, 200, 304, 400, 404, 409, 410, 500, 502, 504, 302, 0, 999])


@given(statuses, bodies, st.one_of(st.none(), st.just("a@example.org"), st.text(max_size=20)))
def test_nicknym_reader_never_raises(status: int, body: bytes, address: str | None) -> None:
    answer = nicknym.read_answer(status, body, address)
    assert isinstance(answer.outcome, Outcome) and answer.reason
    assert (answer.key is not None) == (answer.outcome is Outcome.KEY)


@given(statuses, bodies, statuses, bodies)
def test_capability_reader_never_raises(ps: int, pb: bytes, ds: int, db: bytes) -> None:
    cap = nicknym.read_capability("example.org", (ps, pb), (ds, db))
    assert cap.reason
    if cap.nicknym_uri is not None:
        assert cap.nicknym_uri.startswith("https://")


@given(statuses, bodies)
def test_vks_reader_gives_a_result_or_a_reason(status: int, body: bytes) -> None:
    try:
        result = vks.read_upload(status, body)
    except SourceError as exc:
        assert exc.reason
    else:
        assert status == 200 and result.key_fpr == FPR and isinstance(result.token, str)


@given(statuses, bodies)
def test_hkp_upload_reader(status: int, body: bytes) -> None:
    try:
        hkp.read_upload(status, body)
    except SourceError as exc:
        assert str(status) in exc.reason
    else:
        assert 200 <= status < 300


@given(st.text(max_size=60))
def test_builders_refuse_or_build(text: str) -> None:
    for build in (
        lambda: wkd.requests_for(text),
        lambda: vks.by_email("https://keys.example.net", text),
        lambda: vks.by_fingerprint("https://keys.example.net", text),
        lambda: hkp.lookup("hkp://keys.example.net", text),
        lambda: hkp.base_url(text),
    ):
        try:
            build()
        except SourceError as exc:
            assert exc.reason
