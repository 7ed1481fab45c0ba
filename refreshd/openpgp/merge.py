"""Merge a refreshed copy of a public key into the stored one.

Rules:
- Both copies must have the same primary key fingerprint (KeyRejected otherwise).
- Each copy's signatures are first put where they sign (keyview.placed): a revocation that
  came after the subkeys, or alone, merges as the key's revocation.
- User ids, user attributes and subkeys are matched by their packet; new ones are appended.
- Signatures by the primary key are kept from both copies when they verify and are of a kind
  that belongs where they stand; those that do not verify are dropped, never merged. Exact
  duplicates (same hashed part and value) are kept once.
- A fresh self-signature (other than a revocation) that is not strictly newer than the newest
  stored one of the same kind on the same component is not taken: an older or equal copy adds
  nothing and never overrides. Revocations are always taken.
- Third-party certifications still present after stripping (the ones the caller asked to keep)
  are carried over unchanged; they are only trusted through keyview.certifiers.
- The view then takes the newest valid self-signature of each component, so new uids, subkeys,
  newer self-signatures and revocations are taken, and an expiry moves earlier only when a
  strictly newer valid self-signature says so. expiry_refused reports a fresh copy whose own
  view states an earlier expiry that the merged view does not take.
- A copy without user ids (as keys.openpgp.org serves unverified keys) merges like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import (
    CERT_REVOCATION,
    CERTIFICATIONS,
    DIRECT_KEY,
    KEY_REVOCATION,
    SUBKEY_BINDING,
    SUBKEY_REVOCATION,
    KeyView,
    parse_one,
    placed,
    rejecting,
    valid_sigs,
    view_of,
)
from refreshd.openpgp.packets import (
    TAG_PUBLIC_SUBKEY,
    Bundle,
    Cert,
    Packet,
    PublicKey,
    parse_public_key,
    parse_signature,
    signature_issuer,
)
from refreshd.openpgp.verify import key_context, uid_context

__all__ = ["merge"]


class Part(Enum):
    """The part of a certificate whose signatures are merged."""

    PRIMARY = "primary"
    UID = "uid"
    SUBKEY = "subkey"


# The signature types that belong to each part; third-party signatures (those the packet
# filter let through) are kept on the primary key and user ids, never on subkeys.
KINDS: dict[Part, frozenset[int]] = {
    Part.PRIMARY: frozenset({DIRECT_KEY, KEY_REVOCATION}),
    Part.UID: CERTIFICATIONS | {CERT_REVOCATION},
    Part.SUBKEY: frozenset({SUBKEY_BINDING, SUBKEY_REVOCATION}),
}
THIRD_PARTY_KEPT = frozenset({Part.PRIMARY, Part.UID})
REVOCATIONS = frozenset({KEY_REVOCATION, SUBKEY_REVOCATION, CERT_REVOCATION})


@dataclass(frozen=True)
class MergeResult:
    key: bytes
    cert: Cert
    view: KeyView
    changed: bool
    expiry_refused: bool
    reason: str
    dropped: int = 0  # signatures in the fresh copy that do not verify (forged or damaged)


@dataclass
class _Tally:
    sigs: int = 0
    uids: int = 0
    subkeys: int = 0
    dropped: int = 0


def _kind(sigtype: int) -> int:
    return 0x10 if sigtype in CERTIFICATIONS else sigtype


def _merge_sigs(
    stored: Sequence[Packet],
    fresh: Sequence[Packet],
    signer: PublicKey,
    context: bytes,
    part: Part,
    since: int,
    tally: _Tally,
) -> tuple[Packet, ...]:
    """The stored signatures that still hold, then the fresh ones that add something."""
    kinds = KINDS[part]
    own_id = signer.fingerprint[-8:]
    kept: list[Packet] = []
    seen: set[tuple[bytes, bytes]] = set()
    newest: dict[int, int] = {}  # kind -> creation of the newest stored self-signature
    for is_fresh, packets in ((False, stored), (True, fresh)):
        for packet in packets:
            try:
                sig = parse_signature(packet.body)
            except KeyRejected:
                tally.dropped += is_fresh
                continue
            ident = (sig.hashed_part, sig.material)
            if ident in seen:
                continue
            key_id, _ = signature_issuer(packet.body)
            if key_id is not None and key_id != own_id:
                if part in THIRD_PARTY_KEPT:
                    seen.add(ident)
                    kept.append(packet)
                    tally.sigs += is_fresh
                continue
            if not valid_sigs([packet.body], signer, context, kinds, since):
                tally.dropped += is_fresh
                continue
            kind, created = _kind(sig.sigtype), sig.created or 0
            if is_fresh and kind not in REVOCATIONS and created <= newest.get(kind, -1):
                continue
            if not is_fresh:
                newest[kind] = max(created, newest.get(kind, -1))
            seen.add(ident)
            kept.append(packet)
            tally.sigs += is_fresh
    return tuple(kept)


def _subkey_context(primary_context: bytes, body: bytes) -> tuple[bytes, int] | None:
    try:
        sub = parse_public_key(body)
    except KeyRejected:
        return None
    return primary_context + key_context(sub), sub.created


def _same(a: Packet, b: Packet) -> bool:
    return a.tag == b.tag and a.body == b.body


def _merge_certs(old: Cert, new: Cert, tally: _Tally) -> Cert:
    primary = parse_public_key(old.primary.packet.body)
    pctx = key_context(primary)
    primary_sigs = _merge_sigs(
        old.primary.sigs, new.primary.sigs, primary, pctx, Part.PRIMARY, primary.created, tally
    )
    old_parts, new_parts = old.uids + old.subkeys, new.uids + new.subkeys
    packets: list[Packet] = []
    for bundle in old_parts + new_parts:
        if not any(_same(p, bundle.packet) for p in packets):
            packets.append(bundle.packet)
    result_uids: list[Bundle] = []
    result_subkeys: list[Bundle] = []
    for packet in packets:
        stored = [s for b in old_parts if _same(b.packet, packet) for s in b.sigs]
        fresh = [s for b in new_parts if _same(b.packet, packet) for s in b.sigs]
        if packet.tag == TAG_PUBLIC_SUBKEY:
            found = _subkey_context(pctx, packet.body)
            if found is None:
                continue
            context, since = found
            sigs = _merge_sigs(stored, fresh, primary, context, Part.SUBKEY, since, tally)
            target = result_subkeys
        else:
            context = pctx + uid_context(packet.tag, packet.body)
            sigs = _merge_sigs(stored, fresh, primary, context, Part.UID, primary.created, tally)
            target = result_uids
        is_new = not any(_same(b.packet, packet) for b in old_parts)
        if is_new and not sigs:
            continue
        if is_new:
            if packet.tag == TAG_PUBLIC_SUBKEY:
                tally.subkeys += 1
            else:
                tally.uids += 1
        target.append(Bundle(packet, sigs))
    return Cert(Bundle(old.primary.packet, primary_sigs), tuple(result_uids), tuple(result_subkeys))


def _earlier(candidate: datetime | None, current: datetime | None) -> bool:
    return candidate is not None and (current is None or candidate < current)


def _refused(fresh: KeyView | None, merged: KeyView) -> bool:
    if fresh is None:
        return False
    if _earlier(fresh.expires, merged.expires):
        return True
    mine = {s.fingerprint: s.expires for s in merged.subkeys}
    return any(
        s.fingerprint in mine and _earlier(s.expires, mine[s.fingerprint]) for s in fresh.subkeys
    )


def _reason(tally: _Tally, refused: bool) -> str:
    parts = []
    if tally.sigs or tally.uids or tally.subkeys:
        parts.append(
            f"took {tally.sigs} new signature(s), {tally.uids} new user id(s) and "
            f"{tally.subkeys} new subkey(s)"
        )
    if tally.dropped:
        parts.append(f"dropped {tally.dropped} signature(s) that do not verify")
    if refused:
        parts.append(
            "kept the stored expiry: the fresh copy states an earlier one without a newer "
            "self-signature"
        )
    return "; ".join(parts) if parts else "the fresh copy holds nothing new"


@rejecting
def merge(
    stored: bytes,
    fresh: bytes | Cert,
    fresh_view: KeyView | None = None,
    *,
    now: datetime,
) -> MergeResult:
    """Merge fresh into stored (see module rules). The key manager hands the fresh copy in
    parsed, with its view (openpgp/intake.py), so it is not parsed again; bytes are read here,
    keeping no third-party certification."""
    if isinstance(fresh, bytes):
        new = parse_one(fresh)
        try:
            fresh_view = view_of(new, now)
        except KeyRejected:
            fresh_view = None
    else:
        new = fresh
    old = parse_one(stored, keep_all=True)
    if old.primary.packet.body != new.primary.packet.body:
        raise KeyRejected("the fresh copy is a different key (fingerprints differ)")
    view_of(old, now)
    tally = _Tally()
    cert = _merge_certs(placed(old), placed(new), tally)
    key = cert.serialize()
    view = view_of(cert, now)
    refused = _refused(fresh_view, view)
    return MergeResult(
        key=key,
        cert=cert,
        view=view,
        changed=bool(tally.sigs or tally.uids or tally.subkeys),
        expiry_refused=refused,
        reason=_reason(tally, refused),
        dropped=tally.dropped,
    )
