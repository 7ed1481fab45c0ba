"""The own key's upload: a VKS upload request as the keys.openpgp.org API defines it (checked by
a loopback server that reads the body), audited either way; HKP /pks/add is checked end to end
against SKS in tests/test_e2e_daemon.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.config import from_mapping
from refreshd.core.ownaudit import Upload
from refreshd.net.fetch import Fetcher
from refreshd.openpgp.keyview import read_key
from refreshd.own import OwnKeys
from refreshd.store import Store
from tests.net_servers import Captured, HttpServer, make_tls, response


class Vks:
    """POST /vks/v1/upload with {"keytext": <armored public key>} and nothing else."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.seen: list[dict] = []

    async def __call__(self, req: Captured, stream: trio.abc.Stream) -> None:
        body = json.loads(req.body)
        self.seen.append(body)
        ok = (
            req.method == "POST"
            and req.target == "/vks/v1/upload"
            and req.header("Content-Type") == "application/json"
            and set(body) == {"keytext"}
            and body["keytext"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        )
        view = read_key(body["keytext"].encode(), datetime.now(UTC))
        answer = (
            {
                "key_fpr": view.fingerprint,
                "status": dict.fromkeys(view.addresses(), "unpublished"),
                "token": "t0k3n",
            }
            if ok and self.status == 200
            else {"error": "bad request"}
        )
        code = self.status if ok else 400
        await stream.send_all(
            response(code, json.dumps(answer).encode(), (("Content-Type", "application/json"),))
        )


@pytest.fixture
async def setup(nursery, tmp_path):
    tls = make_tls(str(tmp_path), "keys.example.net")
    vks = Vks()
    server = await HttpServer({"/vks/v1/upload": vks}, tls=tls.server).start(nursery)
    cfg = from_mapping(
        {
            "daemon": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "s")},
            "tor": {"mode": "off", "allow_clearnet": True},
            "network": {
                "ca_file": tls.ca_file,
                "connect_to": [f"keys.example.net:443:127.0.0.1:{server.port}"],
            },
            "discovery": {"vks": ["https://keys.example.net"]},
            "own": {"upload": ["vks"]},
        }
    )
    store, audit = Store(cfg.database), AuditLog(cfg.audit_file)
    own = OwnKeys(cfg, store, audit, Fetcher(cfg, None), lambda: datetime.now(UTC))
    yield own, vks, audit
    store.close()
    audit.close()


def events(audit: AuditLog) -> list[dict]:
    return [json.loads(x) for x in audit.path.read_text().splitlines()]


async def test_vks_upload_matches_the_api(setup):
    own, vks, audit = setup
    mine = await own.generate("me@example.net", "Me")
    ok, reason = await own.upload(Upload.VKS)
    assert ok, reason
    assert (
        read_key(vks.seen[-1]["keytext"].encode(), datetime.now(UTC)).fingerprint
        == mine["fingerprint"]
    )
    assert "PRIVATE" not in vks.seen[-1]["keytext"]
    last = events(audit)[-1]
    assert (last["event"], last["ok"], last["status"]) == ("own.uploaded", True, 200)
    assert own.report()[0]["last_upload"] is not None


async def test_refused_upload_is_audited_with_the_reason(setup):
    own, vks, audit = setup
    await own.generate("me@example.net", None)
    vks.status = 503
    ok, reason = await own.upload(Upload.VKS)
    assert not ok and "503" in reason
    last = events(audit)[-1]
    assert last["event"] == "own.uploaded" and last["ok"] is False and "503" in last["reason"]
    assert own.report()[0]["last_upload"] is None


async def test_an_upload_parses_the_secret_key_once(setup, monkeypatch):
    """pgpy reads the secret key once per upload; everything else comes from that one read."""
    from pgpy import PGPKey

    own, vks, _ = setup
    await own.generate("me@example.net", "Me")
    parses = []
    real = PGPKey.from_blob.__func__

    def counted(cls, blob):
        parses.append(blob)
        return real(cls, blob)

    monkeypatch.setattr(PGPKey, "from_blob", classmethod(counted))
    ok, reason = await own.upload(Upload.VKS)
    assert ok, reason
    secret = [b for b in parses if "PRIVATE KEY" in (b if isinstance(b, str) else b.decode())]
    assert len(secret) == 1
    assert len(vks.seen) == 1


async def test_importing_a_key_that_needs_extending_uploads_it_once(setup, nursery):
    """The import queues an upload and its extension queues another: one upload, of the
    extended key, per mechanism."""
    from datetime import timedelta

    from refreshd.openpgp import resign

    own, vks, audit = setup
    await nursery.start(own.run)
    now = datetime.now(UTC)
    made = now - timedelta(days=1)  # its self-signature lies in the past: it can be extended
    expiring = resign.generate(
        "me@example.net", "Me", now=made, expiry=timedelta(days=3), passphrase=None
    )
    await own.import_key(expiring, None)
    with trio.fail_after(20):
        for _ in iter(lambda: any(e["event"] == "own.uploaded" for e in events(audit)), True):
            await trio.sleep(0.05)  # the upload task runs on its own
    await trio.sleep(1.0)  # room for a second upload, were one queued
    names = [e["event"] for e in events(audit)]
    assert names.count("own.extended") == 1
    assert names.count("own.uploaded") == 1 and len(vks.seen) == 1
    sent = read_key(vks.seen[0]["keytext"].encode(), now)
    assert sent.expires is not None and sent.expires > now + timedelta(days=30)
