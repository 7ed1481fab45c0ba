"""A flooded key is stripped as it comes in and registered; a blob over the cap is refused with
a reason and nothing is stored (issue 3, SPEC 8)."""

from __future__ import annotations

import json

import pytest

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.core.levels import Level, Way
from refreshd.keymanager import Found, KeyManager
from refreshd.openpgp.packets import armor
from refreshd.store import Store
from tests.keyfactory import flood, pgpy_key

BOB = "bob@example.org"
WKD = Found(Way.WKD, Level.PROVIDER_TRUST, True)


@pytest.fixture(scope="module")
def keys():
    public = pgpy_key(f"Bob <{BOB}>")
    return {"public": public, "flooded": armor(flood(public, 20000)).encode()}


def manager(tmp_path, **network):
    cfg = from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path), "socket": str(tmp_path / "s")},
            "network": network,
        }
    )
    return KeyManager(Store(cfg.database), AuditLog(cfg.audit_file), cfg)


def test_flooded_key_is_stripped_and_registered(tmp_path, keys):
    km = manager(tmp_path)
    assert len(keys["flooded"]) > 3_000_000  # 20,000 real certifications, armored
    d = km.consider(BOB, keys["flooded"], WKD)
    assert d.decision == "registered"
    stored = km.store.get_key(d.fingerprint)
    assert stored is not None and len(stored) == len(keys["public"])  # only what was ours
    km.store.close()
    km.audit.close()


def test_blob_over_the_cap_is_refused_and_nothing_is_stored(tmp_path, keys):
    km = manager(tmp_path, max_response_bytes=1_000_000, max_key_bytes=100_000)
    d = km.consider(BOB, keys["flooded"], WKD)
    assert d.decision == "rejected" and "larger than" in d.reason
    assert km.store.counts() == {"keys": 0, "addresses": 0, "stored_keys": 0}
    last = json.loads(km.audit.path.read_text().splitlines()[-1])
    assert last["event"] == "key.rejected" and "larger than" in last["reason"]
    km.store.close()
    km.audit.close()
