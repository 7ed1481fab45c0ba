"""What a key is, through the daemon: each case gives the fact gpg gives on the same bytes, and
`usable` / `encrypt` follow. A real `refreshd run` for observe and lookup; the in-process
discovery world (loopback WKD over HTTPS) for a revocation that arrives on refresh."""

from __future__ import annotations

import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.core.levels import Level
from refreshd.openpgp.packets import armor
from refreshd.refresher import Refresher
from tests import corpus_oracle
from tests.daemon_proc import Daemon
from tests.keyfactory import Workshop, dearmor, new_packet
from tests.net_servers import HttpServer, conditional, make_tls, static
from tests.selfsigned import Maker, critical, notation
from tests.test_discovery_flow import World, advanced_path

BOB = "bob@example.org"
CAROL, DAVE = b"Carol <carol@example.org>", b"Dave <dave@example.org>"


def gpg_says(data: bytes) -> corpus_oracle.CertFacts:
    """gpg's reading of one key now (show-only import in a throw-away home)."""
    with tempfile.NamedTemporaryFile(suffix=".pgp") as f:
        f.write(data)
        f.flush()
        facts = corpus_oracle.gpg_facts(Path(f.name), datetime.now(UTC))
    assert facts is not None
    (cert,) = facts.certs.values()
    return cert


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    ws = Workshop(tmp_path_factory.mktemp("k"))
    try:
        a = ws.gpg.generate(f"Bob <{BOB}>", expire="1y")
        b = ws.gpg.generate(f"Bob New <{BOB}>", expire="1y")
        later = ws.gpg.generate(f"Bob Later <{BOB}>", expire="2y", at=ws.now + timedelta(days=365))
        return {
            "a": ws.gpg.export(a),
            "a_fpr": a,
            "a_rev": dearmor(ws.gpg.revocation(a)),
            "b": ws.gpg.export(b),
            "b_fpr": b,
            "later": ws.gpg.export(later),
        }
    finally:
        ws.close()


def observe(daemon: Daemon, key: str, address: str = BOB) -> dict:
    return daemon.call("observe", address=address, key=key, origin="autocrypt", dkim="none")


def lookup(daemon: Daemon, address: str = BOB) -> dict:
    return daemon.call("lookup", address=address, discover=False)


def assert_not_offered(answer: dict) -> None:
    """Not usable, nothing to encrypt to: whether refreshd holds it registered or not."""
    assert not answer["usable"] and not answer["encrypt"]


def test_a_key_with_its_revocation_appended_is_revoked(daemon, keys):
    blob = keys["a"] + keys["a_rev"]  # cat key.pgp rev.sig
    assert gpg_says(blob).revoked
    observe(daemon, armor(blob))
    answer = lookup(daemon)
    assert_not_offered(answer)
    assert answer["state"] == "unknown" or answer["revoked"] is True


def test_the_revocation_as_its_own_armor_block_revokes(daemon, keys):
    assert observe(daemon, armor(keys["a"]))["decision"] == "registered"
    assert lookup(daemon)["usable"] is True
    observe(daemon, armor(keys["a"]) + armor(keys["a_rev"]))
    answer = lookup(daemon)
    assert answer["revoked"] is True and answer["fingerprint"] == keys["a_fpr"]
    assert_not_offered(answer)


def test_a_lone_revocation_revokes_the_registered_key_and_lets_a_successor_in(daemon, keys):
    assert observe(daemon, armor(keys["a"]))["decision"] == "registered"
    revoked = observe(daemon, armor(keys["a_rev"]))
    assert revoked["fingerprint"] == keys["a_fpr"] and revoked["decision"] != "rejected"
    answer = lookup(daemon)
    assert answer["revoked"] is True
    assert_not_offered(answer)
    successor = observe(daemon, armor(keys["b"]))
    assert successor["decision"] in ("registered", "replaced"), successor
    assert "3.3" in successor["reason"]
    after = lookup(daemon)
    assert after["fingerprint"] == keys["b_fpr"] and after["usable"] and after["encrypt"]


def test_a_lone_revocation_for_no_key_we_hold_is_refused_with_the_reason(daemon, keys):
    answer = observe(daemon, armor(keys["a_rev"]))
    assert answer["decision"] == "rejected" and "only signatures" in answer["reason"]
    assert lookup(daemon)["state"] == "unknown"


def test_a_key_created_next_year_is_not_taken(daemon, keys):
    assert not gpg_says(keys["later"]).accepted  # gpg: invalid (created in the future)
    answer = observe(daemon, armor(keys["later"]))
    assert answer["decision"] == "rejected" and "created in the future" in answer["reason"]
    assert_not_offered(lookup(daemon))


def _signed_key(carol_extra: bytes) -> bytes:
    """A key with two user ids, Carol's binding carrying carol_extra in its hashed area."""
    m = Maker(created=int(datetime.now(UTC).timestamp()) - 86_400)
    return m.key(
        m.packet,
        new_packet(13, CAROL),
        m.binding(CAROL, extra=carol_extra),
        new_packet(13, DAVE),
        m.binding(DAVE),
        m.sub,
        m.subkey_binding(),
    )


@pytest.mark.parametrize(
    "carol_extra",
    [
        pytest.param(b"\x05\x03" + (60).to_bytes(4, "big"), id="expired-uid-binding"),
        pytest.param(critical(20, notation(b"x@example.org", b"1")), id="critical-notation"),
    ],
)
def test_a_uid_whose_binding_gpg_refuses_does_not_register_the_key(daemon, carol_extra):
    key = _signed_key(carol_extra)
    said = gpg_says(key)
    assert said.addresses == {"dave@example.org"}  # gpg: Carol's uid is not valid
    carol = observe(daemon, armor(key), "carol@example.org")
    assert carol["decision"] == "rejected"
    assert_not_offered(lookup(daemon, "carol@example.org"))
    dave = observe(daemon, armor(key), "dave@example.org")
    assert dave["decision"] == "registered"
    assert lookup(daemon, "dave@example.org")["encrypt"] is True


@pytest.fixture
async def wkd_world(nursery, tmp_path, keys):
    tls = make_tls(str(tmp_path), "openpgpkey.example.org", "example.org", "nicknym.example.org")
    path = advanced_path(BOB)
    https = await HttpServer(
        {path: conditional(keys["a"], '"v1"', "Sun, 22 Nov 2026 10:00:00 GMT")}, tls=tls.server
    ).start(nursery)
    hkp = await HttpServer({"/pks/lookup": static(404)}).start(nursery)
    world = World(tmp_path, https, hkp, tls.ca_file)
    yield world, path
    world.close()


async def test_a_revocation_arriving_on_refresh_takes_effect_at_once(wkd_world, keys):
    world, path = wkd_world
    first = await world.discovery.discover(BOB)
    assert first is not None and first.decision == "registered"
    assert first.level is Level.PROVIDER_TRUST and world.keys.describe(BOB)["encrypt"] is True
    revoked = keys["a"] + keys["a_rev"]
    assert gpg_says(revoked).revoked
    world.https.handlers[path] = conditional(revoked, '"v2"', "Mon, 23 Nov 2026 10:00:00 GMT")
    refresher = Refresher(world.keys, world.retriever, world.cfg, world.audit, rng=random.Random(1))
    assert await refresher.refresh(first.fingerprint) is True
    answer = world.keys.describe(BOB)
    assert answer["revoked"] is True and answer["fingerprint"] == first.fingerprint
    assert_not_offered(answer)


async def test_a_revoked_key_found_at_first_contact_is_not_offered(wkd_world, keys):
    world, path = wkd_world
    world.https.handlers[path] = static(200, keys["a"] + keys["a_rev"])
    await world.discovery.discover(BOB)
    answer = world.keys.describe(BOB)
    assert answer["state"] == "unknown" or answer["revoked"] is True
    assert_not_offered(answer)
