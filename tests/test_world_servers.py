"""nginx (WKD), SKS and the nicknym server behave as the end-to-end tests rely on, checked
directly on loopback with TLS verified against the local CA (no Tor needed)."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.world import names
from tests.world.ca import LocalCA
from tests.world.keys import GpgKey, fingerprints_of, make_key
from tests.world.nginx import WkdServer, wkd_hash, wkd_path
from tests.world.nicknym import CODES, NicknymServer
from tests.world.sks import SksServer

WKS_CLIENT = "/usr/lib/gnupg/gpg-wks-client"


@pytest.fixture(scope="module")
def key() -> GpgKey:
    return make_key("Erin.Web@example.net")


@pytest.fixture
def https(test_ca: LocalCA) -> Iterator[httpx.Client]:
    with httpx.Client(verify=test_ca.client_context(), trust_env=False, timeout=10) as client:
        yield client


def get_direct(
    client: httpx.Client, port: int, url: str, address: str = "127.0.0.1", **headers: str
) -> httpx.Response:
    """GET `url` on <address>:<port> with the URL's host as Host and SNI (nothing resolved)."""
    parsed = httpx.URL(url)
    target = parsed.copy_with(host=address, port=port)
    host = parsed.host
    return client.get(target, headers={"Host": host, **headers}, extensions={"sni_hostname": host})


@pytest.mark.parametrize(
    "address",
    ["Erin.Web@example.net", "UPPER@example.org", "mixed.Case+tag@example.com", "ünï@example.org"],
)
def test_wkd_hash_matches_gpg(address: str) -> None:
    printed = subprocess.run(
        [WKS_CLIENT, "--print-wkd-hash", address], capture_output=True, text=True, check=True
    ).stdout.split()
    assert wkd_hash(address.rpartition("@")[0]) == printed[0]


@pytest.mark.e2e
def test_wkd_layouts_validators_and_republish(
    wkd_server: WkdServer, https: httpx.Client, key: GpgKey
) -> None:
    placed = wkd_server.publish_wkd(key.address, key.binary)
    assert set(placed) == {"advanced", "direct"}
    for method in ("advanced", "direct"):
        url = wkd_server.wkd_url(key.address, method)
        answer = get_direct(https, wkd_server.port, url)
        assert answer.status_code == 200
        assert fingerprints_of(answer.content) == [key.fingerprint]
        etag, modified = answer.headers["etag"], answer.headers["last-modified"]
        assert get_direct(https, wkd_server.port, url, **{"If-None-Match": etag}).status_code == 304
        assert (
            get_direct(https, wkd_server.port, url, **{"If-Modified-Since": modified}).status_code
            == 304
        )
        host, path = wkd_path(key.address, method)
        policy = path.rsplit("/hu/", 1)[0] + "/policy"
        assert get_direct(https, wkd_server.port, f"https://{host}{policy}").status_code == 200

    url = wkd_server.wkd_url(key.address)
    etag = get_direct(https, wkd_server.port, url).headers["etag"]
    wkd_server.publish_wkd(key.address, key.binary)  # same bytes, same second: still a change
    answer = get_direct(https, wkd_server.port, url, **{"If-None-Match": etag})
    assert answer.status_code == 200
    assert answer.headers["etag"] != etag

    wkd_server.remove_wkd(key.address)
    assert get_direct(https, wkd_server.port, url).status_code == 404


@pytest.mark.e2e
def test_wkd_access_log_and_accept_count(wkd_server: WkdServer, https: httpx.Client) -> None:
    before_accepts = wkd_server.accepted_connections()
    path = f"/.well-known/openpgpkey/hu/{secrets.token_hex(8)}?l=x"
    url = wkd_server.url_for("example.org", path)
    get_direct(https, wkd_server.port, url, **{"X-Probe": "1", "Accept-Language": "de"})
    get_direct(https, wkd_server.port, url)
    entries = wkd_server.wait_log(path, 2)
    assert [e.status for e in entries] == [404, 404]
    assert entries[0].headers["accept-language"] == "de"
    assert "accept-language" not in entries[1].headers
    # An unlisted header still shows in the request length.
    assert entries[0].request_length > entries[1].request_length
    assert entries[0].sni == "example.org"
    # One keep-alive connection carried both requests.
    assert entries[0].connection == entries[1].connection
    assert wkd_server.accepted_connections() == before_accepts + 1


@pytest.mark.e2e
def test_nicknym_capability_files_served_by_nginx(
    wkd_server: WkdServer, nicknym_server: NicknymServer, https: httpx.Client
) -> None:
    base = f"https://{names.NICKNYM_DOMAIN}"
    discovery = get_direct(https, wkd_server.port, f"{base}/.well-known/key-discovery")
    assert discovery.status_code == 200
    assert "nicknym" in discovery.text.splitlines()
    provider = get_direct(https, wkd_server.port, f"{base}/provider.json")
    assert provider.headers["content-type"] == "application/json"
    assert json.loads(provider.content)["nicknym_uri"] == nicknym_server.nicknym_uri


@pytest.mark.e2e
def test_sks_serves_uploaded_key(sks_server: SksServer, key: GpgKey) -> None:
    assert sks_server.get(key.fingerprint) is None
    assert sks_server.add_key(key.armored) == 200
    served = sks_server.get(key.fingerprint)
    assert served is not None
    assert fingerprints_of(served) == [key.fingerprint]

    before = sks_server.counts()
    with httpx.Client(trust_env=False) as client:
        answer = client.get(
            f"{sks_server.url}/pks/lookup",
            params={"op": "get", "options": "mr", "search": f"0x{key.fingerprint}"},
        )
    assert fingerprints_of(answer.content) == [key.fingerprint]
    assert "etag" not in answer.headers
    after = sks_server.counts()
    assert after.accepts == before.accepts + 1
    assert after.bytes_down - before.bytes_down >= len(answer.content)


# -- nicknym ---------------------------------------------------------------------------------


def nicknym_get(
    client: httpx.Client, server: NicknymServer, query: str, **headers: str
) -> httpx.Response:
    return get_direct(
        client, server.port, f"{server.nicknym_uri}{query}", server.address, **headers
    )


def test_nicknym_answers_by_address_and_fingerprint(
    nicknym_server: NicknymServer, https: httpx.Client, key: GpgKey
) -> None:
    address = "frank.nick@example.com"
    nicknym_server.publish(address, key.armored, key.fingerprint)
    by_address = nicknym_get(https, nicknym_server, f"?address={address}")
    assert by_address.status_code == 200
    body = by_address.json()
    assert body["address"] == address
    assert fingerprints_of(body["openpgp"].encode()) == [key.fingerprint]
    by_fpr = nicknym_get(https, nicknym_server, f"?fingerprint={key.fingerprint.lower()}")
    assert by_fpr.json() == body

    since = by_address.headers["last-modified"]
    assert (
        nicknym_get(
            https, nicknym_server, f"?address={address}", **{"If-Modified-Since": since}
        ).status_code
        == 304
    )
    assert nicknym_get(https, nicknym_server, "?address=nobody@example.com").status_code == 404
    assert (
        nicknym_get(https, nicknym_server, "?address=someone@elsewhere.example").status_code == 502
    )
    for bad in (
        "",
        "?address=",
        "?address=a@b&fingerprint=AB",
        "?fingerprint=xyz",
        "?address=a@b&address=c@d",
    ):
        assert nicknym_get(https, nicknym_server, bad).status_code == 400, bad
    posted = https.post(
        f"https://{nicknym_server.address}:{nicknym_server.port}/?address={address}",
        headers={"Host": nicknym_server.host},
        extensions={"sni_hostname": nicknym_server.host},
    )
    assert posted.status_code == 405


@pytest.mark.parametrize("code", CODES)
def test_nicknym_forced_codes(
    nicknym_server: NicknymServer, https: httpx.Client, key: GpgKey, code: int
) -> None:
    address = f"code{code}@example.com"
    nicknym_server.publish(address, key.armored, key.fingerprint)
    nicknym_server.set_response(address=address, status=code)
    seen = len(nicknym_server.requests())
    try:
        answer = nicknym_get(https, nicknym_server, f"?address={address}")
    finally:
        nicknym_server.clear_response(address=address)
    assert answer.status_code == code
    assert [r.status for r in nicknym_server.requests()[seen:]] == [code]
    if code == 200:
        assert answer.json()["fingerprint"] == key.fingerprint
    assert nicknym_get(https, nicknym_server, f"?address={address}").status_code == 200


def test_nicknym_forced_body_and_unknown_code(
    nicknym_server: NicknymServer, https: httpx.Client
) -> None:
    fpr = "AB" * 20
    nicknym_server.set_response(fingerprint=fpr, status=200, body=b"\x00garbage")
    try:
        answer = nicknym_get(https, nicknym_server, f"?fingerprint={fpr}")
    finally:
        nicknym_server.clear_response(fingerprint=fpr)
    assert answer.content == b"\x00garbage"
    with pytest.raises(ValueError):
        nicknym_server.set_response(fingerprint=fpr, status=418)


def test_ca_file_is_a_pem_bundle(test_ca: LocalCA) -> None:
    assert Path(test_ca.ca_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
