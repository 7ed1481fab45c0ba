"""The socket methods of SPEC section 4: parameter checks, then a call into the daemon's parts.

Parameters are checked against a small table per method (types, allowed values, required);
anything else is -32602 with the parameter named, so a client learns its mistake at once.
This is the one place where the error tree (refreshd.errors) becomes JSON-RPC codes
(`rpc_error`): InvalidRequest is -32602, any other expected failure -32603 with its reason.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from refreshd import __version__
from refreshd.answers import PreparedAnswers
from refreshd.core import autocrypt, levels
from refreshd.core.levels import Dkim, Way
from refreshd.core.rules import DecisionKind, LookupState, UseEvent
from refreshd.errors import InvalidRequest, RefreshdError
from refreshd.keymanager import MAX_ADDRESS_TEXT, Found, KeyManager, address_or_none
from refreshd.rpc import INTERNAL_ERROR, INVALID_PARAMS, Encoded, Param, RpcError, checked

__all__ = ["Service"]

FPR = re.compile(r"^[0-9A-Fa-f]{40}$")
SPELLINGS_KEPT = 1024  # addresses as clients wrote them (each at most MAX_ADDRESS_TEXT long)
MAX_KEY_TEXT = 1 << 20  # the line limit bounds it anyway; say so clearly
QUEUE_FULL = "The discovery queue is full (queue full, will retry): {address} {when}."
TURN = "waits for its turn and is looked for as soon as there is room"
ASK = "could not even wait for its turn; ask again in a while"


class Discovery(Protocol):
    def pending(self, address: str) -> bool: ...
    def conflict(self, address: str) -> str | None: ...
    def mail_failure(self, address: str) -> str | None: ...
    def request(self, address: str) -> bool: ...
    def waiting_for_room(self, address: str) -> bool: ...
    async def wait(self, address: str, seconds: float) -> None: ...
    async def by_fingerprint(self, address: str, fingerprint: str, found: Found) -> Any: ...
    async def from_header_url(self, address: str, url: str) -> Any: ...


class Refresher(Protocol):
    def urgent(self, fingerprint: str) -> str: ...
    def status(self) -> dict[str, Any]: ...


class Own(Protocol):
    def report(self) -> list[dict[str, Any]]: ...
    async def import_key(self, armored: str, passphrase: str | None) -> dict[str, Any]: ...
    async def generate(self, address: str, name: str | None) -> dict[str, Any]: ...


@functools.lru_cache(maxsize=SPELLINGS_KEPT)
def _normalized(value: str) -> str | None:
    """address_or_none for the socket's `address` parameters: clients ask for the same
    addresses again and again, and the parse is a fifth of a prepared lookup's cost."""
    return address_or_none(value)


def address_param(value: str) -> str:
    address = _normalized(value) if len(value) <= MAX_ADDRESS_TEXT else None
    if address is None or "<" in value:
        raise RpcError(INVALID_PARAMS, f"Invalid params: {value[:80]!r} is not an email address")
    return address


LOOKUP_PARAMS = {
    "address": Param(str),
    "discover": Param(bool, True),
    "wait": Param((int, float), 0),
    "armor": Param(bool, False),
}


LOOKUP_DEFAULTS = {name: p.default for name, p in LOOKUP_PARAMS.items() if name != "address"}


def _lookup_params(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if len(params) == 1 and type(params.get("address")) is str:  # the usual call, checked
        p = {"address": params["address"], **LOOKUP_DEFAULTS}
    else:
        p = checked(params, LOOKUP_PARAMS)
    address = address_param(p["address"])
    if not 0 <= p["wait"] <= 600:
        raise RpcError(INVALID_PARAMS, "Invalid params: 'wait' must be 0 to 600 seconds")
    return address, p


def fingerprint_param(value: str) -> str:
    compact = value.replace(" ", "")
    if not FPR.match(compact):
        raise RpcError(INVALID_PARAMS, "Invalid params: fingerprint must be 40 hex digits")
    return compact.upper()


def rpc_error(exc: RefreshdError) -> RpcError:
    """The socket's answer to an expected failure of a daemon part."""
    if isinstance(exc, InvalidRequest):
        return RpcError(INVALID_PARAMS, f"Invalid params: {exc.reason}")
    return RpcError(INTERNAL_ERROR, exc.reason)


Method = Callable[[dict[str, Any]], Awaitable[Any]]


def _answering(method: Method) -> Method:
    async def call(params: dict[str, Any]) -> Any:
        try:
            return await method(params)
        except RefreshdError as exc:
            raise rpc_error(exc) from exc

    return call


class Service:
    def __init__(
        self,
        keys: KeyManager,
        *,
        discovery: Discovery,
        refresher: Refresher,
        own: Own,
        tor_status: Callable[[], dict[str, Any]],
        import_gnupg: Callable[[str], Awaitable[dict[str, Any]]],
        importing: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.keys = keys
        self.answers = PreparedAnswers(keys)
        self.discovery = discovery
        self.refresher = refresher
        self.own_keys = own
        self.tor_status = tor_status
        self._import_gnupg = import_gnupg
        self._importing = importing

    def methods(self) -> dict[str, Method]:
        table: dict[str, Method] = {
            "lookup": self.socket_lookup,
            "observe": self.observe,
            "used": self.used,
            "verify": self.verify,
            "history": self.history,
            "refresh": self.refresh,
            "status": self.status,
            "own": self.own,
            "own_import": self.own_import,
            "own_generate": self.own_generate,
            "import_gnupg": self.import_gnupg,
        }
        return {name: _answering(method) for name, method in table.items()}

    async def socket_lookup(self, params: dict[str, Any]) -> dict[str, Any] | Encoded:
        """`lookup` on the socket: a registered address's answer goes out prepared
        (refreshd.answers), the same bytes `lookup` would encode."""
        address, p = _lookup_params(params)
        if not p["armor"]:
            prepared = self.answers.registered(address)
            if prepared is not None:
                return prepared
        return await self._lookup(address, p)

    async def lookup(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self._lookup(*_lookup_params(params))

    async def _lookup(self, address: str, p: dict[str, Any]) -> dict[str, Any]:
        answer = self.keys.describe(address, with_key=p["armor"])
        if answer["state"] is LookupState.REGISTERED or not p["discover"]:
            return answer
        if not self.discovery.pending(address) and not self.discovery.request(address):
            answer.update(
                state=LookupState.PENDING, reason=QUEUE_FULL.format(address=address, when=ASK)
            )
            return answer
        if p["wait"]:
            await self.discovery.wait(address, p["wait"])
            answer = self.keys.describe(address, with_key=p["armor"])
            if answer["state"] is LookupState.REGISTERED or not self.discovery.pending(address):
                conflict = self.discovery.conflict(address)
                if answer["state"] is LookupState.UNKNOWN and conflict is not None:
                    answer.update(
                        state=LookupState.CONFLICT, reason=f"Nothing registered: {conflict}"
                    )
                elif answer["state"] is LookupState.UNKNOWN:
                    answer["reason"] = (
                        f"Discovery found no key for {address} that could be registered; see "
                        "`refreshd history` for what was seen."
                    )
                    by_mail = self.discovery.mail_failure(address)
                    if by_mail is not None:
                        answer["reason"] += f" The key request by mail: {by_mail}."
                return answer
        conflict = self.discovery.conflict(address)
        if conflict is not None and not self.discovery.pending(address):
            answer.update(state=LookupState.CONFLICT, reason=f"Nothing registered: {conflict}")
            return answer
        if self.discovery.waiting_for_room(address):
            answer.update(
                state=LookupState.PENDING, reason=QUEUE_FULL.format(address=address, when=TURN)
            )
        else:
            answer.update(
                state=LookupState.PENDING, reason=f"Discovery for {address} is under way."
            )
        return answer

    async def observe(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(
            params,
            {
                "address": Param(str),
                "key": Param(str, None),
                "fingerprint": Param(str, None),
                "origin": Param(str, choices=levels.MAIL_ORIGINS),
                "dkim": Param(str, Dkim.NONE.value, tuple(Dkim)),
                "url": Param(str, None),
                "autocrypt": Param(str, None),
                "date": Param(str, None),
            },
        )
        address = address_param(p["address"])
        origin = Way(p["origin"])  # one of levels.MAIL_ORIGINS, checked above
        header_url = origin is Way.OPENPGP_HEADER and p["url"] is not None
        given = sum(p[name] is not None for name in ("key", "fingerprint", "autocrypt"))
        if given > 1 or (given == 0 and not header_url):
            raise RpcError(
                INVALID_PARAMS,
                "Invalid params: give exactly one of 'key', 'fingerprint' or 'autocrypt'"
                " (or, for an OpenPGP header, its 'url')",
            )
        date = None
        if p["date"] is not None:
            date = autocrypt.message_date(p["date"][:200])
            if date is None:
                raise RpcError(
                    INVALID_PARAMS, "Invalid params: 'date' must be ISO 8601 or RFC 5322"
                )
        level, positive = levels.for_mail(origin, Dkim(p["dkim"]))
        found = Found(origin, level, positive, url=p["url"])
        if p["autocrypt"] is not None:
            if origin not in (Way.AUTOCRYPT, Way.GOSSIP):
                raise RpcError(
                    INVALID_PARAMS,
                    "Invalid params: 'autocrypt' goes with origin autocrypt or gossip",
                )
            return _decision(
                await self.keys.consider_autocrypt(address, p["autocrypt"], found, date)
            )
        if header_url and levels.standard_header_url(p["url"], address):
            fetched = await self.discovery.from_header_url(address, p["url"])
            if fetched is not None:
                return _decision(fetched)
        if given == 0:
            return {
                "decision": DecisionKind.REJECTED.value,
                "fingerprint": None,
                "validation": None,
                "reason": f"The OpenPGP header URL {p['url'][:200]} is not in a standard "
                "form on the sender's domain, or gave no usable key (SPEC 5.1).",
            }
        if p["fingerprint"] is not None:
            fpr = fingerprint_param(p["fingerprint"])
            found = Found(origin, level, positive, asked_fingerprint=fpr, url=p["url"])
            stored = self.keys.store.held_key(fpr)
            decision = (
                self.keys.consider(address, await self.keys.taken_in(address, stored), found)
                if stored is not None
                else await self.discovery.by_fingerprint(address, fpr, found)
            )
        else:
            if len(p["key"]) > MAX_KEY_TEXT:
                raise RpcError(INVALID_PARAMS, "Invalid params: 'key' is larger than 1 MiB")
            data = p["key"].encode("utf-8", "replace")
            decision = self.keys.consider(address, await self.keys.taken_in(address, data), found)
        return _decision(decision)

    async def used(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(
            params,
            {
                "address": Param(str),
                "fingerprint": Param(str),
                "event": Param(str, choices=tuple(UseEvent)),
            },
        )
        done = self.keys.used(
            address_param(p["address"]), fingerprint_param(p["fingerprint"]), UseEvent(p["event"])
        )
        return {"successfully_used": done}

    async def verify(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(params, {"address": Param(str), "fingerprint": Param(str)})
        decision = self.keys.verify(
            address_param(p["address"]), fingerprint_param(p["fingerprint"])
        )
        return _decision(decision)

    async def history(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(params, {"address": Param(str)})
        return self.keys.history(address_param(p["address"]))

    async def refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(params, {"address": Param(str, None), "fingerprint": Param(str, None)})
        if (p["address"] is None) == (p["fingerprint"] is None):
            raise RpcError(
                INVALID_PARAMS, "Invalid params: give exactly one of 'address' or 'fingerprint'"
            )
        if p["fingerprint"] is not None:
            fpr = fingerprint_param(p["fingerprint"])
            if not self.keys.store.is_registered(fpr):
                raise RpcError(INVALID_PARAMS, f"Invalid params: {fpr} is not a registered key")
        else:
            reg = self.keys.store.registration(address_param(p["address"]))
            if reg is None:
                raise RpcError(
                    INVALID_PARAMS,
                    "Invalid params: no key is registered for "
                    f"{p['address']}; use lookup to discover one",
                )
            fpr = reg.fingerprint
        return {"fingerprint": fpr, "scheduled_at": self.refresher.urgent(fpr)}

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        checked(params, {})
        counts = self.keys.store.counts()
        refresh = self.refresher.status()
        return {
            "version": __version__,
            "tor": self.tor_status(),
            "keys": counts["keys"],
            "addresses": counts["addresses"],
            "next_refresh_at": refresh.get("next_refresh_at"),
            "refresh": refresh,
            "own": self.own_keys.report(),
            "import_gnupg": self._importing(),  # keys decided of how many, while one runs
        }

    async def own(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        checked(params, {})
        return self.own_keys.report()

    async def own_import(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(params, {"key": Param(str), "passphrase": Param(str, None)})
        return await self.own_keys.import_key(p["key"], p["passphrase"])

    async def own_generate(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(params, {"address": Param(str), "name": Param(str, None)})
        return await self.own_keys.generate(address_param(p["address"]), p["name"])

    async def import_gnupg(self, params: dict[str, Any]) -> dict[str, Any]:
        p = checked(params, {"homedir": Param(str, "")})
        return await self._import_gnupg(p["homedir"])


def _decision(d: Any) -> dict[str, Any]:
    return {
        "decision": d.decision.value,
        "fingerprint": d.fingerprint or None,
        "validation": d.level.value,
        "reason": d.reason,
    }
