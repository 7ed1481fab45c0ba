"""Verifying Keyserver API v1 (keys.openpgp.org): lookups and the own key's upload.

Rules:
- Lookups: GET <base>/vks/v1/by-fingerprint/<FPR, upper-case hex> and
  GET <base>/vks/v1/by-email/<percent-encoded address>; the body is the armored key.
  No redirects are followed.
- Upload: POST <base>/vks/v1/upload with JSON {"keytext": "<armored>"}; request-verify:
  POST <base>/vks/v1/request-verify with {"token": ..., "addresses": [...]}. Both answer
  {"key_fpr": ..., "status": {address: "unpublished" | "published" | "revoked" | "pending"},
  "token": ...}; errors answer {"error": "..."} with a 4xx/5xx status.
- An answer that does not have that shape is refused with a reason (`SourceError`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

from refreshd.errors import SourceError
from refreshd.net.answers import json_object, normalize_fingerprint
from refreshd.net.fetch import Kind, Request, Validators
from refreshd.net.wkd import split_address

__all__ = ["by_email", "by_fingerprint", "read_upload", "upload"]

ADDRESS_STATES = frozenset({"unpublished", "published", "revoked", "pending"})
JSON = "application/json"


@dataclass(frozen=True)
class UploadResult:
    key_fpr: str
    status: Mapping[str, str]  # address -> one of ADDRESS_STATES
    token: str


def by_fingerprint(base: str, fpr: str, validators: Validators | None = None) -> Request:
    url = f"{base.rstrip('/')}/vks/v1/by-fingerprint/{normalize_fingerprint(fpr)}"
    return Request(url, validators=validators)


def by_email(base: str, address: str, validators: Validators | None = None) -> Request:
    split_address(address)
    url = f"{base.rstrip('/')}/vks/v1/by-email/{quote(address.strip(), safe='')}"
    return Request(url, validators=validators)


def upload(base: str, armored: str) -> Request:
    body = json.dumps({"keytext": armored}).encode("utf-8")
    return Request(
        f"{base.rstrip('/')}/vks/v1/upload", "POST", body=body, content_type=JSON, kind=Kind.JSON
    )


def _error_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = answer.get("error") if isinstance(answer, dict) else None
    return f": {error[:200]}" if isinstance(error, str) else ""


def read_upload(status: int, body: bytes) -> UploadResult:
    """The answer to `upload`; SourceError when it is unusable."""
    if status != 200:
        raise SourceError(f"keyserver answered {status}{_error_text(body)}")
    answer = json_object(body, "keyserver answer")
    fpr, states, token = answer.get("key_fpr"), answer.get("status"), answer.get("token")
    if not isinstance(fpr, str):
        raise SourceError("keyserver answer has no key_fpr")
    if not isinstance(token, str):
        raise SourceError("keyserver answer has no token")
    if not isinstance(states, dict) or not all(
        isinstance(a, str) and s in ADDRESS_STATES for a, s in states.items()
    ):
        raise SourceError("keyserver answer has no valid status per address")
    return UploadResult(normalize_fingerprint(fpr), MappingProxyType(dict(states)), token)
