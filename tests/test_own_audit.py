"""The own-key audit through the real fetcher, retriever and key file, against loopback WKD and
VKS servers (Tor off, names routed by network.connect_to): what each directory serves for the
own address is compared with the own key, audited, kept for `own`, re-uploaded where stale, and
handed to own.audit_command."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.core.levels import Way
from refreshd.core.providerkeys import PinKind
from refreshd.net.fetch import Fetcher
from refreshd.openpgp import resign
from refreshd.openpgp.keyview import read_key
from refreshd.own import OwnAudit, OwnKeys
from refreshd.retrieve import Retriever
from refreshd.store import Store
from tests.net_servers import Captured, HttpServer, make_tls, response

ADDRESS = "alice@example.org"
HOOK = "import sys, pathlib; pathlib.Path(sys.argv[1]).open('a').write(sys.stdin.read())"


class Directories:
    """A WKD (both methods) and a VKS (by email, upload) whose answers the test sets."""

    def __init__(self) -> None:
        self.wkd: bytes | None = None
        self.vks: bytes | None = None
        self.uploads = 0

    async def wkd_handler(self, _req: Captured, stream: trio.abc.Stream) -> None:
        await stream.send_all(response(404) if self.wkd is None else response(200, self.wkd))

    async def vks_get(self, _req: Captured, stream: trio.abc.Stream) -> None:
        await stream.send_all(response(404) if self.vks is None else response(200, self.vks))

    async def vks_upload(self, req: Captured, stream: trio.abc.Stream) -> None:
        self.uploads += 1
        text = json.loads(req.body)["keytext"]
        self.vks = text.encode()
        fpr = read_key(text.encode(), datetime.now(UTC)).fingerprint
        body = json.dumps({"key_fpr": fpr, "status": {ADDRESS: "published"}, "token": "t"})
        await stream.send_all(response(200, body.encode()))


@pytest.fixture
async def world(nursery, tmp_path: Path):
    hosts = ("openpgpkey.example.org", "example.org", "keys.example.net")
    tls = make_tls(str(tmp_path), *hosts)
    dirs = Directories()
    server = await HttpServer(
        {
            "/.well-known/openpgpkey/": dirs.wkd_handler,
            "/vks/v1/by-email/": dirs.vks_get,
            "/vks/v1/upload": dirs.vks_upload,
        },
        tls=tls.server,
    ).start(nursery)
    hook_out = tmp_path / "hook.jsonl"
    cfg = from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "s")},
            "tor": {"mode": "off", "allow_clearnet": True},
            "network": {
                "ca_file": tls.ca_file,
                "connect_to": [f"{h}:443:127.0.0.1:{server.port}" for h in hosts],
            },
            "discovery": {"order": ["wkd", "vks"], "vks": ["https://keys.example.net"]},
            "own": {
                "upload": ["vks"],
                "audit_period": "1h",
                "audit_command": [sys.executable, "-c", HOOK, str(hook_out)],
            },
        }
    )
    store, audit = Store(cfg.database), AuditLog(cfg.audit_file)
    fetcher = Fetcher(cfg, None)
    own = OwnKeys(cfg, store, audit, fetcher, lambda: datetime.now(UTC))
    auditor = OwnAudit(own, Retriever(cfg, fetcher))
    yield own, auditor, dirs, server, audit, hook_out
    store.close()
    audit.close()


def events(audit: AuditLog, name: str) -> list[dict]:
    lines = [json.loads(x) for x in audit.path.read_text().splitlines()]
    return [e for e in lines if e["event"] == name]


async def uploaded(audit: AuditLog, count: int) -> None:
    """Until `count` own.uploaded lines are written (the upload task runs on its own)."""
    with trio.fail_after(20):
        for _ in iter(lambda: len(events(audit, "own.uploaded")) >= count, True):
            await trio.sleep(0.05)


def public(armored_secret: str) -> bytes:
    return resign.read_own(armored_secret, datetime.now(UTC)).public.encode()


def other_key() -> bytes:
    now = datetime.now(UTC)
    return public(
        resign.generate(ADDRESS, None, now=now, expiry=timedelta(days=180), passphrase=None)
    )


async def test_the_own_key_everywhere_is_ok(world) -> None:
    own, auditor, dirs, _server, audit, hook_out = world
    report = await own.generate(ADDRESS, None)
    assert report["audit"]["state"] == "unchecked"
    dirs.wkd = dirs.vks = public(own.path.read_text())

    result = await auditor.audit_address(ADDRESS)

    assert result is not None and result.state == "ok"
    [line] = events(audit, "own.audit")
    assert line["state"] == "ok" and line["address"] == ADDRESS
    assert [(f["source"], f["result"]) for f in line["findings"]] == [("wkd", "ok"), ("vks", "ok")]
    shown = own.report()[0]["audit"]
    assert shown["state"] == "ok" and shown["checked_at"] == line["checked_at"]
    assert {f["address"] for f in shown["findings"]} == {ADDRESS}
    assert not hook_out.exists()


async def test_another_key_at_the_provider_is_a_mismatch_and_the_hook_hears_once(world) -> None:
    own, auditor, dirs, _server, audit, hook_out = world
    await own.generate(ADDRESS, None)
    dirs.vks = public(own.path.read_text())
    intruder = other_key()
    dirs.wkd = intruder
    intruder_fpr = read_key(intruder, datetime.now(UTC)).fingerprint

    await auditor.audit_address(ADDRESS)
    await auditor.audit_address(ADDRESS)  # the same mismatch again: no second notification

    lines = events(audit, "own.audit")
    assert [e["state"] for e in lines] == ["mismatch", "mismatch"]
    wkd = lines[0]["findings"][0]
    assert (wkd["source"], wkd["result"], wkd["served"]) == ("wkd", "other-key", [intruder_fpr])
    assert own.report()[0]["audit"]["state"] == "mismatch"
    [heard] = [json.loads(x) for x in hook_out.read_text().splitlines()]
    assert heard["address"] == ADDRESS and heard["state"] == "mismatch"
    assert [f["served"] for f in heard["findings"]] == [[intruder_fpr]]
    [ran] = events(audit, "own.audit_command")
    assert ran["ok"] is True and ran["returncode"] == 0


async def test_not_found_where_the_key_is_uploaded_is_a_mismatch_elsewhere_absent(world) -> None:
    own, auditor, dirs, _server, audit, _hook = world
    await own.generate(ADDRESS, None)
    dirs.wkd = dirs.vks = None

    await auditor.audit_address(ADDRESS)

    [line] = events(audit, "own.audit")
    results = {f["source"]: f["result"] for f in line["findings"]}
    assert results == {"wkd": "absent", "vks": "not-found"}
    assert line["state"] == "mismatch"


async def test_a_stale_expiry_at_vks_gets_the_key_uploaded_again(world, nursery) -> None:
    own, auditor, dirs, _server, audit, _hook = world
    made = datetime.now(UTC) - timedelta(days=10)
    old = resign.generate(ADDRESS, None, now=made, expiry=timedelta(days=30), passphrase=None)
    await nursery.start(own.run)
    await own.import_key(old, None)  # 20 days left: extended at once and uploaded
    await uploaded(audit, 1)
    await trio.sleep(0.5)  # let every upload the import queued finish
    before = len(events(audit, "own.uploaded"))
    dirs.vks = dirs.wkd = public(old)  # the extension did not propagate anywhere
    own.store.db.execute("UPDATE own_keys SET last_upload = ?", ("2000-01-01T00:00:00+00:00",))

    first = await auditor.audit_address(ADDRESS)
    await uploaded(audit, before + 1)
    second = await auditor.audit_address(ADDRESS)

    assert first is not None and second is not None
    stale = {f.source: f.result for f in first.findings}
    assert stale == {"wkd": "stale-expiry", "vks": "stale-expiry"}
    assert first.reupload == ("vks",)  # WKD is not uploaded to here (no wks)
    [reupload] = events(audit, "own.reupload")
    assert reupload["mechanisms"] == ["vks"]
    assert {f.source: f.result for f in second.findings}["vks"] == "ok"
    served = read_key(dirs.vks or b"", datetime.now(UTC)).expires
    assert served == read_key(public(own.path.read_text()), datetime.now(UTC)).expires


async def test_an_unreachable_directory_is_no_evidence(world) -> None:
    own, auditor, dirs, _server, _audit, _hook = world
    await own.generate(ADDRESS, None)
    dirs.wkd = public(own.path.read_text())

    async def unavailable(_req: Captured, stream: trio.abc.Stream) -> None:
        await stream.send_all(response(503))

    _server.handlers["/vks/v1/by-email/"] = unavailable
    result = await auditor.audit_address(ADDRESS)

    assert result is not None and result.state == "ok"
    assert {f.source: f.result for f in result.findings} == {"wkd": "ok", "vks": "unreachable"}


async def test_audit_requests_carry_the_header_set_of_a_refresh(world) -> None:
    own, auditor, dirs, server, _audit, _hook = world
    await own.generate(ADDRESS, None)
    dirs.wkd = dirs.vks = public(own.path.read_text())
    await auditor.audit_address(ADDRESS)
    audit_heads = list(server.requests)
    server.requests.clear()
    url = audit_heads[0].target
    await auditor.retriever.again(Way.WKD, f"https://openpgpkey.example.org{url}", None, ADDRESS)
    [refresh_head] = server.requests

    def header_set(req: Captured) -> list[tuple[str, str]]:
        lines = req.head.decode().split("\r\n")[1:]
        return sorted(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in lines if line)
            if k.strip().lower() != "host"
        )

    assert audit_heads and all(header_set(r) == header_set(refresh_head) for r in audit_heads)


def _entry(state: str, findings: list[dict]) -> dict:
    return {
        "fingerprint": "A" * 40,
        "address": ADDRESS,
        "expires": "2027-06-01T00:00:00+00:00",
        "next_extension_at": "2027-04-01T00:00:00+00:00",
        "last_upload": None,
        "audit": {"state": state, "checked_at": "2027-03-01T12:00:00+00:00", "findings": findings},
    }


MISMATCH = {
    "address": ADDRESS,
    "source": "wkd",
    "result": "other-key",
    "detail": f"wkd serves {'B' * 40} for {ADDRESS}, not the own key {'A' * 40}",
    "served": ["B" * 40],
}


def test_own_status_and_status_show_a_mismatch_as_a_warning() -> None:
    from refreshd.cli import render_own, render_status

    own = render_own([_entry("mismatch", [MISMATCH])])
    assert "WARNING" in own and "B" * 40 in own and "wkd" in own
    status = render_status(
        {
            "version": "x",
            "tor": {},
            "keys": 0,
            "addresses": 0,
            "own": [_entry("mismatch", [MISMATCH])],
        }
    )
    assert status.splitlines()[0].startswith("WARNING") and "B" * 40 in status
    ok = {**MISMATCH, "result": "ok", "detail": "fine", "served": ["A" * 40]}
    calm = render_status(
        {"version": "x", "tor": {}, "keys": 0, "addresses": 0, "own": [_entry("ok", [ok])]}
    )
    assert "WARNING" not in calm and "audit: ok" in calm


async def test_an_endorsing_provider_must_endorse_the_own_key(world, tmp_path: Path) -> None:
    from refreshd.store import ProviderPin
    from tests.keyfactory import Gpg

    own, auditor, dirs, _server, _audit, _hook = world
    gpg = Gpg(tmp_path / "gpg")
    try:
        endorser = gpg.generate("Example Provider <keys@example.org>")
        mine = gpg.generate(f"<{ADDRESS}>")
        secret = gpg.run("--armor", "--export-secret-keys", mine).decode()
        await own.import_key(secret, None)
        pin = ProviderPin(
            "example.org",
            endorser,
            PinKind.ENDORSEMENT,
            gpg.export(endorser),
            datetime.now(UTC),
            "configured",
        )
        with own.store.transaction():
            own.store.pin_provider_key(pin)
        dirs.vks = gpg.export(mine)
        dirs.wkd = gpg.export(mine)  # not (yet) endorsed
        unendorsed = await auditor.audit_address(ADDRESS)
        gpg.certify(endorser, mine, f"<{ADDRESS}>")
        dirs.wkd = gpg.export(mine)  # now with the provider's certification on the uid
        endorsed = await auditor.audit_address(ADDRESS)
    finally:
        gpg.close()

    assert unendorsed is not None and endorsed is not None
    assert {f.source: f.result for f in unendorsed.findings}["wkd"] == "not-endorsed"
    assert unendorsed.state == "mismatch"
    assert {f.source: f.result for f in endorsed.findings} == {"wkd": "ok", "vks": "ok"}
