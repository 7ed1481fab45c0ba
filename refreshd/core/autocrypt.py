"""Autocrypt Level 1 headers as mail clients hand them over (SPEC 4, `observe` with `autocrypt`).

Rules, from Autocrypt Level 1 ("The Autocrypt Header", "Updating Autocrypt Peer State"):
- The value is `attr=value` pairs separated by `;`; folding white space (CRLF + blanks) is
  unfolded first, and blanks around names and values do not count.
- `addr` is required and must be the address the header is given for (compared as addresses:
  case-insensitive domain); `keydata` is required and is the key, base64 with white space.
- `prefer-encrypt=mutual` is remembered; any other value, or none, is `nopreference`.
- A name starting with `_` is non-critical and ignored; any other unknown name, a repeated
  name, or a pair without `=` voids the whole header.
- The effective date of a message is its Date, or now when it is missing or in the future; a
  header whose effective date is older than the newest already seen for the address changes
  nothing (the peer state's `autocrypt_timestamp`).
- `Autocrypt-Gossip` values have the same syntax; they never carry a preference (a gossiped
  key says nothing about what its owner wants), so only the key is taken.
"""

from __future__ import annotations

import binascii
import email.utils
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from refreshd.openpgp.keyview import normalize_address

__all__ = ["Void", "changes_state", "effective_date", "message_date", "parse"]

MAX_HEADER = 1 << 20  # a header larger than the socket's line can hold is not one


class PreferEncrypt(StrEnum):
    MUTUAL = "mutual"
    NOPREFERENCE = "nopreference"


@dataclass(frozen=True)
class Header:
    """A valid header: who it is for, the key bytes, and the sender's preference."""

    addr: str
    keydata: bytes
    prefer_encrypt: PreferEncrypt


@dataclass(frozen=True)
class Void:
    """A header that must be ignored, and why (one sentence)."""

    reason: str


KNOWN = ("addr", "keydata", "prefer-encrypt")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BLANKS = re.compile(r"[ \t\r\n]+")


def parse(value: str, address: str, *, gossip: bool = False) -> Header | Void:
    """The header for `address`, or why it is void."""
    if len(value) > MAX_HEADER:
        return Void("The Autocrypt header is larger than 1 MiB.")
    attributes: dict[str, str] = {}
    for part in _FOLD.sub("", value).split(";"):
        if not part.strip():
            continue
        name, eq, text = part.partition("=")
        name = name.strip()
        if not eq or not name:
            return Void(f"The Autocrypt header has a part that is not attr=value: {part[:40]!r}.")
        if name.startswith("_"):
            continue
        if name not in KNOWN:
            return Void(f"The Autocrypt header has the unknown critical attribute {name[:40]!r}.")
        if name in attributes:
            return Void(f"The Autocrypt header names {name!r} twice.")
        attributes[name] = text.strip()
    for required in ("addr", "keydata"):
        if required not in attributes:
            return Void(f"The Autocrypt header has no {required} attribute.")
    addr = normalize_address(attributes["addr"])
    if addr is None or addr != normalize_address(address):
        return Void(
            f"The Autocrypt header's addr {attributes['addr'][:80]!r} is not {address} "
            "(Autocrypt: addr must be the sender's address)."
        )
    try:
        keydata = binascii.a2b_base64(_BLANKS.sub("", attributes["keydata"]).encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        return Void("The Autocrypt header's keydata is not base64.")
    if not keydata:
        return Void("The Autocrypt header's keydata is empty.")
    mutual = not gossip and attributes.get("prefer-encrypt") == PreferEncrypt.MUTUAL
    return Header(addr, keydata, PreferEncrypt.MUTUAL if mutual else PreferEncrypt.NOPREFERENCE)


def message_date(text: str) -> datetime | None:
    """A message's Date as ISO 8601 or RFC 5322, in UTC; None if it is neither."""
    moment: datetime | None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if moment is None:
        return None
    if moment.tzinfo is None:  # RFC 5322 "-0000" and a bare ISO time: UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def effective_date(date: datetime | None, now: datetime) -> datetime:
    """Autocrypt's effective date: the message's Date, or now if missing or in the future."""
    return now if date is None or date > now else date


def changes_state(effective: datetime, newest_seen: datetime | None) -> bool:
    """A header counts unless a newer message's header was already seen for the address."""
    return newest_seen is None or effective >= newest_seen
