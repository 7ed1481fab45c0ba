"""The key manager shell: turns keys found anywhere into decisions, persisted and audited.

Every path that meets a key (mail observation, discovery, refresh, GnuPG import, user
verification) comes in through `take_in` (openpgp/intake.py: stripped once with the keep set
chosen here, parsed once) and is decided by `consider` / `first_contact`, so the rules in
core/rules.py are applied in exactly one place. The parsed key flows on to merge, to the
certification checks (rule 3.1, endorsements) and to the rules; every decision is one
transaction plus one audit line.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from refreshd.audit import AuditLog
from refreshd.clock import utcnow
from refreshd.config import Config
from refreshd.core import autocrypt, levels, providerkeys, rules
from refreshd.core.levels import Level, Vouched, Way
from refreshd.core.providerkeys import PinKind
from refreshd.core.rules import (
    Candidate,
    Decision,
    DecisionKind,
    LookupState,
    Rule,
    UseEvent,
    Vouch,
)
from refreshd.errors import KeyRejected
from refreshd.net.nicknym import Capability
from refreshd.openpgp.intake import Intake, Limits, ParsedKey, intake, read_stored
from refreshd.openpgp.keyview import Flag, KeyView, certifiers, normalize_address, primary_key
from refreshd.openpgp.merge import merge
from refreshd.openpgp.packets import Cert, LoneSignatures, PublicKey, armor, signature_issuer
from refreshd.store import KeyFacts, ProviderPin, Store, iso
from refreshd.worker import Worker

__all__ = [
    "MAX_ADDRESS_TEXT",
    "Found",
    "KeyManager",
    "address_or_none",
    "facts_of",
    "usable_endorsers",
]

MAX_ADDRESS_TEXT = 512  # client input longer than this is no address (and is not parsed)

AUDIT_EVENT = {
    DecisionKind.REGISTERED: "key.registered",
    DecisionKind.REPLACED: "key.replaced",
    DecisionKind.MERGED: "key.merged",
    DecisionKind.KEPT: "key.kept",
    DecisionKind.REJECTED: "key.rejected",
}


def facts_of(view: KeyView) -> KeyFacts:
    enc = [s for s in view.subkeys if Flag.ENCRYPT in s.flags and not s.revoked]
    if Flag.ENCRYPT in view.primary.flags:
        enc.append(view.primary)
    if not view.primary.bound:  # no valid binding: nothing of it encrypts (keyview rules)
        enc = []
    until = (
        None
        if any(s.expires is None for s in enc)
        else max((s.expires for s in enc if s.expires is not None), default=None)
    )
    return KeyFacts(view.fingerprint, view.primary.expires, view.primary.revoked, bool(enc), until)


def key_ids(fingerprint: str) -> set[str]:
    """What the packet filter matches an issuer on: the fingerprint and its key id."""
    return {fingerprint, fingerprint[-16:]}


def usable_endorsers(
    pins: Iterable[ProviderPin], now: datetime
) -> list[tuple[ProviderPin, PublicKey]]:
    """The pinned endorsement keys among pins that can be read and are usable now (SPEC 5.1),
    each with its pin; the key manager's provider-endorsement and the own-key audit ask it."""
    found = []
    for pin in pins:
        if pin.kind is not PinKind.ENDORSEMENT:
            continue
        try:
            key = read_stored(pin.data, now)
        except KeyRejected:
            continue
        if key.view.usable(now):
            found.append((pin, primary_key(key.cert)))
    return found


@dataclass(frozen=True)
class Found:
    """How a key reached us: the source and what it is worth."""

    source: Way
    level: Level
    positive: bool
    asked_fingerprint: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if type(self.source) is not Way:  # a plain string would pass every comparison
            raise TypeError(f"a Found's source is a levels.Way: {self!r}")

    def rejected(self, fingerprint: str, reason: str) -> Decision:
        """A rejection of something from this source that never reached the rules."""
        return Decision(
            DecisionKind.REJECTED,
            fingerprint,
            self.level,
            self.source,
            self.positive,
            Rule.UNUSABLE,
            reason,
        )


@dataclass(frozen=True)
class _Held:
    """A key as it stands after merging the incoming copy into what we hold."""

    data: bytes
    cert: Cert
    view: KeyView
    adds: bool  # the copy brought something new (always, for a key not held before)
    stored: bool  # we held the key before
    fresh: Cert | None = None  # the copy as it came in (None: read back from the store)


class KeyManager:
    def __init__(
        self, store: Store, audit: AuditLog, cfg: Config, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.store = store
        self.audit = audit
        self.cfg = cfg
        self.clock = clock
        self.limits = Limits(cfg.network.max_response_bytes, cfg.network.max_key_bytes)
        self.pins = {
            a: fpr
            for address, fpr in cfg.validation.known_keys
            if (a := normalize_address(address)) is not None
        }
        self.endorsers = frozenset(cfg.validation.endorsers)
        self.provider_config = {d: frozenset(f) for d, f in cfg.validation.provider_keys}
        self.on_key_changed: Callable[[str, bytes], None] | None = None  # new key bytes stored
        self.worker = Worker()

    # -- keys in --------------------------------------------------------------------------
    def keep_for(self, addresses: Iterable[str] | None) -> frozenset[str]:
        """Whose certifications survive the strip (SPEC 5.1): the keys registered for the
        addresses (rule 3.1), the endorsement keys pinned for their providers and the
        configured endorsers. With addresses None (a keyring import, whose addresses are only
        known after parsing) every registered key and every pinned provider key counts."""
        keep: set[str] = set()
        if addresses is None:
            fingerprints = [*self.store.registered_fingerprints(), *self.store.all_provider_pins()]
        else:
            addresses = list(addresses)
            fingerprints = [r.fingerprint for a in addresses if (r := self.store.registration(a))]
            for domain in {a.rpartition("@")[2] for a in addresses}:
                fingerprints += self._endorsement_fingerprints(domain)
        for fpr in [*fingerprints, *self.endorsers]:
            keep |= key_ids(fpr)
        return frozenset(keep)

    def _endorsement_fingerprints(self, domain: str) -> list[str]:
        pinned = [
            p.fingerprint for p in self.store.provider_pins(domain) if p.kind is PinKind.ENDORSEMENT
        ]
        return [*pinned, *self.provider_config.get(domain, ())]

    def take_in(self, data: bytes, addresses: Iterable[str] | None) -> Intake:
        """The one intake path: strip once with the keep set for these addresses, parse once
        (KeyRejected when the data as a whole is refused). A revocation certificate alone is
        taken in as the key we hold that issued it, with the revocation added."""
        keep = self.keep_for(addresses)
        try:
            return intake(data, keep, self.limits, self.clock())
        except LoneSignatures as lone:
            return intake(self._as_issuers_key(lone), keep, self.limits, self.clock())

    async def take_in_apart(self, data: bytes, addresses: Iterable[str] | None) -> Intake:
        """`take_in` with the parsing in a worker process within its time budget (worker.py),
        so the loop stays free; past the budget the key is refused (KeyRejected)."""
        keep = self.keep_for(addresses)
        try:
            return await self.worker.run(intake, data, keep, self.limits, self.clock())
        except LoneSignatures as lone:
            return await self.worker.run(
                intake, self._as_issuers_key(lone), keep, self.limits, self.clock()
            )

    async def take_in_or_refuse(
        self,
        data: bytes,
        addresses: Iterable[str] | None,
        *,
        fingerprint: str,
        source: Way,
        url: str,
    ) -> Intake | None:
        """`take_in_apart` for a key fetched by fingerprint, or None with the refusal audited
        (SPEC 8: bytes that are no usable key end in a rejection with the reason)."""
        try:
            return await self.take_in_apart(data, addresses)
        except KeyRejected as exc:
            self.audit.emit(
                "key.rejected",
                fingerprint=fingerprint,
                source=source.value,
                url=url,
                rule=Rule.UNUSABLE.value,
                reason=f"The key could not be used: {exc.reason}",
            )
            return None

    async def taken_in(self, address: str, data: bytes | Intake) -> Intake:
        """What `consider` and `first_contact` take for bytes from outside, parsed apart (an
        intake already made passes as it is): a refused stream is an intake with no key and
        the refusal as its failure."""
        if isinstance(data, Intake):
            return data
        try:
            return await self.take_in_apart(data, [address])
        except KeyRejected as exc:
            return Intake((), (exc.reason,))

    def _as_issuers_key(self, lone: LoneSignatures) -> bytes:
        """A lone revocation as the held key that issued it, with the revocation added."""
        held = self._issuer_held(lone)
        if held is None:
            raise lone
        return held + b"".join(p.raw for p in lone.signatures)

    def _issuer_held(self, lone: LoneSignatures) -> bytes | None:
        """The stored registered key that issued one of these signatures."""
        for packet in lone.signatures:
            key_id, fpr = signature_issuer(packet.body)
            for registered in self.store.registered_fingerprints():
                mine = bytes.fromhex(registered)
                if (fpr == mine or key_id == mine[-8:]) and (
                    data := self.store.get_key(registered)
                ):
                    return data
        return None

    def _intake(self, address: str, data: bytes | Intake) -> tuple[tuple[ParsedKey, ...], str]:
        """The keys for address (taken in now if given as bytes), or why there are none."""
        if isinstance(data, bytes):
            try:
                data = self.take_in(data, [address])
            except KeyRejected as exc:
                return (), exc.reason
        return data.for_address(address), data.failure

    def consider(self, address: str, data: bytes | Intake, found: Found) -> Decision:
        """Decide on every key in `data` for `address`; the decision that matters is returned
        (the registration if one was made, else the last rejection)."""
        keys, failure = self._intake(address, data)
        if not keys:
            return self._reject_unparsed(address, found, failure)
        now = self.clock()
        outcome: Decision | None = None
        for parsed in keys:
            decision = self._consider_one(address, parsed, found, now)
            if outcome is None or decision.registers:
                outcome = decision
        assert outcome is not None
        return outcome

    def first_contact(
        self, address: str, found_keys: list[tuple[bytes | Intake, Found]]
    ) -> Decision | None:
        """Rule 1 over everything discovery found: the highest level is registered."""
        if self.store.registration(address) is not None:  # registered meanwhile (e.g. observe)
            decisions = [self.consider(address, data, found) for data, found in found_keys]
            return next((d for d in decisions if d.registers), decisions[-1] if decisions else None)
        now = self.clock()
        pool: list[tuple[Candidate, _Held, Found]] = []
        for data, found in found_keys:
            keys, failure = self._intake(address, data)
            if not keys:
                self._reject_unparsed(address, found, failure)
            for parsed in keys:
                try:
                    held = self._with_stored(address, parsed, found)
                except KeyRejected as exc:
                    self._reject_unparsed(address, found, exc.reason, parsed.fingerprint)
                    continue
                pool.append((self._candidate(address, held, found, now), held, found))
        if not pool:
            return None
        chosen, rejected = rules.first_contact(
            [c for c, *_ in pool],
            address,
            now=now,
            minimum=self.cfg.discovery.minimum_validation,
        )
        by_fpr: dict[str, tuple[_Held, Found]] = {}
        for c, held, found in pool:
            by_fpr.setdefault(c.fingerprint, (held, found))
        for d in [*rejected, *([chosen] if chosen else [])]:
            held, found = by_fpr[d.fingerprint]
            self._persist(address, d, held, found, now, store_key=True)
        return chosen or (rejected[-1] if rejected else None)

    # -- what a key carries -----------------------------------------------------------------
    def _held_keys(self, fingerprints: Iterable[str]) -> list[tuple[PublicKey, KeyView]]:
        """The primary keys (and views) of those of fingerprints we hold."""
        return [
            (primary_key(held.cert), held.view)
            for fpr in fingerprints
            if (held := self._stored(fpr)) is not None
        ]

    def _stored(self, fingerprint: str) -> ParsedKey | None:
        """The key we hold under this fingerprint, None if none (or none readable)."""
        data = self.store.get_key(fingerprint)
        if data is None:
            return None
        try:
            return read_stored(data, self.clock())
        except KeyRejected:
            return None

    def _endorser_keys(self, now: datetime, but: str) -> list[PublicKey]:
        """The configured endorsers' keys usable now (a revoked or expired endorser certifies
        nothing), except the key `but` itself."""
        return [k for k, view in self._held_keys(self.endorsers - {but}) if view.usable(now)]

    def _vouches(
        self, address: str, held: _Held, now: datetime, source: Way | None = None
    ) -> tuple[Vouch, ...]:
        """What raises this key's level for this address now, besides how it was found."""
        fpr = held.view.fingerprint
        out: list[Vouch] = []
        if self.pins.get(address) == fpr:
            out.append(
                Vouch(Vouched.PINNED, f"pinned by the user for {address} (validation.known_keys)")
            )
        if fpr in self.endorsers:
            out.append(
                Vouch(Vouched.ENDORSER_KEY, f"the key of endorser 0x{fpr} (validation.endorsers)")
            )
        provider = self._provider_endorsement(address, held, now, source)
        if provider is not None:
            out.append(provider)
        endorsers = self._endorser_keys(now, fpr)
        if endorsers:
            by = sorted(certifiers(held.cert, address, endorsers, now))
            if by:
                named = ", ".join(f"0x{f}" for f in by)
                out.append(Vouch(Vouched.ENDORSER, f"certified by endorser {named}"))
                if len(by) >= self.cfg.validation.consensus:
                    dissent = self._endorsed_elsewhere(address, fpr, endorsers, now)
                    if not dissent:
                        out.append(
                            Vouch(
                                Vouched.ENDORSER_CONSENSUS,
                                f"certified by {len(by)} endorsers ({named}), at least "
                                f"validation.consensus = {self.cfg.validation.consensus}, and "
                                "no endorser certifies another key for the address",
                            )
                        )
        return tuple(out)

    def _provider_endorsement(
        self, address: str, held: _Held, now: datetime, source: Way | None
    ) -> Vouch | None:
        """provider-endorsement: the uid for the address is certified by an endorsement key
        pinned for its domain, and that provider signs its answers (a pinned response key).
        The provider's own (signed) answer is the word on its endorsement: a nicknym copy
        without the certification means it is gone, even though our merged copy keeps it."""
        domain = address.rpartition("@")[2]
        pins = self.store.provider_pins(domain)
        if not any(p.kind is PinKind.RESPONSE for p in pins):
            return None
        signers = {
            key.fingerprint.hex().upper(): (key, pin.pinned_at)
            for pin, key in usable_endorsers(pins, now)
        }
        keys = [k for k, _ in signers.values()]
        by = sorted(certifiers(held.cert, address, keys, now))
        if by and source is Way.NICKNYM and held.fresh is not None:
            by = sorted(set(by) & certifiers(held.fresh, address, keys, now))
        if not by:
            return None
        pinned = iso(signers[by[0]][1]) or ""
        return Vouch(
            Vouched.PROVIDER_ENDORSED,
            f"endorsed by {domain}'s key 0x{by[0]}, pinned {pinned[:10]}",
        )

    # -- provider keys (retrieve.ProviderPins) -------------------------------------------------
    def response_key(self, domain: str) -> bytes | None:
        """The pinned key a provider's nicknym answers must be signed with, if it signs."""
        return next(
            (p.data for p in self.store.provider_pins(domain) if p.kind is PinKind.RESPONSE), None
        )

    def learn_provider(self, domain: str, capability: Capability) -> None:
        """What provider.json offers, against what is pinned (core/providerkeys.py): new pins
        and refusals are audited (provider.key_pinned, provider.key_refused)."""
        now = self.clock()
        pins = self.store.provider_pins(domain)
        pinned = {p.fingerprint: p for p in pins if p.kind is PinKind.ENDORSEMENT}
        configured = self.provider_config.get(domain, frozenset())
        trusted_keys = [
            (primary_key(k.cert), k.view)
            for p in pinned.values()
            for k in [read_stored(p.data, now)]
        ]
        offered: dict[str, ParsedKey] = {}
        for armored in capability.endorsement_keys:
            try:
                taken = intake(
                    armored.encode(),
                    frozenset(k for f in [*pinned, *configured] for k in key_ids(f)),
                    self.limits,
                    now,
                )
            except KeyRejected as exc:
                self.audit.emit("provider.key_refused", domain=domain, reason=exc.reason)
                continue
            for key in taken.keys:
                offered[key.fingerprint] = key
        signers = [k for k, view in trusted_keys if view.usable(now)]
        verdicts = providerkeys.review(
            domain,
            frozenset(pinned),
            configured,
            [
                providerkeys.Offered(
                    fpr,
                    frozenset(
                        f
                        for a in key.view.addresses()
                        for f in certifiers(key.cert, a, signers, now)
                    ),
                )
                for fpr, key in offered.items()
            ],
        )
        for verdict in verdicts:
            key = offered[verdict.fingerprint]
            if verdict.rule is providerkeys.Rule.REFUSED:
                self.audit.emit(
                    "provider.key_refused",
                    domain=domain,
                    fingerprint=verdict.fingerprint,
                    kind=PinKind.ENDORSEMENT.value,
                    reason=verdict.reason,
                )
                continue
            data = key.data
            if verdict.rule is providerkeys.Rule.PINNED:
                data = merge(pinned[verdict.fingerprint].data, key.cert, key.view, now=now).key
                pin = replace(pinned[verdict.fingerprint], data=data)
            else:
                pin = ProviderPin(
                    domain, key.fingerprint, PinKind.ENDORSEMENT, data, now, verdict.rule.value
                )
            with self.store.transaction():
                self.store.pin_provider_key(pin)
            if verdict.rule is not providerkeys.Rule.PINNED:
                self.audit.emit(
                    "provider.key_pinned",
                    domain=domain,
                    fingerprint=key.fingerprint,
                    kind=PinKind.ENDORSEMENT.value,
                    how=verdict.rule.value,
                    reason=verdict.reason,
                )
        if capability.response_key is not None:
            offered_name = "ed25519:" + base64.b64encode(capability.response_key).decode()
            current = next((p for p in pins if p.kind is PinKind.RESPONSE), None)
            verdict = providerkeys.review_response_key(
                domain, current.fingerprint if current else None, offered_name
            )
            if verdict.rule is providerkeys.Rule.FIRST_USE:
                pin = ProviderPin(
                    domain,
                    offered_name,
                    PinKind.RESPONSE,
                    capability.response_key,
                    now,
                    providerkeys.Rule.FIRST_USE.value,
                )
                with self.store.transaction():
                    self.store.pin_provider_key(pin)
                self.audit.emit(
                    "provider.key_pinned",
                    domain=domain,
                    fingerprint=offered_name,
                    kind=PinKind.RESPONSE.value,
                    how=providerkeys.Rule.FIRST_USE.value,
                    reason=verdict.reason,
                )
            elif verdict.rule is providerkeys.Rule.REFUSED:
                self.audit.emit(
                    "provider.key_refused",
                    domain=domain,
                    fingerprint=offered_name,
                    kind=PinKind.RESPONSE.value,
                    reason=verdict.reason,
                )

    def _endorsed_elsewhere(
        self, address: str, fingerprint: str, endorsers: list[PublicKey], now: datetime
    ) -> frozenset[str]:
        """Endorsers that certify another key we hold for the address (this blocks
        consensus)."""
        found: set[str] = set()
        for row in self.store.history(address):
            other = row["fingerprint"]
            held = self._stored(other) if other != fingerprint else None
            if held is not None:
                found |= certifiers(held.cert, address, endorsers, now)
        return frozenset(found)

    def _candidate(self, address: str, held: _Held, found: Found, now: datetime) -> Candidate:
        view = held.view
        registered = self.store.registration(address)
        certified = False
        if registered is not None and registered.fingerprint != view.fingerprint:
            # a transition certified before the old key was revoked still counts (rule 3.1)
            old = [k for k, _ in self._held_keys([registered.fingerprint])]
            certified = bool(old) and bool(certifiers(held.cert, address, old, now))
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
            adds_to_stored=held.adds,
            vouches=self._vouches(address, held, now, found.source),
            pin=self.pins.get(address),
        )

    def _consider_one(
        self, address: str, parsed: ParsedKey, found: Found, now: datetime
    ) -> Decision:
        registered = self.store.registration(address)
        try:
            held = self._with_stored(address, parsed, found)
        except KeyRejected as exc:
            return self._reject_unparsed(address, found, exc.reason, parsed.fingerprint)
        candidate = self._candidate(address, held, found, now)
        decision = rules.decide(
            registered,
            candidate,
            address,
            now=now,
            minimum=self.cfg.discovery.minimum_validation,
        )
        # A copy of a key we hold is merged even when the registration is unchanged (a uid-less
        # copy still brings signatures); an unrelated key is kept for history and `verify`.
        fingerprint_ok = found.asked_fingerprint in (None, held.view.fingerprint)
        self._persist(
            address,
            decision,
            held,
            found,
            now,
            store_key=fingerprint_ok and (not held.stored or held.adds),
        )
        return decision

    def _with_stored(self, address: str, parsed: ParsedKey, found: Found) -> _Held:
        """Merge a copy into the key we hold (rule 2)."""
        stored = self.store.get_key(parsed.fingerprint)
        if stored is None:
            return _Held(parsed.data, parsed.cert, parsed.view, True, False, parsed.cert)
        result = merge(stored, parsed.cert, parsed.view, now=self.clock())
        if result.dropped:  # SPEC 8: forged or damaged parts end in a rejection with a reason
            # the key itself may still be accepted: its own event, not key.rejected
            self.audit.emit(
                "key.signatures_rejected",
                address=address,
                fingerprint=parsed.fingerprint,
                source=found.source.value,
                dropped=result.dropped,
                reason=f"{result.dropped} signature(s) in this copy do not verify (forged or "
                "damaged); they were dropped and the rest of the copy was considered.",
            )
        if result.expiry_refused:
            self.audit.emit(
                "key.expiry_refused",
                address=address,
                fingerprint=parsed.fingerprint,
                source=found.source.value,
                reason="The copy states an earlier expiry without a newer self-signature; "
                "the stored expiry stays (rule 2).",
            )
        return _Held(result.key, result.cert, result.view, result.changed, True, parsed.cert)

    def _persist(
        self,
        address: str,
        decision: Decision,
        held: _Held,
        found: Found,
        now: datetime,
        *,
        store_key: bool,
    ) -> None:
        def write() -> None:
            if store_key and (decision.registers or self.store.get_key(held.view.fingerprint)):
                self.store.put_key(facts_of(held.view), held.data, now)
            elif store_key:  # a key nobody uses: kept only while rejected_keys has room
                self.store.put_rejected_key(held.view.fingerprint, held.data, now)
            self.store.apply(address, decision, now)

        self._decide(
            write,
            AUDIT_EVENT[decision.decision],
            address=address,
            fingerprint=decision.fingerprint,
            level=decision.level.value,
            source=found.source.value,
            rule=decision.rule.value,
            reason=decision.reason,
            **({"basis": decision.basis} if decision.basis else {}),
            **({"url": found.url} if found.url else {}),
        )
        if store_key and decision.registers and self.on_key_changed is not None:
            self.on_key_changed(decision.fingerprint, held.data)

    def _decide(self, write: Callable[[], object] | None, event: str, **fields: Any) -> None:
        """One decision: its store writes and its audit line, which cannot part (audit.py).
        A full disk raises DiskFull before anything is decided, or after the commit with the
        line held in the store to be written."""
        intent = self.audit.intent(event, **fields)
        with self.store.transaction():
            if write is not None:
                write()
            self.store.put_audit_intent(intent.seq, intent.line, self.audit.written_seq)
        self.audit.commit(intent)

    def _reject_unparsed(
        self, address: str, found: Found, reason: str, fingerprint: str = ""
    ) -> Decision:
        decision = found.rejected(fingerprint, f"The key could not be used: {reason}")
        self._decide(
            None,
            "key.rejected",
            address=address,
            fingerprint=fingerprint,
            level=found.level.value,
            source=found.source.value,
            rule=Rule.UNUSABLE.value,
            reason=decision.reason,
            **({"url": found.url} if found.url else {}),
        )
        return decision

    async def consider_autocrypt(
        self, address: str, value: str, found: Found, date: datetime | None
    ) -> Decision:
        """An `Autocrypt:` (or, with source `gossip`, `Autocrypt-Gossip:`) header value as a
        mail client holds it (SPEC 4): a void header or one from a message older than the
        newest seen changes nothing; otherwise its key goes through the rules, and when that
        key is the one used for the address its prefer-encrypt is remembered."""
        gossip = found.source is Way.GOSSIP
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
        decision = self.consider(address, await self.taken_in(address, header.keydata), found)
        if not gossip and decision.registers:
            with self.store.transaction():
                self.store.put_autocrypt(address, header.prefer_encrypt, effective)
        return decision

    # -- migration ----------------------------------------------------------------------------
    def correct_levels(self) -> int:
        """Recompute the level of every registration written before levels were honest (or
        whose pin changed): the best of the ways it was recorded as found, plus what the
        stored key vouches for now. Each change is audited as key.level_corrected; the
        registered key itself is unchanged. Returns how many levels changed."""
        now = self.clock()
        todo = {a: (f, lvl, src) for a, f, lvl, src in self.store.uncorrected()}
        for address in self.pins:
            reg = self.store.registration(address)
            if reg is not None and address not in todo:
                todo[address] = (reg.fingerprint, reg.level, reg.source)
        changed = 0
        for address, (fpr, old, old_source) in sorted(todo.items()):
            ways = [
                levels.of_recorded_way(src, lvl)
                for src, lvl in self.store.recorded_ways(address, fpr)
            ] or [levels.of_recorded_way(old_source, old)]
            source, base = max(ways, key=lambda way: way[1])
            vouch: Vouch | None = None
            held = self._held(fpr)
            if held is not None:
                vouch = max(self._vouches(address, held, now), key=lambda v: v.level, default=None)
            level = base if vouch is None or vouch.level <= base else vouch.level
            if level == old:
                with self.store.transaction():
                    self.store.correct_level(address, fpr, level, base, source)
                continue
            changed += 1
            basis = vouch.detail if vouch and vouch.level > base else f"found through {source}"
            self._decide(
                partial(self.store.correct_level, address, fpr, level, base, source),
                "key.level_corrected",
                address=address,
                fingerprint=fpr,
                old_level=old.value,
                new_level=level.value,
                source=source.value,
                basis=basis,
                reason=f"The level of {fpr} for {address} was recomputed from the ways it "
                f"was found: {level.value} ({basis}), not {old.value}. Agreement of "
                "directories is not consensus (SPEC 5.1).",
            )
        return changed

    def _held(self, fingerprint: str) -> _Held | None:
        held = self._stored(fingerprint)
        return None if held is None else _Held(held.data, held.cert, held.view, False, True)

    # -- user actions -----------------------------------------------------------------------
    def verify(self, address: str, fingerprint: str) -> Decision:
        """Rule 3.2: the user checked this fingerprint for this address."""
        data = self.store.held_key(fingerprint)
        found = Found(Way.USER, *levels.for_source(Way.USER))
        if data is None:
            return self._reject_unparsed(
                address,
                found,
                f"refreshd holds no key {fingerprint}; observe or look it up first.",
                fingerprint,
            )
        return self.consider(address, data, found)

    def used(self, address: str, fingerprint: str, event: UseEvent) -> bool:
        now = self.clock()
        done = self.store.successfully_used_after(address, fingerprint, event)
        self._decide(
            lambda: self.store.record_use(address, fingerprint, event, now),
            "key.used",
            address=address,
            fingerprint=fingerprint,
            event_kind=event.value,
            successfully_used=done,
        )
        return done

    # -- answers ----------------------------------------------------------------------------
    def describe(self, address: str, *, with_key: bool = False) -> dict[str, Any]:
        """The lookup answer for a registered address (SPEC section 4)."""
        answer, _ = self.describe_at(address, self.clock())
        if with_key and answer["state"] is LookupState.REGISTERED:
            data = self.store.get_key(answer["fingerprint"])
            assert data is not None
            answer["key"] = armor(data)
        return answer

    def describe_at(self, address: str, now: datetime) -> tuple[dict[str, Any], datetime | None]:
        """The lookup answer at `now` without the key's bytes, and the first later instant at
        which time alone changes it (the key's or its encryption subkey's expiry), or None."""
        seen = self.store.described(address)  # one indexed query
        prefer_encrypt = seen.prefer_encrypt
        facts = seen.facts
        if facts is None or seen.level is None:
            unknown = {
                "address": address,
                "state": LookupState.UNKNOWN,
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
            return unknown, None
        reason = seen.reason or "Registered."
        use = rules.use_of(
            revoked=facts.revoked,
            expires=facts.expires,
            can_encrypt=facts.can_encrypt,
            encrypt_until=facts.encrypt_until,
            positive=seen.positive,
            now=now,
        )
        if use.why_not:
            reason += " " + use.why_not
        answer: dict[str, Any] = {
            "address": address,
            "state": LookupState.REGISTERED,
            "fingerprint": facts.fingerprint,
            "validation": seen.level.value,
            "usable": use.usable,
            "encrypt": use.encrypt,
            "expires": iso(facts.expires),
            "revoked": facts.revoked,
            "source": seen.source,
            "reason": reason,
            "prefer_encrypt": prefer_encrypt,
        }
        later = [t for t in (facts.expires, facts.encrypt_until) if t is not None and t > now]
        return answer, min(later, default=None)

    def history(self, address: str) -> dict[str, Any]:
        return {
            "address": address,
            "keys": self.store.history(address),
            "decisions": self.store.decisions(address),
        }


def address_or_none(text: object) -> str | None:
    """A normalised address from client input, or None if it is not one address."""
    if isinstance(text, str) and len(text) <= MAX_ADDRESS_TEXT:
        return normalize_address(text)
    return None
