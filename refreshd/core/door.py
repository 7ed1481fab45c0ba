"""The local keyserver door's HTTP answers (SPEC 11), from a request line to a response.

Rules:
- HKP (draft-shaw-openpgp-hkp): `GET /pks/lookup` with `op=get` (the armored key) or
  `op=index`/`op=vindex` (a listing; `options=mr` gives the machine-readable form gpg and sq
  parse), `search` = an address or `0x` + a v4 fingerprint (40 hex digits).
- VKS (keys.openpgp.org): `GET /vks/v1/by-email/ADDRESS`, `GET /vks/v1/by-fingerprint/FPR`.
- By address only the key registered for it, and only while usable; by fingerprint a key
  registered or retired for some address (old signatures must verify). Never a rejected key.
- Uploads (`/pks/add`, `/vks/v1/upload`, `/vks/v1/request-verify`) are refused with 403; other
  methods than GET and HEAD are 405; anything else is 400 or 404 with one readable sentence.
- A refused peer (another user) is audited at most once per `REFUSAL_INTERVAL`, with the number
  of refusals left unaudited since the last line, so a flood cannot fill the audit log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import parse_qsl, unquote, urlsplit

from refreshd.core.rules import LookupState
from refreshd.openpgp.keyview import KeyView, normalize_address
from refreshd.openpgp.packets import ALGORITHMS

__all__ = [
    "By",
    "Op",
    "Query",
    "RefusalLog",
    "Response",
    "index",
    "key",
    "refused_because",
    "route",
    "text",
]

MAX_TARGET = 4096  # request targets longer than this are not lookups
REFUSAL_INTERVAL = 60.0  # seconds between two socket.refused lines of the door
_FINGERPRINT = re.compile(r"^(?:0x)?([0-9A-Fa-f]{40})$")
_ALGORITHM_ID = {name: number for number, name in reversed(ALGORITHMS.items())}
KEYS_TYPE = "application/pgp-keys"
TEXT_TYPE = "text/plain; charset=utf-8"


class Op(StrEnum):
    GET = "get"
    INDEX = "index"


class By(StrEnum):
    ADDRESS = "address"
    FINGERPRINT = "fingerprint"


@dataclass(frozen=True)
class Query:
    """What a client asked for."""

    op: Op
    by: By
    value: str  # a normalised address, or 40 upper-case hex digits
    machine_readable: bool = False


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def text(status: int, sentence: str) -> Response:
    return Response(status, TEXT_TYPE, (sentence + "\n").encode())


UPLOADS = ("/pks/add", "/vks/v1/upload", "/vks/v1/request-verify")
REFUSE_UPLOAD = text(
    403, "This is refreshd's local keyserver door: it hands out the keys refreshd decided on and "
    "accepts no uploads (publish your own key with refreshd's own.upload)."
)  # fmt: skip


def route(method: str, target: str) -> Query | Response:
    """The query in a request, or the answer that says why there is none."""
    if len(target) > MAX_TARGET:
        return text(414, "The request target is too long for a key lookup.")
    parts = urlsplit(target)
    path = parts.path
    if path in UPLOADS:
        return REFUSE_UPLOAD
    if method not in ("GET", "HEAD"):
        return text(405, f"Method {method[:16]} is not allowed here; lookups use GET.")
    if path == "/pks/lookup":
        return _hkp(parts.query)
    for prefix, by in (
        ("/vks/v1/by-email/", By.ADDRESS),
        ("/vks/v1/by-fingerprint/", By.FINGERPRINT),
    ):
        if path.startswith(prefix):
            return _search(Op.GET, unquote(path[len(prefix) :]), by)
    return text(404, "Not a lookup: use /pks/lookup (HKP) or /vks/v1/by-email/, by-fingerprint/.")


def _hkp(query: str) -> Query | Response:
    try:
        args = dict(
            parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=16)
        )
    except ValueError:
        return text(400, "The query has too many fields.")
    op = args.get("op", "")
    search = args.get("search", "")
    if op not in ("get", "index", "vindex"):
        return text(501, f"HKP op {op[:16]!r} is not served; use get or index.")
    if not search:
        return text(400, "HKP lookups need a search= parameter.")
    mr = "mr" in args.get("options", "").split(",")
    found = _search(Op.GET if op == "get" else Op.INDEX, search, None)
    if isinstance(found, Query):
        return Query(found.op, found.by, found.value, mr)
    return found


def _search(op: Op, search: str, by: By | None) -> Query | Response:
    match = _FINGERPRINT.match(search.strip())
    if match and by in (None, By.FINGERPRINT):
        return Query(op, By.FINGERPRINT, match.group(1).upper())
    if by is By.FINGERPRINT:
        return text(400, "A fingerprint is 40 hex digits (v4 keys).")
    address = normalize_address(search.strip().removeprefix("=")) if len(search) <= 512 else None
    if address is None:
        return text(
            404, "refreshd finds keys by email address or by 0x and a 40-digit fingerprint."
        )
    return Query(op, By.ADDRESS, address)


def key(armored: str) -> Response:
    return Response(200, KEYS_TYPE, armored.encode("ascii"))


def _escape(uid: str) -> str:
    """HKP's machine-readable uid: printable ASCII as it is, other bytes, ':' and '%' as %XX."""
    return "".join(
        chr(b) if 0x20 < b < 0x7F and b not in b":%" else f"%{b:02X}" for b in uid.encode()
    )


def _stamp(moment: datetime | None) -> str:
    return "" if moment is None else str(int(moment.timestamp()))


def index(view: KeyView, now: datetime, *, machine_readable: bool) -> Response:
    """One key as HKP's index (draft-shaw-openpgp-hkp 5.2)."""
    p = view.primary
    flags = ("r" if p.revoked else "") + ("e" if p.expires and p.expires <= now else "")
    algorithm = _ALGORITHM_ID.get(p.algorithm, "")
    lines = [
        "info:1:1",
        f"pub:{view.fingerprint}:{algorithm}:{p.bits or ''}:{_stamp(p.created)}:"
        f"{_stamp(p.expires)}:{flags}",
    ]
    for u in view.uids:
        lines.append(f"uid:{_escape(u.uid)}:{_stamp(u.created)}::{'r' if u.revoked else ''}")
    if machine_readable:
        return Response(200, TEXT_TYPE, ("\n".join(lines) + "\n").encode())
    human = [f"{view.fingerprint} {p.algorithm} {p.bits or ''}".rstrip()]
    human += [f"  {u.uid}" for u in view.uids]
    return Response(200, TEXT_TYPE, ("\n".join(human) + "\n").encode())


def refused_because(state: LookupState, address: str, reason: str) -> Response:
    """The 404 for an address lookup that has no key to hand out, saying why."""
    if state is LookupState.PENDING:
        return text(404, f"refreshd is looking up {address} over Tor; ask again in a minute.")
    return text(404, f"No key for {address}: {reason}")


@dataclass
class RefusalLog:
    """When the next socket.refused line is due, and how many refusals it will account for."""

    interval: float = REFUSAL_INTERVAL
    last: float | None = None
    unlogged: int = 0

    def refused(self, now: float) -> int | None:
        """Count one refusal; the number to audit now (this one included), or None to wait."""
        self.unlogged += 1
        if self.last is not None and now - self.last < self.interval:
            return None
        self.last, count, self.unlogged = now, self.unlogged, 0
        return count
