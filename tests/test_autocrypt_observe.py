"""`observe` with a raw Autocrypt header (SPEC 4), against a real `refreshd run`: headers made
from `gpg --export` in the Level 1 format and folded as mail folds them, and by
`sq autocrypt encode-sender`; what counts, what changes nothing, and `prefer_encrypt`."""

from __future__ import annotations

import base64
import subprocess

import pytest

from tests.daemon_proc import Daemon, RpcFailed
from tests.keyfactory import Workshop

BOB = "bob@example.org"
CAROL = "carol@example.net"
OLD, NEW, NEWER = (
    "Mon, 02 Mar 2026 10:00:00 +0000",
    "2026-03-05T10:00:00+00:00",
    "Sat, 07 Mar 2026 09:00:00 -0100",
)


def header(addr: str, key: bytes, *, prefer: str | None = None, extra: str = "") -> str:
    """An Autocrypt header value, folded to 78 columns with CRLF + blank as a MUA sends it and
    as a reading MUA hands it over when it does not unfold."""
    attrs = f"addr={addr};" + (f" prefer-encrypt={prefer};" if prefer else "") + extra
    b64 = base64.b64encode(key).decode()
    return f"{attrs} keydata=\r\n " + "\r\n ".join(b64[i : i + 76] for i in range(0, len(b64), 76))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, bytes | str]:
    ws = Workshop(tmp_path_factory.mktemp("k"))
    try:
        a = ws.gpg.generate(f"Bob <{BOB}>", expire="1y")
        b = ws.gpg.generate(f"Bob again <{BOB}>", expire="1y")
        c = ws.gpg.generate(f"Carol <{CAROL}>", expire="1y")
        sq_secret = ws.sq.generate(f"<{BOB}>", expires_in="1y")
        cert = ws.sq.cert(sq_secret)
        sq_header = subprocess.run(
            ["sq", "autocrypt", "encode-sender", "--email", BOB, "--prefer-encrypt", "mutual"],
            input=cert, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        fpr = subprocess.run(
            ["sq", "inspect"], input=cert, capture_output=True, check=True
        ).stdout.decode()
        return {
            "a": ws.gpg.export(a), "a_fpr": a,
            "b": ws.gpg.export(b), "b_fpr": b,
            "c": ws.gpg.export(c), "c_fpr": c,
            "sq_header": sq_header.removeprefix("Autocrypt: ").strip(),
            "sq_fpr": next(w for w in fpr.split() if len(w) == 40),
        }  # fmt: skip
    finally:
        ws.close()


def observe(d: Daemon, value: str, date: str | None = None, **params: str) -> dict:
    params = {"origin": "autocrypt", **params}
    return d.call(
        "observe", address=BOB, autocrypt=value, **params, **({"date": date} if date else {})
    )


def fingerprints(d: Daemon, address: str = BOB) -> set[str]:
    return {k["fingerprint"] for k in d.call("history", address=address)["keys"]}


def test_a_real_header_registers_and_its_preference_comes_back(daemon, keys) -> None:
    got = observe(daemon, header(BOB, keys["a"], prefer="mutual"), NEW)
    assert (got["decision"], got["fingerprint"]) == ("registered", keys["a_fpr"]), got
    found = daemon.call("lookup", address=BOB, discover=False)
    assert found["fingerprint"] == keys["a_fpr"] and found["prefer_encrypt"] == "mutual"
    assert found["encrypt"] is True  # an Autocrypt header is a positive indication (SPEC 5.4)

    # An older message's header with the same key and no preference changes nothing ...
    observe(daemon, header(BOB, keys["a"]), OLD)
    assert daemon.call("lookup", address=BOB, discover=False)["prefer_encrypt"] == "mutual"
    # ... a newer one is the sender's current preference.
    observe(daemon, header(BOB, keys["a"]), NEWER)
    assert daemon.call("lookup", address=BOB, discover=False)["prefer_encrypt"] == "nopreference"


def test_headers_that_change_nothing(daemon, keys) -> None:
    observe(daemon, header(BOB, keys["a"], prefer="mutual"), NEW)
    before = daemon.call("lookup", address=BOB, discover=False)
    void = {
        "mismatched addr": header("mallory@example.org", keys["b"]),
        "unknown critical attribute": header(BOB, keys["b"], extra=" type=1;"),
    }
    for name, value in void.items():
        got = observe(daemon, value, NEWER, dkim="pass")
        assert got["decision"] == "rejected", name
    # dkim pass makes B provider-trust, above A's weak-chain: by rule 3.4 (A never used) it
    # would replace A; from an older message it changes nothing.
    older = observe(daemon, header(BOB, keys["b"]), OLD, dkim="pass")
    assert older["decision"] == "rejected" and "older" in older["reason"]
    assert daemon.call("lookup", address=BOB, discover=False) == before
    assert fingerprints(daemon) == {keys["a_fpr"]}
    # the same header from a newer message is considered, and replaces A
    newer = observe(daemon, header(BOB, keys["b"]), NEWER, dkim="pass")
    assert (newer["decision"], newer["fingerprint"]) == ("replaced", keys["b_fpr"]), newer


def test_a_header_made_by_sq_registers(daemon, keys) -> None:
    got = observe(daemon, keys["sq_header"])
    assert (got["decision"], got["fingerprint"]) == ("registered", keys["sq_fpr"]), got
    assert daemon.call("lookup", address=BOB, discover=False)["prefer_encrypt"] == "mutual"


def test_gossip_is_weak_chain_without_positive_indication(daemon, keys) -> None:
    value = header(CAROL, keys["c"], prefer="mutual")
    got = daemon.call(
        "observe", address=CAROL, autocrypt=value, origin="gossip", dkim="pass", date=NEW
    )
    assert (got["decision"], got["validation"]) == ("registered", "weak-chain"), got
    found = daemon.call("lookup", address=CAROL, discover=False)
    assert found["encrypt"] is False and found["prefer_encrypt"] is None


def test_bad_params_are_named(daemon, keys) -> None:
    value = header(BOB, keys["a"])
    cases = [
        {"autocrypt": value, "origin": "attachment"},
        {"autocrypt": value, "origin": "autocrypt", "date": "the day before yesterday"},
        {"autocrypt": value, "origin": "autocrypt", "key": "x"},
        {"autocrypt": 7, "origin": "autocrypt"},
    ]
    for params in cases:
        with pytest.raises(RpcFailed) as failed:
            daemon.call("observe", address=BOB, **params)
        assert failed.value.code == -32602, params
    assert daemon.call("lookup", address=BOB, discover=False)["state"] == "unknown"
