"""HKP keyservers (SKS, Hockeypuck): lookup by fingerprint and upload.

Rules:
- hkp://host[:port] is http on port 11371 unless given; hkps://host[:port] is https on 443
  unless given; http(s):// URLs are used as they are.
- Lookup: GET <base>/pks/lookup?op=get&options=mr&search=0x<FPR> (refresh) or search=<address>
  (first contact), armored answer, no redirects.
- Upload: POST <base>/pks/add, application/x-www-form-urlencoded, keytext=<armored>; any 2xx is
  success, anything else is refused with the status.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

from refreshd.errors import SourceError
from refreshd.net.answers import normalize_fingerprint
from refreshd.net.fetch import Kind, Request, Validators
from refreshd.net.wkd import split_address

__all__ = ["base_url", "lookup", "lookup_address", "read_upload", "upload"]

SCHEMES = {
    "hkp": ("http", 11371),
    "hkps": ("https", 443),
    "http": ("http", 80),
    "https": ("https", 443),
}


def base_url(url: str) -> str:
    """The http(s) base URL of a keyserver URL, without a trailing slash."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise SourceError(f"not a keyserver URL: {url[:200]!r}") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise SourceError(f"not a keyserver URL: {url[:200]!r}")
    scheme, default_port = SCHEMES[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit((scheme, f"{host}:{port or default_port}", parts.path.rstrip("/"), "", ""))


def lookup(url: str, fpr: str, validators: Validators | None = None) -> Request:
    query = urlencode({"op": "get", "options": "mr", "search": "0x" + normalize_fingerprint(fpr)})
    return Request(f"{base_url(url)}/pks/lookup?{query}", validators=validators)


def lookup_address(url: str, address: str, validators: Validators | None = None) -> Request:
    """First contact: the keyserver's keys whose uids mention the address (may be several)."""
    split_address(address)
    query = urlencode({"op": "get", "options": "mr", "search": address.strip()})
    return Request(f"{base_url(url)}/pks/lookup?{query}", validators=validators)


def upload(url: str, armored: str) -> Request:
    return Request(
        f"{base_url(url)}/pks/add",
        "POST",
        body=urlencode({"keytext": armored}).encode("ascii"),
        content_type="application/x-www-form-urlencoded",
        kind=Kind.TEXT,
    )


def read_upload(status: int, body: bytes) -> None:
    """Nothing when the keyserver took the key; SourceError otherwise."""
    if not 200 <= status < 300:
        text = body[:200].decode("utf-8", "replace").strip()
        raise SourceError(
            f"keyserver refused the upload with {status}" + (f": {text}" if text else "")
        )
