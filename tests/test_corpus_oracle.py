"""Every blob of the shared key corpus, read by refreshd and by gpg and sq, at one reference time.

refreshd must agree with at least one of the two oracles on each fact (accepted, primary
expiry, revoked, encryption components live at the reference time with their expiry, addresses
of valid user ids): where it agrees with neither, the blob must be listed in POLICIES below with
the reason, and only the facts the policy names may differ. Nothing is cached: gpg and sq run
once per blob, in parallel.
"""

from __future__ import annotations

import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.corpus_oracle import (
    BlobFacts,
    blobs,
    corpus_dir,
    differences,
    oracles,
    refreshd_facts,
)

ROOT = corpus_dir()
if ROOT is None:
    pytest.skip(
        "the shared key corpus (../shared/corpus/keys/, next to the checkout or one of its "
        "parents, or $REFRESHD_CORPUS) is absent: the corpus oracle test needs it",
        allow_module_level=True,
    )
for _tool in ("gpg", "sq"):
    if shutil.which(_tool) is None:
        pytest.skip(
            f"{_tool} is not installed (./scripts/test installs it)", allow_module_level=True
        )


@dataclass(frozen=True)
class Policy:
    """A deliberate difference from both oracles."""

    name: str
    reason: str
    fields: frozenset[str]  # the facts allowed to differ
    blobs: tuple[str, ...] = ()  # paths under the corpus; empty: decided by `secret`
    secret: bool = False  # applies to every blob refreshd refuses as secret key material


POLICIES = (
    Policy(
        "public keys only",
        "refreshd refuses a blob holding any secret key material; gpg and sq list its public part",
        frozenset({"accepted"}),
        secret=True,
    ),
    Policy(
        "later-version subkey",
        "a v4 key with a draft PQC subkey of packet version 5: refreshd reads the v4 parts and "
        "leaves that subkey out (RFC 9580: unknown versions are skipped); gpg 2.2 refuses the "
        "whole block and sq 0.27 on Nettle cannot verify the brainpool certification",
        frozenset({"accepted"}),
        (
            "gnupg/tests__openpgp__samplekeys__pqc-sample-3.key.asc",
            "gnupg/tests__openpgp__samplekeys__pqc-sample-4.key.asc",
            "gnupg/tests__openpgp__samplekeys__pqc-sample-5.key.asc",
        ),
    ),
    Policy(
        "RFC 9580 algorithms",
        "Ed25519 (27) and Ed448 (28) signatures are verified here; gpg 2.2 and sq 0.27 do not "
        "know those algorithms (and gpg 2.2 cannot read RFC 9580 armor without a CRC line)",
        frozenset({"accepted", "encrypt", "addresses"}),
        (
            "openpgpjs/test__general__openpgp.js__L4844.asc",
            "rnp/src__tests__data__draft-ietf-openpgp-pqc__v4-eddsa-sample-pk.asc",
        ),
    ),
    Policy(
        "DSA sizes of the backend",
        "DSA outside the sizes the crypto backend verifies (p of 1024/2048/3072/4096 bits, q of "
        "160/224/256 bits) is refused naming that limit; gpg and sq verify it",
        frozenset({"accepted"}),
        (
            "rnp/src__tests__data__cli_EncryptSign__GnuPG_dsa_elgamal_2112_2112.gpg",
            "rnp/src__tests__data__test_stream_key_load__dsa4096-eg4096.pub.asc",
        ),
    ),
    Policy(
        "one bad packet, one bad part",
        "in a keyring with one malformed packet refreshd skips that packet; gpg 2.2 drops the "
        "whole keyring and sq rejects SHA-1 self-signatures of any date where refreshd takes "
        "those made before 2023-02-01",
        frozenset({"accepted"}),
        (
            "rnp/src__tests__data__test_key_edge_cases__pubring-malf-cert.pgp",
            "rnp/src__tests__data__test_key_edge_cases__pubring-malf-key0-sub0-bind.pgp",
            "rnp/src__tests__data__test_key_edge_cases__pubring-malf-key0-sub0.pgp",
            "rnp/src__tests__data__test_key_edge_cases__pubring-malf-key0.pgp",
        ),
    ),
)


def _policy(name: str, ours: BlobFacts) -> Policy | None:
    for policy in POLICIES:
        if name in policy.blobs or (policy.secret and ours.secret):
            return policy
    return None


def _field(line: str) -> str:
    return line.split(" ", 2)[1].rstrip(":")


@pytest.fixture(scope="module")
def readings() -> dict[str, tuple[BlobFacts, list[str]]]:
    assert ROOT is not None
    paths = blobs(ROOT)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(oracles, paths))
    out = {}
    for path, (gpg, sq) in zip(paths, answers, strict=True):
        ours = refreshd_facts(path.read_bytes())
        out[path.relative_to(ROOT).as_posix()] = (ours, differences(ours, gpg, sq))
    return out


def test_refreshd_reads_the_corpus_as_gpg_or_sq_do(
    readings: dict[str, tuple[BlobFacts, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    counts: Counter[str] = Counter()
    unexplained: list[str] = []
    for name, (ours, diffs) in sorted(readings.items()):
        policy = _policy(name, ours)
        if not diffs:
            counts["agree"] += 1
            continue
        if policy is None:
            unexplained += [f"{name}: {d}" for d in diffs]
            continue
        counts[f"policy: {policy.name}"] += 1
        unexplained += [
            f"{name} ({policy.name} allows only {sorted(policy.fields)}): {d}"
            for d in diffs
            if _field(d) not in policy.fields
        ]
    with capsys.disabled():
        print(f"\ncorpus: {len(readings)} blobs")
        for label, count in sorted(counts.items()):
            print(f"  {label}: {count}")
    assert not unexplained, "\n".join(unexplained)
    assert len(readings) > 700  # the whole corpus was read, not a few blobs


def test_every_listed_policy_still_makes_a_difference(
    readings: dict[str, tuple[BlobFacts, list[str]]],
) -> None:
    """A policy entry whose blob now agrees is stale: the list stays short and true."""
    stale = [
        f"{policy.name}: {blob}"
        for policy in POLICIES
        for blob in policy.blobs
        if blob not in readings or not readings[blob][1]
    ]
    assert not stale, stale
    assert any(ours.secret and diffs for ours, diffs in readings.values())


def test_the_blobs_named_in_the_issue_read_as_gpg_reads_them(
    readings: dict[str, tuple[BlobFacts, list[str]]],
) -> None:
    """The cases the issue found wrong, spelled out (the oracles agree with these facts)."""
    sequoia = "sequoia/openpgp__tests__data__keys__"
    rnp = "rnp/src__tests__data__"

    def cert(name: str) -> list:
        ours, diffs = readings[name]
        assert not diffs, diffs
        return list(ours.certs.values())

    (revoked,) = cert(sequoia + "already-revoked-direct-revocation.pgp")
    assert revoked.accepted and revoked.revoked and not revoked.encrypt
    (by_v3,) = cert(sequoia + "v4-revoked-by-v3.pgp")
    assert by_v3.revoked
    (future,) = cert(rnp + "keyrings__6__pubring.gpg")
    assert not future.accepted
    (notation,) = cert(rnp + "test_key_edge_cases__key-critical-notations.pgp")
    assert not notation.encrypt
    (forged,) = cert(rnp + "test_forged_keys__rsa-rsa-pub-forged-key.pgp")
    assert not forged.accepted and not forged.encrypt
    (ordered,) = cert(sequoia + "dkg-sigs-out-of-order.pgp")
    assert ordered.expires == 1546282645 and not ordered.encrypt
    (case12,) = cert(rnp + "test_key_validity__case12__pubring.gpg")
    assert case12.expires == 1577371391
    dsa, _ = readings[rnp + "cli_EncryptSign__GnuPG_dsa_elgamal_2112_2112.gpg"]
    assert dsa.error == "DSA with a 2112-bit p and a 256-bit q cannot be verified here"


def test_the_corpus_is_found_from_a_worktree_nested_deeper(tmp_path: Path) -> None:
    nested = tmp_path / "work" / "wt" / "i1" / "tests"
    nested.mkdir(parents=True)
    (tmp_path / "work" / "shared" / "corpus" / "keys").mkdir(parents=True)
    assert corpus_dir(nested / "x.py") == tmp_path / "work" / "shared" / "corpus" / "keys"
