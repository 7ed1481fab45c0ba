"""The key manager shell: turns keys found anywhere into decisions, persisted and audited.

Every path that meets a key (mail observation, discovery, refresh, GnuPG import, user
verification) comes through `KeyManager.consider`, so the rules in core/rules.py are applied
in exactly one place. Keys are stripped at the packet level before they are parsed, stored as
merged, and every decision is one transaction plus one audit line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refreshd.audit import AuditLog
from refreshd.config import Config
from refreshd.core import autocrypt, rules
from refreshd.core.rules import Candidate, Decision
from refreshd.openpgp.keyview import KeyView, certifies_uid, normalize_address, read_key
from refreshd.openpgp.merge import merge
from refreshd.openpgp.packets import KeyRejected, armor, strip_keys
from refreshd.store import KeyFacts, Store, iso

__all__ = ["Found", "KeyManager", "address_or_none"]

AUDIT_EVENT = {
    "registered": "key.registered",
    "replaced": "key.replaced",
    "merged": "key.merged",
    "kept": "key.kept",
    "rejected": "key.rejected",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def facts_of(view: KeyView) -> KeyFacts:
    enc = [s for s in view.subkeys if "encrypt" in s.flags and not s.revoked]
    if "encrypt" in view.primary.flags:
        enc.append(view.primary)
    until = (
        None
        if any(s.expires is None for s in enc)
        else max((s.expires for s in enc if s.expires is not None), default=None)
    )
    return KeyFacts(view.fingerprint, view.primary.expires, view.primary.revoked, bool(enc), until)


@dataclass(frozen=True)
class Found:
    """How a key reached us: the source and what it is worth."""

    source: str
    level: str
    positive: bool
    asked_fingerprint: str | None = None
    url: str | None = None

    def rejected(self, fingerprint: str, reason: str) -> Decision:
        """A rejection of something from this source that never reached the rules."""
        return Decision(
            "rejected", fingerprint, self.level, self.source, self.positive, "8", reason
        )


class KeyManager:
    def __init__(
        self, store: Store, audit: AuditLog, cfg: Config, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.store = store
        self.audit = audit
        self.cfg = cfg
        self.clock = clock
        self.on_key_changed: Callable[[str, bytes], None] | None = None  # new key bytes stored

    # -- keys in --------------------------------------------------------------------------
    def strip(self, data: bytes, address: str | None) -> list[bytes]:
        """Packet-level filter, keeping certifications by the key registered for address."""
        keep: frozenset[str] = frozenset()
        if address:
            reg = self.store.registration(address)
            if reg is not None:
                keep = frozenset({reg.fingerprint, reg.fingerprint[-16:]})
        return strip_keys(
            data,
            max_response_bytes=self.cfg.network.max_response_bytes,
            max_key_bytes=self.cfg.network.max_key_bytes,
            keep_issuers=keep,
        )

    def _views(self, address: str, data: bytes) -> tuple[list[tuple[bytes, KeyView]], str]:
        """The keys in `data` (stripped, parsed), or why there are none."""
        try:
            keys = self.strip(data, address)
        except KeyRejected as exc:
            return [], exc.reason
        views: list[tuple[bytes, KeyView]] = []
        failures: list[str] = []
        for raw in keys:
            try:
                views.append((raw, read_key(raw)))
            except KeyRejected as exc:
                failures.append(exc.reason)
        if len(views) > 1:  # a directory may answer with several keys: take those for address
            views = [(r, v) for r, v in views if address in v.addresses()] or views[:1]
        return views, (failures[0] if failures else "no key in the data")

    def consider(self, address: str, data: bytes, found: Found) -> Decision:
        """Decide on every key in `data` for `address`; the decision that matters is returned
        (the registration if one was made, else the last rejection)."""
        views, failure = self._views(address, data)
        if not views:
            return self._reject_unparsed(address, found, failure)
        now = self.clock()
        outcome: Decision | None = None
        for raw, view in views:
            decision = self._consider_one(address, raw, view, found, now)
            if outcome is None or decision.registers:
                outcome = decision
        assert outcome is not None
        return outcome

    def first_contact(self, address: str, found_keys: list[tuple[bytes, Found]]) -> Decision | None:
        """Rule 1 over everything discovery found: the highest level is registered."""
        if self.store.registration(address) is not None:  # registered meanwhile (e.g. observe)
            decisions = [self.consider(address, data, found) for data, found in found_keys]
            return next((d for d in decisions if d.registers), decisions[-1] if decisions else None)
        now = self.clock()
        pool: list[tuple[Candidate, bytes, KeyView, Found]] = []
        for data, found in found_keys:
            views, failure = self._views(address, data)
            if not views:
                self._reject_unparsed(address, found, failure)
            for raw, view in views:
                try:
                    raw, view, adds, _ = self._with_stored(address, raw, view, found)
                except KeyRejected as exc:
                    self._reject_unparsed(address, found, exc.reason, view.fingerprint)
                    continue
                pool.append((self._candidate(address, view, found, adds), raw, view, found))
        if not pool:
            return None
        chosen, rejected = rules.first_contact(
            [c for c, *_ in pool],
            address,
            now=now,
            minimum=self.cfg.discovery.minimum_validation,
        )
        by_fpr = {c.fingerprint: (raw, view, found) for c, raw, view, found in pool}
        for d in [*rejected, *([chosen] if chosen else [])]:
            raw, view, found = by_fpr[d.fingerprint]
            self._persist(address, d, raw, view, found, now, store_key=True)
        return chosen or (rejected[-1] if rejected else None)

    def _candidate(
        self,
        address: str,
        view: KeyView,
        found: Found,
        adds: bool,
        certified: bool = False,
    ) -> Candidate:
        return Candidate(
            fingerprint=view.fingerprint,
            level=found.level,
            source=found.source,
            positive=found.positive,
            has_address=address in view.addresses(),
            expires=view.primary.expires,
            revoked=view.primary.revoked,
            asked_fingerprint=found.asked_fingerprint,
            certified_by_registered=certified,
            adds_to_stored=adds,
        )

    def _consider_one(
        self, address: str, raw: bytes, view: KeyView, found: Found, now: datetime
    ) -> Decision:
        registered = self.store.registration(address)
        try:
            merged_bytes, view, adds, stored = self._with_stored(address, raw, view, found)
        except KeyRejected as exc:
            return self._reject_unparsed(address, found, exc.reason, view.fingerprint)
        certified = False
        if registered is not None and registered.fingerprint != view.fingerprint:
            old = self.store.get_key(registered.fingerprint)
            certified = old is not None and certifies_uid(merged_bytes, old, address)
        candidate = self._candidate(address, view, found, adds, certified)
        decision = rules.decide(
            registered,
            candidate,
            address,
            now=now,
            minimum=self.cfg.discovery.minimum_validation,
        )
        # A copy of a key we hold is merged even when the registration is unchanged (a uid-less
        # copy still brings signatures); an unrelated key is kept for history and `verify`.
        fingerprint_ok = found.asked_fingerprint in (None, view.fingerprint)
        self._persist(
            address,
            decision,
            merged_bytes,
            view,
            found,
            now,
            store_key=fingerprint_ok and (not stored or adds),
        )
        return decision

    def _with_stored(
        self, address: str, raw: bytes, view: KeyView, found: Found
    ) -> tuple[bytes, KeyView, bool, bool]:
        """Merge a copy into the key we hold (rule 2): (bytes, view, brought news, was held)."""
        stored = self.store.get_key(view.fingerprint)
        if stored is None:
            return raw, view, True, False
        result = merge(stored, raw)
        if result.dropped:  # SPEC 8: forged or damaged parts end in a rejection with a reason
            self.audit.emit(
                "key.rejected",
                address=address,
                fingerprint=view.fingerprint,
                source=found.source,
                part="signatures",
                reason=f"{result.dropped} signature(s) in this copy do not verify (forged or "
                "damaged); they were dropped and the rest of the copy was considered.",
            )
        if result.expiry_refused:
            self.audit.emit(
                "key.expiry_refused",
                address=address,
                fingerprint=view.fingerprint,
                source=found.source,
                reason="The copy states an earlier expiry without a newer self-signature; "
                "the stored expiry stays (rule 2).",
            )
        return result.key, result.view, result.changed, True

    def _persist(
        self,
        address: str,
        decision: Decision,
        raw: bytes,
        view: KeyView,
        found: Found,
        now: datetime,
        *,
        store_key: bool,
    ) -> None:
        with self.store.transaction():
            if store_key:
                self.store.put_key(facts_of(view), raw, now)
            self.store.apply(address, decision, now)
        if store_key and decision.registers and self.on_key_changed is not None:
            self.on_key_changed(decision.fingerprint, raw)
        self.audit.emit(
            AUDIT_EVENT[decision.decision],
            address=address,
            fingerprint=decision.fingerprint,
            level=decision.level,
            source=found.source,
            rule=decision.rule,
            reason=decision.reason,
            **({"url": found.url} if found.url else {}),
        )

    def _reject_unparsed(
        self, address: str, found: Found, reason: str, fingerprint: str = ""
    ) -> Decision:
        decision = found.rejected(fingerprint, f"The key could not be used: {reason}")
        self.audit.emit(
            "key.rejected",
            address=address,
            fingerprint=fingerprint,
            level=found.level,
            source=found.source,
            rule="8",
            reason=decision.reason,
            **({"url": found.url} if found.url else {}),
        )
        return decision

    def consider_autocrypt(
        self, address: str, value: str, found: Found, date: datetime | None
    ) -> Decision:
        """An `Autocrypt:` (or, with source `gossip`, `Autocrypt-Gossip:`) header value as a
        mail client holds it (SPEC 4): a void header or one from a message older than the
        newest seen changes nothing; otherwise its key goes through the rules, and when that
        key is the one used for the address its prefer-encrypt is remembered."""
        gossip = found.source == "gossip"
        header = autocrypt.parse(value, address, gossip=gossip)
        if isinstance(header, autocrypt.Void):
            return self._reject_unparsed(address, found, header.reason)
        effective = autocrypt.effective_date(date, self.clock())
        state = None if gossip else self.store.autocrypt(address)
        if state is not None and not autocrypt.changes_state(effective, state[1]):
            return self._reject_unparsed(
                address,
                found,
                f"the message is older ({iso(effective)}) than the newest one whose Autocrypt "
                f"header was seen for {address} ({iso(state[1])}); it changes nothing "
                "(Autocrypt last_seen).",
            )
        decision = self.consider(address, header.keydata, found)
        if not gossip and decision.registers:
            with self.store.transaction():
                self.store.put_autocrypt(address, header.prefer_encrypt, effective)
        return decision

    # -- user actions -----------------------------------------------------------------------
    def verify(self, address: str, fingerprint: str) -> Decision:
        """Rule 3.2: the user checked this fingerprint for this address."""
        data = self.store.get_key(fingerprint)
        found = Found("user", "fingerprint", True)
        if data is None:
            return self._reject_unparsed(
                address,
                found,
                f"refreshd holds no key {fingerprint}; observe or look it up first.",
                fingerprint,
            )
        return self.consider(address, data, found)

    def used(self, address: str, fingerprint: str, event: str) -> bool:
        with self.store.transaction():
            done = self.store.record_use(address, fingerprint, event, self.clock())
        self.audit.emit(
            "key.used",
            address=address,
            fingerprint=fingerprint,
            event_kind=event,
            successfully_used=done,
        )
        return done

    # -- answers ----------------------------------------------------------------------------
    def describe(self, address: str, *, with_key: bool = False) -> dict[str, Any]:
        """The lookup answer for a registered address (SPEC section 4)."""
        now = self.clock()
        reg = self.store.registration(address)
        peer = self.store.autocrypt(address)
        prefer_encrypt = None if peer is None else peer[0]
        if reg is None:
            return {
                "address": address,
                "state": "unknown",
                "fingerprint": None,
                "validation": None,
                "usable": False,
                "encrypt": False,
                "expires": None,
                "revoked": False,
                "source": None,
                "reason": f"No key is registered for {address}.",
                "prefer_encrypt": prefer_encrypt,
            }
        facts = self.store.key_facts(reg.fingerprint)
        assert facts is not None
        decisions = [
            d
            for d in self.store.decisions(address)
            if d["fingerprint"] == reg.fingerprint and d["decision"] != "rejected"
        ]
        reason = decisions[-1]["reason"] if decisions else "Registered."
        usable = facts.usable(now)
        encrypt = facts.encrypts(now) and reg.positive
        if usable and not encrypt:
            reason += " Not for encryption: " + (
                "the recipient has not positively indicated they want encrypted mail "
                "(an HKP keyserver alone is not enough, SPEC 5.4)."
                if not reg.positive
                else "the key has no valid encryption subkey."
            )
        elif not usable:
            reason += " Not usable: the key is " + ("revoked." if facts.revoked else "expired.")
        answer: dict[str, Any] = {
            "address": address,
            "state": "registered",
            "fingerprint": reg.fingerprint,
            "validation": reg.level,
            "usable": usable,
            "encrypt": encrypt,
            "expires": iso(facts.expires),
            "revoked": facts.revoked,
            "source": reg.source,
            "reason": reason,
            "prefer_encrypt": prefer_encrypt,
        }
        if with_key:
            data = self.store.get_key(reg.fingerprint)
            assert data is not None
            answer["key"] = armor(data)
        return answer

    def history(self, address: str) -> dict[str, Any]:
        return {
            "address": address,
            "keys": self.store.history(address),
            "decisions": self.store.decisions(address),
        }


def address_or_none(text: object) -> str | None:
    """A normalised address from client input, or None if it is not one address."""
    return normalize_address(text) if isinstance(text, str) and len(text) <= 512 else None
