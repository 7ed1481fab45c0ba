"""The socket's prepared `lookup` answers (refreshd.answers) are exactly the fresh answer after
any change to what a lookup shows: registrations, keys, decisions, uses, Autocrypt
preferences, a rolled-back transaction and time crossing an expiry at once, and a write by
another connection within ELSEWHERE seconds. The same real keys as the key manager's own
properties (gpg-made expiry versions)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.answers import ELSEWHERE, PreparedAnswers
from refreshd.core.rules import UseEvent
from refreshd.keymanager import KeyManager
from refreshd.openpgp.keyview import read_key
from refreshd.rpc import encode
from tests.test_keymanager_properties import BOB, FOUND, manager, pool  # noqa: F401 (fixture)

CAROL = "carol@example.org"
KEYS = ["v1", "v2", "v3", "transition", "never", "pgpy", "other"]

op = st.one_of(
    st.tuples(
        st.just("observe"),
        st.sampled_from([BOB, CAROL]),
        st.sampled_from(KEYS),
        st.integers(0, len(FOUND) - 1),
    ),
    st.tuples(st.just("use"), st.sampled_from([UseEvent.SENT_ENCRYPTED, UseEvent.RECEIVED_SIGNED])),
    st.tuples(st.just("verify"), st.sampled_from(["v1", "pgpy", "transition"])),
    st.tuples(
        st.just("autocrypt"),
        st.sampled_from([BOB, CAROL]),
        st.sampled_from(["mutual", "nopreference"]),
    ),
    st.tuples(st.just("time"), st.integers(1, 500)),
    st.tuples(st.just("elsewhere"), st.sampled_from(["positive", "level", "reason"])),
    st.tuples(st.just("rolled_back"), st.sampled_from(KEYS)),
)


def check(km: KeyManager, answers: PreparedAnswers) -> None:
    """Prepared and fresh agree, byte for byte, for every address; asked twice, so the
    second answer comes from what was kept."""
    for address in (BOB, CAROL):
        fresh = km.describe(address)
        for _ in range(2):
            prepared = answers.registered(address)
            if fresh["state"] != "registered":
                assert prepared is None
            else:
                assert prepared is not None
                assert prepared.json == encode(fresh).json
                assert json.loads(prepared.json) == fresh


class Ticks:
    """A monotonic clock that moves only when a test moves it: the daemon's own writes must
    be seen with no time passing at all."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write_elsewhere(km: KeyManager, sql: str) -> None:
    """Another process or connection writes the same database."""
    db = sqlite3.connect(km.store.path, isolation_level=None)
    try:
        db.execute(sql)
    finally:
        db.close()


def step(km: KeyManager, keys: dict[str, bytes], answers: PreparedAnswers, s: tuple) -> None:
    if s[0] == "observe":
        km.consider(s[1], keys[s[2]], FOUND[s[3]])
    elif s[0] == "use" and (reg := km.store.registration(BOB)) is not None:
        km.used(BOB, reg.fingerprint, s[1])
    elif s[0] == "verify":
        km.verify(BOB, read_key(keys[s[1]], datetime.now(UTC)).fingerprint)
    elif s[0] == "autocrypt":
        km.store.put_autocrypt(s[1], s[2], km.clock())
    elif s[0] == "time":
        km.clock.now += timedelta(days=s[1])  # type: ignore[attr-defined]
    elif s[0] == "elsewhere":
        sql = {
            "positive": "UPDATE addresses SET positive = 1 - positive",
            "level": "UPDATE addresses SET level = 'weak-chain'",
            "reason": "UPDATE decisions SET reason = reason || ' (edited)'",
        }[s[1]]
        write_elsewhere(km, sql)
        answers.monotonic.now += ELSEWHERE  # type: ignore[attr-defined]
    elif s[0] == "rolled_back":
        try:
            with km.store.transaction():
                km.consider(CAROL, keys[s[1]], FOUND[0])
                check(km, answers)  # inside: served fresh, nothing kept
                raise RuntimeError("roll back")
        except RuntimeError:
            pass


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(op, min_size=1, max_size=12))
def test_prepared_answers_follow_every_change(pool, ops):  # noqa: F811
    with tempfile.TemporaryDirectory(prefix="answers-prop-") as root:
        km = manager(Path(root))
        answers = PreparedAnswers(km, Ticks())
        try:
            check(km, answers)
            for s in ops:
                step(km, pool, answers, s)
                check(km, answers)
        finally:
            km.store.close()
            km.audit.close()


def test_an_answer_is_kept_until_the_key_expires(tmp_path, pool):  # noqa: F811
    """Between writes the kept answer is served without asking the store again; the expiry
    ends it."""
    km = manager(tmp_path)
    answers = PreparedAnswers(km)
    asked: list[str] = []
    describe_at = km.describe_at

    def counted(address, now):
        asked.append(address)
        return describe_at(address, now)

    km.describe_at = counted  # type: ignore[method-assign]
    try:
        km.consider(BOB, pool["v3"], FOUND[0])
        first = answers.registered(BOB)
        assert first is not None and answers.registered(BOB) == first and len(asked) == 1
        expires = km.store.described(BOB).facts.expires
        km.clock.now = expires - timedelta(seconds=1)
        assert answers.registered(BOB) == first and len(asked) == 1
        km.clock.now = expires
        later = answers.registered(BOB)
        assert len(asked) == 2 and json.loads(later.json)["usable"] is False
        assert json.loads(first.json)["usable"] is True
    finally:
        km.store.close()
        km.audit.close()


def test_a_write_elsewhere_is_seen_within_the_bound_and_one_here_at_once(tmp_path, pool):  # noqa: F811
    """Another connection's write may be missed for less than ELSEWHERE seconds, never
    longer; the daemon's own write is seen at the next lookup with no time passing."""
    km = manager(tmp_path)
    ticks = Ticks()
    answers = PreparedAnswers(km, ticks)
    try:
        km.consider(BOB, pool["v3"], FOUND[0])
        first = answers.registered(BOB)
        assert first is not None and json.loads(first.json) == km.describe(BOB)
        write_elsewhere(km, "UPDATE addresses SET level = 'weak-chain'")
        assert km.describe(BOB) != json.loads(first.json)  # the edit shows in a fresh answer
        ticks.now += ELSEWHERE * 0.9
        assert answers.registered(BOB) == first  # within the bound: the kept answer
        ticks.now += ELSEWHERE * 0.2
        seen = answers.registered(BOB)
        assert seen is not None and json.loads(seen.json) == km.describe(BOB)
        km.verify(BOB, read_key(pool["v3"], datetime.now(UTC)).fingerprint)  # a write here
        mine = answers.registered(BOB)
        assert mine is not None and json.loads(mine.json) == km.describe(BOB) != json.loads(
            seen.json
        )
    finally:
        km.store.close()
        km.audit.close()
