"""End to end: provider endorsement through `refreshd run`, over the private Tor network, against
the world's signing nicknym server (tests/world/nicknym.py) whose provider.json nginx serves
(docs/nicknym-signatures.md). Judged by the socket's answers and the audit log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import world
from tests.e2e_support import Scene, daemon_sections, running_scene
from tests.world import names
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer
from tests.world.nicknym import NicknymServer
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not world.https_port_443(),
        reason="refreshd asks provider.json on port 443: nginx may not bind it here",
    ),
]

DOMAIN = names.NICKNYM_DOMAIN
ENDORSE = f"Endorsement <endorse@{DOMAIN}>"


@pytest.fixture(scope="module")
def scene(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    sks_server: SksServer,
    nicknym_server: NicknymServer,
    test_ca: LocalCA,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("e2e-endorse")
    sections = daemon_sections(tor_network, test_ca, sks_server)
    sections["discovery"] = {"order": ["nicknym"], "vks": [], "hkp": []}
    try:
        with running_scene(root, sections) as scene:
            yield scene
    finally:
        nicknym_server.set_endorsement_keys([])
        republish(nicknym_server, wkd_server)


def republish(nicknym: NicknymServer, wkd: WkdServer) -> None:
    """provider.json as the nicknym server now describes itself, served by nginx."""
    wkd.put_file(DOMAIN, "/provider.json", nicknym.provider_files()["/provider.json"])


def lines(scene: Scene, event: str, after: int = 0) -> list[dict[str, object]]:
    return [e for e in scene.audit_since(after) if e["event"] == event]


def test_provider_endorsement_through_the_daemon(scene, nicknym_server, wkd_server):
    g = scene.gpg
    p1 = g.generate(ENDORSE, expire="2y")
    p2 = g.generate("Endorsement 2 <endorse2@example.com>", expire="2y")
    p3 = g.generate("Stranger <endorse3@example.com>", expire="2y")
    g.certify(p1, p2, "Endorsement 2 <endorse2@example.com>")
    bob, carol = f"bob-e@{DOMAIN}", f"carol-e@{DOMAIN}"
    bob_fpr = g.generate(f"Bob <{bob}>", expire="1y")
    g.certify(p1, bob_fpr, f"Bob <{bob}>")
    carol_fpr = g.generate(f"Carol <{carol}>", expire="1y")
    g.certify(p1, carol_fpr, f"Carol <{carol}>")
    nicknym_server.set_endorsement_keys([scene.armored(p1)])
    republish(nicknym_server, wkd_server)
    nicknym_server.publish(bob, scene.armored(bob_fpr), bob_fpr)
    nicknym_server.publish(carol, scene.armored(carol_fpr), carol_fpr)

    # pinned on first use; the endorsed answer is provider-endorsement
    answer = scene.lookup(bob, wait=90)
    assert (answer["state"], answer["fingerprint"]) == ("registered", bob_fpr), answer
    assert answer["validation"] == "provider-endorsement"
    assert f"endorsed by {DOMAIN}'s key 0x{p1}" in answer["reason"]
    pinned = {(e["kind"], e["how"]) for e in lines(scene, "provider.key_pinned")}
    assert pinned == {("endorsement", "first-use"), ("response", "first-use")}

    # an unsigned 404 and a 404 with a bad signature from this signing provider are refused
    for user, how in (("dave-e", "none"), ("erin-e", "bad")):
        after = scene.last_seq()
        nicknym_server.set_response(address=f"{user}@{DOMAIN}", status=404, signature=how)
        assert scene.lookup(f"{user}@{DOMAIN}", wait=90)["state"] == "unknown"
        failed = [e for e in lines(scene, "discovery.failed", after) if e["source"] == "nicknym"]
        assert failed and all(e["outcome"] == "rejected" for e in failed), failed
        assert all("refused" in str(e["reason"]) for e in failed)

    # a rotated endorsement key certified by the pinned one is accepted; a stranger is refused
    after = scene.last_seq()
    nicknym_server.set_endorsement_keys([scene.armored(p2), scene.armored(p3)])
    republish(nicknym_server, wkd_server)
    assert scene.lookup(carol, wait=90)["validation"] == "provider-endorsement"
    pinned_now = {e["fingerprint"]: e["how"] for e in lines(scene, "provider.key_pinned", after)}
    assert pinned_now == {p2: "forward-signed"}
    refused = {e["fingerprint"] for e in lines(scene, "provider.key_refused", after)}
    assert refused == {p3}

    # a revoked endorsement lowers the level
    g.run("--local-user", p1, "--quick-revoke-sig", bob_fpr, p1, f"Bob <{bob}>")
    nicknym_server.publish(bob, scene.armored(bob_fpr), bob_fpr)
    after = scene.last_seq()
    fetched = scene.refresh(bob, timeout=120)
    assert fetched["event"] == "refresh.fetched", fetched
    merged = scene.wait_audit(
        lambda e: e["event"] == "key.merged" and e.get("address") == bob, after, 60
    )
    assert "lowered from provider-endorsement" in str(merged["reason"])
    answer = scene.lookup(bob, wait=0)
    assert (answer["fingerprint"], answer["validation"]) == (bob_fpr, "provider-trust"), answer
