"""SQLite store: keys, registrations, history, usage, source bookkeeping, engine state.

The daemon is the only writer. WAL mode with synchronous=NORMAL keeps each committed decision
after a crash of the process (SIGKILL); writes that belong together (a key, its registration,
its history row and the decision) are one transaction. Times are ISO 8601 UTC strings.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refreshd.audit import DiskFull
from refreshd.core import history
from refreshd.core.levels import Level, Way, recorded_way
from refreshd.core.providerkeys import PinKind
from refreshd.core.rules import Decision, Registration, UseEvent, successfully_used

__all__ = ["KeyFacts", "ProviderPin", "Source", "Store", "iso", "parse_time"]

USAGE_COLUMN = {
    UseEvent.SENT_ENCRYPTED: "sent_encrypted",
    UseEvent.RECEIVED_SIGNED: "received_signed",
}

SCHEMA_VERSION = 8
REJECTED_BYTES = 8 << 20  # rejected keys kept (newest first) for `verify` and fingerprint observes

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE keys (
        fingerprint TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        expires TEXT,
        revoked INTEGER NOT NULL DEFAULT 0,
        encrypt_until TEXT,
        can_encrypt INTEGER NOT NULL DEFAULT 0,
        updated TEXT NOT NULL
    );
    CREATE TABLE addresses (
        address TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL REFERENCES keys(fingerprint),
        level TEXT NOT NULL,
        source TEXT NOT NULL,
        positive INTEGER NOT NULL,
        registered_at TEXT NOT NULL
    );
    CREATE TABLE seen (
        address TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status TEXT NOT NULL,
        level TEXT NOT NULL,
        source TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (address, fingerprint)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        address TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        decision TEXT NOT NULL,
        level TEXT NOT NULL,
        source TEXT NOT NULL,
        rule TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX decisions_address ON decisions(address);
    CREATE TABLE usage (
        address TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        sent_encrypted TEXT,
        received_signed TEXT,
        PRIMARY KEY (address, fingerprint)
    );
    CREATE TABLE sources (
        url TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        address TEXT,
        fingerprint TEXT NOT NULL,
        etag TEXT,
        last_modified TEXT,
        body_sha256 TEXT,
        last_fetch TEXT,
        last_status TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        next_retry TEXT
    );
    CREATE INDEX sources_fingerprint ON sources(fingerprint);
    CREATE TABLE state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE own_keys (
        fingerprint TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        expires TEXT,
        next_extension_at TEXT,
        last_upload TEXT,
        seed INTEGER NOT NULL
    );
    """,
    # 2: what Autocrypt headers said about an address (its peer state): the preference, and the
    # effective date of the newest message whose header counted.
    2: """
    CREATE TABLE autocrypt (
        address TEXT PRIMARY KEY,
        prefer_encrypt TEXT,
        last_seen TEXT NOT NULL
    );
    """,
    # 3: the level a registration was found at, apart from what its vouches add. NULL marks a
    # registration written before it existed; the key manager recomputes those at start
    # (directory agreement used to be counted as consensus; it no longer is).
    3: """
    ALTER TABLE addresses ADD COLUMN base_level TEXT;
    """,
    # 4: bounded state and the audit outbox. A decision repeating the address's last one (the
    # same key seen again, unchanged) updates that row's last_ts and times instead of adding
    # one; rejected keys live apart, bounded in bytes; audit_intents holds the audit line of
    # each decision inside the decision's own transaction (audit.py says why).
    4: """
    ALTER TABLE decisions ADD COLUMN last_ts TEXT;
    ALTER TABLE decisions ADD COLUMN times INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE rejected_keys (
        fingerprint TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        stored_at TEXT NOT NULL
    );
    CREATE TABLE audit_intents (seq INTEGER PRIMARY KEY, line TEXT NOT NULL);
    """,
    # 5: what the refresh loop and `status` read on every step must not grow with the number of
    # keys: each registered key gets a small stable id (the schedule holds ids, not
    # fingerprints), every change of the registered set is logged for the loop to apply as a
    # delta, and the counts `status` shows are kept by triggers as the rows change.
    5: """
    CREATE INDEX addresses_fingerprint ON addresses(fingerprint);
    CREATE INDEX sources_failing ON sources(url, failures) WHERE failures > 0;
    CREATE TABLE refresh_keys (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        addresses INTEGER NOT NULL
    );
    CREATE TABLE refresh_changes (
        seq INTEGER PRIMARY KEY,
        id INTEGER NOT NULL,
        registered INTEGER NOT NULL
    );
    CREATE TABLE refresh_order (
        slot INTEGER PRIMARY KEY CHECK (slot IN (0, 1)),
        ids BLOB NOT NULL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO refresh_keys(fingerprint, addresses)
        SELECT fingerprint, count(*) FROM addresses GROUP BY fingerprint ORDER BY fingerprint;
    INSERT INTO counters(name, value) VALUES
        ('keys', (SELECT count(*) FROM refresh_keys)),
        ('addresses', (SELECT count(*) FROM addresses)),
        ('stored_keys', (SELECT count(*) FROM keys));
    CREATE TRIGGER keys_counted AFTER INSERT ON keys BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'stored_keys';
    END;
    CREATE TRIGGER keys_uncounted AFTER DELETE ON keys BEGIN
        UPDATE counters SET value = value - 1 WHERE name = 'stored_keys';
    END;
    CREATE TRIGGER address_added AFTER INSERT ON addresses BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'addresses';
        INSERT INTO refresh_keys(fingerprint, addresses) SELECT NEW.fingerprint, 0
            WHERE NOT EXISTS (SELECT 1 FROM refresh_keys WHERE fingerprint = NEW.fingerprint);
        UPDATE refresh_keys SET addresses = addresses + 1 WHERE fingerprint = NEW.fingerprint;
        INSERT INTO refresh_changes(id, registered)
            SELECT id, 1 FROM refresh_keys WHERE fingerprint = NEW.fingerprint AND addresses = 1;
        UPDATE counters SET value = value + changes() WHERE name = 'keys';
    END;
    CREATE TRIGGER address_removed AFTER DELETE ON addresses BEGIN
        UPDATE counters SET value = value - 1 WHERE name = 'addresses';
        UPDATE refresh_keys SET addresses = addresses - 1 WHERE fingerprint = OLD.fingerprint;
        INSERT INTO refresh_changes(id, registered)
            SELECT id, 0 FROM refresh_keys WHERE fingerprint = OLD.fingerprint AND addresses = 0;
        UPDATE counters SET value = value - changes() WHERE name = 'keys';
    END;
    CREATE TRIGGER address_moved AFTER UPDATE OF fingerprint ON addresses
    WHEN OLD.fingerprint != NEW.fingerprint BEGIN
        UPDATE refresh_keys SET addresses = addresses - 1 WHERE fingerprint = OLD.fingerprint;
        INSERT INTO refresh_changes(id, registered)
            SELECT id, 0 FROM refresh_keys WHERE fingerprint = OLD.fingerprint AND addresses = 0;
        UPDATE counters SET value = value - changes() WHERE name = 'keys';
        INSERT INTO refresh_keys(fingerprint, addresses) SELECT NEW.fingerprint, 0
            WHERE NOT EXISTS (SELECT 1 FROM refresh_keys WHERE fingerprint = NEW.fingerprint);
        UPDATE refresh_keys SET addresses = addresses + 1 WHERE fingerprint = NEW.fingerprint;
        INSERT INTO refresh_changes(id, registered)
            SELECT id, 1 FROM refresh_keys WHERE fingerprint = NEW.fingerprint AND addresses = 1;
        UPDATE counters SET value = value + changes() WHERE name = 'keys';
    END;
    """,
    # 6: provider keys pinned forever (SPEC 5.1): endorsement keys (OpenPGP, several per
    # provider) and the key its nicknym answers are signed with (kind 'response', raw Ed25519).
    6: """
    CREATE TABLE provider_keys (
        domain TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        kind TEXT NOT NULL,
        data BLOB NOT NULL,
        pinned_at TEXT NOT NULL,
        how TEXT NOT NULL,
        PRIMARY KEY (domain, fingerprint)
    );
    """,
    # 7: what a lookup reads of a key, in an index of its own: the facts sit after the key's
    # bytes in its row, and reading them there means walking the blob's overflow pages.
    7: """
    CREATE INDEX keys_facts ON keys(fingerprint, expires, revoked, encrypt_until, can_encrypt);
    """,
    # 8: columns nothing ever wrote: a source's retry time (the refresher's host backoff lives
    # in memory, core/refreshing.py) and the own key's expiry and next extension (read from the
    # key file and core/ownpolicy.py each time). No index, trigger or view names them.
    8: """
    ALTER TABLE sources DROP COLUMN next_retry;
    ALTER TABLE own_keys DROP COLUMN expires;
    ALTER TABLE own_keys DROP COLUMN next_extension_at;
    """,
}


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration one by one (a trigger's body holds semicolons too)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def _put_order(db: sqlite3.Connection, cycle: int, packed: bytes) -> None:
    db.execute(
        "INSERT INTO refresh_order(slot, ids) VALUES (?, ?) "
        "ON CONFLICT(slot) DO UPDATE SET ids=excluded.ids",
        (cycle % 2, packed),
    )


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat(timespec="seconds")


def parse_time(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


@dataclass(frozen=True)
class KeyFacts:
    """What a lookup needs about a stored key, kept beside its bytes so lookups never parse."""

    fingerprint: str
    expires: datetime | None
    revoked: bool
    can_encrypt: bool  # has a valid encryption subkey (ignoring time)
    encrypt_until: datetime | None  # latest expiry among those subkeys; None = no expiry


@dataclass(frozen=True)
class ProviderPin:
    """A provider key pinned for a domain: an endorsement key or the response-signing key."""

    domain: str
    fingerprint: str  # OpenPGP fingerprint, or "ed25519:<base64>" for the response key
    kind: PinKind
    data: bytes
    pinned_at: datetime
    how: str  # first-use | configured | forward-signed


@dataclass(frozen=True)
class Described:
    """A lookup's reading of one address (Store.described); `facts` is None when no key is
    registered for it."""

    prefer_encrypt: str | None
    level: Level | None = None
    source: Way | None = None
    positive: bool = False
    facts: KeyFacts | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Source:
    """Where a key is refreshed from, and what we know of the last answer."""

    url: str
    kind: Way  # the directory asked there
    address: str | None
    fingerprint: str
    etag: str | None = None
    last_modified: str | None = None
    body_sha256: str | None = None
    last_fetch: str | None = None
    last_status: str | None = None
    failures: int = 0


PAGE_CACHE_KIB = 512
ANALYSIS_LIMIT = 400  # rows looked at per index by the nightly ANALYZE


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        # The page cache is memory for ever (SQLite's default is 2 MiB a connection); reads
        # past it come from the kernel's page cache, a copy rather than a disk read. 512 KiB
        # holds the upper levels of every index a lookup or a step walks.
        self.db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        self._depth = 0
        # called after each outermost transaction commits (a memo that a write voids frees
        # its memory at once rather than at its next use)
        self.on_commit: list[Callable[[], None]] = []
        self._migrate()
        path.chmod(0o600)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this refreshd "
                f"({SCHEMA_VERSION}); upgrade refreshd"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in _statements(MIGRATIONS[target]):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {target}")

    def close(self) -> None:
        self.db.close()

    def _aside(self) -> sqlite3.Connection:
        """A connection of its own for a worker thread, with the same bounded page cache."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit; nested calls join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")
                for committed in self.on_commit:
                    committed()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise DiskFull(self.path) from exc
        finally:
            self._depth = 0

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()

    def generation(self) -> tuple[int, int] | None:
        """A value that changes with every write to the store, or None inside a transaction
        (whose writes may still be rolled back): what a memo of read answers is keyed on.

        The rows this connection inserted, changed or deleted (SQLite counts those of
        triggers too, and of rolled-back statements, which only invalidates more), and the
        database's data_version, which moves when another connection commits."""
        if self.db.in_transaction:
            return None
        return self.db.total_changes, self.db.execute("PRAGMA data_version").fetchone()[0]

    # keys -------------------------------------------------------------------------------
    def get_key(self, fingerprint: str) -> bytes | None:
        row = self._one("SELECT data FROM keys WHERE fingerprint = ?", fingerprint)
        return None if row is None else bytes(row["data"])

    def held_key(self, fingerprint: str) -> bytes | None:
        """A stored key, or a rejected one still kept: what `verify` may act on."""
        data = self.get_key(fingerprint)
        if data is not None:
            return data
        row = self._one("SELECT data FROM rejected_keys WHERE fingerprint = ?", fingerprint)
        return None if row is None else bytes(row["data"])

    def put_rejected_key(self, fingerprint: str, data: bytes, now: datetime) -> None:
        """Keep a rejected key while room lasts: the newest REJECTED_BYTES of them."""
        if len(data) > REJECTED_BYTES // 8:
            return  # one huge key must not push out all the others; its fingerprint stays
        self.db.execute(
            "INSERT INTO rejected_keys(fingerprint, data, stored_at) VALUES (?,?,?) "
            "ON CONFLICT(fingerprint) DO UPDATE SET data=excluded.data, "
            "stored_at=excluded.stored_at",
            (fingerprint, data, iso(now)),
        )
        self.db.execute(
            "DELETE FROM rejected_keys WHERE rowid IN (SELECT rowid FROM ("
            "SELECT rowid, sum(length(data)) OVER (ORDER BY stored_at DESC, rowid DESC) AS upto "
            "FROM rejected_keys) WHERE upto > ?)",
            (REJECTED_BYTES,),
        )

    def put_key(self, facts: KeyFacts, data: bytes, now: datetime) -> None:
        self.db.execute(
            "INSERT INTO keys(fingerprint, data, expires, revoked, encrypt_until, can_encrypt, "
            "updated) VALUES (?,?,?,?,?,?,?) ON CONFLICT(fingerprint) DO UPDATE SET "
            "data=excluded.data, expires=excluded.expires, revoked=excluded.revoked, "
            "encrypt_until=excluded.encrypt_until, can_encrypt=excluded.can_encrypt, "
            "updated=excluded.updated",
            (
                facts.fingerprint,
                data,
                iso(facts.expires),
                int(facts.revoked),
                iso(facts.encrypt_until),
                int(facts.can_encrypt),
                iso(now),
            ),
        )

    def described(self, address: str) -> Described:
        """What a lookup answers about `address`, in one indexed query: the registration, its
        key's facts (from the covering index, never the key's bytes), the reason of the
        latest decision that kept the key, and the address's Autocrypt preference."""
        row = self._one(
            "SELECT ac.prefer_encrypt, a.fingerprint, a.level, a.source, a.positive, "
            "k.expires, k.revoked, k.encrypt_until, k.can_encrypt, "
            "(SELECT d.reason FROM decisions d WHERE d.address = q.address "
            "AND d.fingerprint = a.fingerprint AND d.decision != 'rejected' "
            "ORDER BY d.id DESC LIMIT 1) AS reason "
            "FROM (SELECT ? AS address) q "
            "LEFT JOIN addresses a ON a.address = q.address "
            "LEFT JOIN keys k INDEXED BY keys_facts ON k.fingerprint = a.fingerprint "
            "LEFT JOIN autocrypt ac ON ac.address = q.address",
            address,
        )
        assert row is not None  # the one-row subquery always yields a row
        if row["fingerprint"] is None or row["level"] is None or row["revoked"] is None:
            return Described(row["prefer_encrypt"])
        facts = KeyFacts(
            row["fingerprint"],
            parse_time(row["expires"]),
            bool(row["revoked"]),
            bool(row["can_encrypt"]),
            parse_time(row["encrypt_until"]),
        )
        return Described(
            row["prefer_encrypt"],
            Level(row["level"]),
            recorded_way(row["source"]),
            bool(row["positive"]),
            facts,
            row["reason"],
        )

    def registration(self, address: str) -> Registration | None:
        row = self._one(
            "SELECT a.fingerprint, a.level, a.base_level, a.source, a.positive, k.expires, "
            "k.revoked, "
            "u.sent_encrypted, u.received_signed FROM addresses a "
            "JOIN keys k INDEXED BY keys_facts ON k.fingerprint = a.fingerprint "
            "LEFT JOIN usage u ON u.address = a.address AND u.fingerprint = a.fingerprint "
            "WHERE a.address = ?",
            address,
        )
        if row is None:
            return None
        return Registration(
            fingerprint=row["fingerprint"],
            level=Level(row["level"]),
            base_level=Level(row["base_level"]) if row["base_level"] else None,
            source=recorded_way(row["source"]),
            positive=bool(row["positive"]),
            expires=parse_time(row["expires"]),
            revoked=bool(row["revoked"]),
            successfully_used=successfully_used(
                row["sent_encrypted"] is not None, row["received_signed"] is not None
            ),
        )

    def apply(self, address: str, d: Decision, now: datetime) -> None:
        """Persist one decision: registration, history rows and the decision log."""
        stamp = iso(now)
        current = self._one("SELECT fingerprint FROM addresses WHERE address = ?", address)
        registered = None
        if current is not None:
            entry = self._entry(address, current["fingerprint"])
            registered = None if entry is None else (current["fingerprint"], entry)
        changed = history.after(d, self._entry(address, d.fingerprint), registered)
        if d.registers:
            self.db.execute(
                "INSERT INTO addresses(address, fingerprint, level, base_level, source, positive, "
                "registered_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(address) DO UPDATE SET "
                "fingerprint=excluded.fingerprint, level=excluded.level, "
                "base_level=excluded.base_level, "
                "source=excluded.source, positive=excluded.positive, registered_at="
                "CASE WHEN addresses.fingerprint = excluded.fingerprint "
                "THEN addresses.registered_at ELSE excluded.registered_at END",
                (
                    address,
                    d.fingerprint,
                    d.level.value,
                    (d.base_level or d.level).value,
                    d.source.value,
                    int(d.positive),
                    stamp,
                ),
            )
        for fingerprint, e in changed.items():
            seen_now = fingerprint == d.fingerprint
            self.db.execute(
                "INSERT INTO seen(address, fingerprint, status, level, source, first_seen, "
                "last_seen, reason) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(address, fingerprint) "
                "DO UPDATE SET status=excluded.status, level=excluded.level, "
                "source=excluded.source, reason=excluded.reason"
                + (", last_seen=excluded.last_seen" if seen_now else ""),
                (
                    address,
                    fingerprint,
                    e.status.value,
                    e.level.value,
                    e.source.value,
                    stamp,
                    stamp,
                    e.reason,
                ),
            )
        last = self._one(
            "SELECT id, fingerprint, decision, level, source, rule, reason FROM decisions "
            "WHERE address = ? ORDER BY id DESC LIMIT 1",
            address,
        )
        same = (
            d.fingerprint,
            d.decision.value,
            d.level.value,
            d.source.value,
            d.rule.value,
            d.reason,
        )
        if last is not None and tuple(last)[1:] == same:  # seen again, nothing new: one row
            self.db.execute(
                "UPDATE decisions SET last_ts = ?, times = times + 1 WHERE id = ?",
                (stamp, last["id"]),
            )
            return
        self.db.execute(
            "INSERT INTO decisions(ts, address, fingerprint, decision, level, source, rule, "
            "reason) VALUES (?,?,?,?,?,?,?,?)",
            (stamp, address, *same),
        )

    def _entry(self, address: str, fingerprint: str) -> history.Entry | None:
        """The key's entry in the address's history, if it has one."""
        row = self._one(
            "SELECT status, level, source, reason FROM seen WHERE address = ? AND fingerprint = ?",
            address,
            fingerprint,
        )
        if row is None:
            return None
        status, level = history.Status(row["status"]), Level(row["level"])
        return history.Entry(status, level, recorded_way(row["source"]), row["reason"])

    def uncorrected(self) -> list[tuple[str, str, Level, str]]:
        """Registrations written before base_level existed: (address, fingerprint, level,
        source)."""
        rows = self.db.execute(
            "SELECT address, fingerprint, level, source FROM addresses WHERE base_level IS NULL "
            "ORDER BY address"
        )
        return [(r[0], r[1], Level(r[2]), r[3]) for r in rows]

    def recorded_ways(self, address: str, fingerprint: str) -> list[tuple[str, Level]]:
        """(source, level) of every decision that registered or kept this key here."""
        rows = self.db.execute(
            "SELECT source, level FROM decisions WHERE address = ? AND fingerprint = ? "
            "AND decision != 'rejected' ORDER BY id",
            (address, fingerprint),
        )
        return [(r[0], Level(r[1])) for r in rows]

    def correct_level(
        self, address: str, fingerprint: str, level: Level, base: Level, source: Way
    ) -> None:
        """Set a registration's level (the registered key itself is unchanged)."""
        self.db.execute(
            "UPDATE addresses SET level = ?, base_level = ?, source = ? "
            "WHERE address = ? AND fingerprint = ?",
            (level.value, base.value, source.value, address, fingerprint),
        )
        self.db.execute(
            "UPDATE seen SET level = ?, source = ? WHERE address = ? AND fingerprint = ?",
            (level.value, source.value, address, fingerprint),
        )

    def history(self, address: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT fingerprint, level AS validation, status, first_seen, last_seen, source, "
            "reason FROM seen "
            "WHERE address = ? ORDER BY first_seen, fingerprint",
            (address,),
        ).fetchall()
        return [dict(r) for r in rows]

    def decisions(self, address: str) -> list[dict[str, Any]]:
        """The address's decisions, oldest first; a repeated one once, with `times` and the
        `last_ts` of its latest repetition."""
        rows = self.db.execute(
            "SELECT ts, coalesce(last_ts, ts) AS last_ts, times, fingerprint, decision, level, "
            "source, rule, reason FROM decisions WHERE address = ? ORDER BY id",
            (address,),
        ).fetchall()
        return [dict(r) for r in rows]

    def addresses_of(self, fingerprint: str) -> list[str]:
        rows = self.db.execute(
            "SELECT address FROM addresses WHERE fingerprint = ? ORDER BY address", (fingerprint,)
        )
        return [r["address"] for r in rows]

    def is_registered(self, fingerprint: str) -> bool:
        return self._one("SELECT 1 FROM addresses WHERE fingerprint = ?", fingerprint) is not None

    def registered_fingerprints(self) -> list[str]:
        """Every registered key (import builds its keep-set from it: once per import)."""
        rows = self.db.execute("SELECT fingerprint FROM refresh_keys WHERE addresses > 0")
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        """Registered keys, addresses and stored keys: counters the triggers keep, O(1)."""
        rows = self.db.execute("SELECT name, value FROM counters")
        return {r[0]: r[1] for r in rows}

    def served_status(self, fingerprint: str) -> str | None:
        """`registered` or `retired` if the key is either for some address, else None (a
        rejected or unknown key is never handed out by the keyserver door, SPEC 11)."""
        row = self._one(
            "SELECT min(status) FROM seen WHERE fingerprint = ? "
            "AND status IN ('registered', 'retired')",
            fingerprint,
        )
        return None if row is None else row[0]

    # autocrypt peer state ------------------------------------------------------------------
    def autocrypt(self, address: str) -> tuple[str | None, datetime] | None:
        """(prefer_encrypt, effective date of the newest header that counted), if any."""
        row = self._one(
            "SELECT prefer_encrypt, last_seen FROM autocrypt WHERE address = ?", address
        )
        if row is None:
            return None
        return row["prefer_encrypt"], datetime.fromisoformat(row["last_seen"])

    def put_autocrypt(self, address: str, prefer_encrypt: str, last_seen: datetime) -> None:
        """Record a header that counted: its preference replaces the one held."""
        self.db.execute(
            "INSERT INTO autocrypt(address, prefer_encrypt, last_seen) VALUES (?,?,?) "
            "ON CONFLICT(address) DO UPDATE SET last_seen=excluded.last_seen, "
            "prefer_encrypt=excluded.prefer_encrypt",
            (address, prefer_encrypt, iso(last_seen)),
        )

    # usage ------------------------------------------------------------------------------
    def successfully_used_after(self, address: str, fingerprint: str, event: UseEvent) -> bool:
        """What `record_use` of `event` will make of successfully_used (read before it)."""
        row = self._one(
            "SELECT sent_encrypted, received_signed FROM usage WHERE address=? AND fingerprint=?",
            address,
            fingerprint,
        )
        sent, received = (row[0] is not None, row[1] is not None) if row else (False, False)
        return successfully_used(
            sent or event is UseEvent.SENT_ENCRYPTED, received or event is UseEvent.RECEIVED_SIGNED
        )

    def record_use(self, address: str, fingerprint: str, event: UseEvent, now: datetime) -> bool:
        column = USAGE_COLUMN[event]
        self.db.execute(
            f"INSERT INTO usage(address, fingerprint, {column}) VALUES (?,?,?) "
            f"ON CONFLICT(address, fingerprint) DO UPDATE SET {column}="
            f"coalesce(usage.{column}, excluded.{column})",
            (address, fingerprint, iso(now)),
        )
        row = self._one(
            "SELECT sent_encrypted, received_signed FROM usage WHERE address=? AND fingerprint=?",
            address,
            fingerprint,
        )
        assert row is not None
        return successfully_used(row[0] is not None, row[1] is not None)

    # sources ----------------------------------------------------------------------------
    def put_source(self, s: Source) -> None:
        self.db.execute(
            "INSERT INTO sources(url, kind, address, fingerprint, etag, last_modified, "
            "body_sha256, last_fetch, last_status, failures) "
            "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(url) DO UPDATE SET "
            "kind=excluded.kind, address=excluded.address, fingerprint=excluded.fingerprint, "
            "etag=excluded.etag, last_modified=excluded.last_modified, "
            "body_sha256=excluded.body_sha256, last_fetch=excluded.last_fetch, "
            "last_status=excluded.last_status, failures=excluded.failures",
            (
                s.url,
                s.kind.value,
                s.address,
                s.fingerprint,
                s.etag,
                s.last_modified,
                s.body_sha256,
                s.last_fetch,
                s.last_status,
                s.failures,
            ),
        )

    def sources_of(self, fingerprint: str) -> list[Source]:
        rows = self.db.execute(
            "SELECT * FROM sources WHERE fingerprint = ? ORDER BY rowid", (fingerprint,)
        ).fetchall()
        return [Source(**{**dict(r), "kind": Way(r["kind"])}) for r in rows]

    def failures_by_host(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.db.execute("SELECT url, failures FROM sources WHERE failures > 0"):
            host = r["url"].split("/")[2] if "://" in r["url"] else r["url"]
            out[host] = out.get(host, 0) + r["failures"]
        return out

    # the refresh schedule's view of the registered keys -------------------------------------
    def refresh_ids(self) -> array[int]:
        """The ids of every registered key, ascending (a fresh schedule's first cycle): packed,
        8 bytes a key, never an object per key."""
        rows = self.db.execute("SELECT id FROM refresh_keys WHERE addresses > 0 ORDER BY id")
        return array("q", (r[0] for r in rows))

    def refresh_id(self, fingerprint: str) -> int | None:
        row = self._one(
            "SELECT id FROM refresh_keys WHERE fingerprint = ? AND addresses > 0", fingerprint
        )
        return None if row is None else int(row[0])

    def refresh_fingerprint(self, key_id: int) -> str | None:
        row = self._one("SELECT fingerprint FROM refresh_keys WHERE id = ?", key_id)
        return None if row is None else str(row[0])

    def refresh_changes(self, after: int) -> tuple[int, set[int], set[int]]:
        """Changes of the registered set since change `after`: (last change, added, removed),
        each id in at most one of the two sets (its last change wins)."""
        last, added, removed = after, set(), set()
        rows = self.db.execute(
            "SELECT seq, id, registered FROM refresh_changes WHERE seq > ? ORDER BY seq", (after,)
        )
        for seq, key_id, registered in rows:
            last = seq
            (added if registered else removed).add(key_id)
            (removed if registered else added).discard(key_id)
        return last, added, removed

    def forget_refresh_changes(self, through: int) -> None:
        self.db.execute("DELETE FROM refresh_changes WHERE seq <= ?", (through,))

    def last_refresh_change(self) -> int:
        row = self._one("SELECT max(seq) FROM refresh_changes")
        return 0 if row is None or row[0] is None else int(row[0])

    def get_refresh_order(self, cycle: int) -> bytes | None:
        """The saved order of `cycle` (two slots: the current cycle's, and the next one's
        while it is being drawn)."""
        row = self._one("SELECT ids FROM refresh_order WHERE slot = ?", cycle % 2)
        return None if row is None else bytes(row[0])

    def put_refresh_order(self, cycle: int, packed: bytes) -> None:
        _put_order(self.db, cycle, packed)

    def put_refresh_order_aside(self, cycle: int, packed: bytes) -> None:
        """put_refresh_order on a connection of its own, for a worker thread: the slot it
        writes is not the current cycle's, so the loop's connection never reads it meanwhile."""
        db = self._aside()
        try:
            db.execute("BEGIN IMMEDIATE")
            _put_order(db, cycle, packed)
            db.execute("COMMIT")
        finally:
            db.close()

    # provider keys ----------------------------------------------------------------------
    def provider_pins(self, domain: str) -> list[ProviderPin]:
        rows = self.db.execute(
            "SELECT domain, fingerprint, kind, data, pinned_at, how FROM provider_keys "
            "WHERE domain = ? ORDER BY pinned_at, fingerprint",
            (domain,),
        ).fetchall()
        return [
            ProviderPin(r[0], r[1], PinKind(r[2]), bytes(r[3]), datetime.fromisoformat(r[4]), r[5])
            for r in rows
        ]

    def all_provider_pins(self) -> list[str]:
        """The fingerprints of every endorsement key pinned for any provider."""
        rows = self.db.execute(
            "SELECT fingerprint FROM provider_keys WHERE kind = ?", (PinKind.ENDORSEMENT.value,)
        )
        return [r[0] for r in rows]

    def pin_provider_key(self, pin: ProviderPin) -> None:
        """Pin a key, or (already pinned) take its newer data; the pin itself never moves."""
        self.db.execute(
            "INSERT INTO provider_keys(domain, fingerprint, kind, data, pinned_at, how) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(domain, fingerprint) DO UPDATE SET "
            "data=excluded.data",
            (pin.domain, pin.fingerprint, pin.kind.value, pin.data, iso(pin.pinned_at), pin.how),
        )

    # engine state -----------------------------------------------------------------------
    def get_state(self, name: str) -> str | None:
        row = self._one("SELECT value FROM state WHERE name = ?", name)
        return None if row is None else row["value"]

    def put_state(self, name: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO state(name, value) VALUES (?,?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, value),
        )

    # own keys (own.py) --------------------------------------------------------------------
    def own_key(self, fingerprint: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM own_keys WHERE fingerprint = ?", fingerprint)
        return None if row is None else dict(row)

    def add_own_key(self, fingerprint: str, address: str, seed: int) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO own_keys(fingerprint, address, seed) VALUES (?,?,?)",
                (fingerprint, address, seed),
            )

    def own_key_uploaded(self, fingerprint: str, at: datetime) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE own_keys SET last_upload = ? WHERE fingerprint = ?", (iso(at), fingerprint)
            )

    # audit intents (audit.py) -------------------------------------------------------------
    def put_audit_intent(self, seq: int, line: str, written_seq: int) -> None:
        """Inside a decision's transaction: its audit line; lines the file holds go."""
        self.db.execute("DELETE FROM audit_intents WHERE seq <= ?", (written_seq,))
        self.db.execute("INSERT OR REPLACE INTO audit_intents(seq, line) VALUES (?,?)", (seq, line))

    def audit_intents(self) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self.db.execute("SELECT seq, line FROM audit_intents")]

    def clear_audit_intents(self, written_seq: int) -> None:
        """Drop the intents the audit file now holds (all of them, unless the disk is full)."""
        self.db.execute("DELETE FROM audit_intents WHERE seq <= ?", (written_seq,))

    def maintain(self) -> None:
        """Nightly: checkpoint the WAL and refresh SQLite's statistics, on a connection of its
        own so a worker thread can run it while the loop goes on with the store's. ANALYZE
        looks at a bounded sample of each index (analysis_limit, as SQLite advises for
        periodic runs): at 100,000 keys a full one held the loop for 0.2 s."""
        db = self._aside()
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
            db.execute("ANALYZE")
        finally:
            db.close()
