"""The pure half of the GnuPG bridge: reading gpg's output and deciding what a write did."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from refreshd.gnupg import (
    ImportReport,
    parse_import_status,
    primary_fingerprints,
    resolve_homedir,
    ultimately_trusted,
    write_outcome,
)

A, B, C = "A" * 40, "B" * 40, "C" * 40

# gpg 2.2.40 --status-fd output of one merge-only import: A got a new signature, B was
# unchanged, C was new to the keyring and skipped
STATUS = f"""[GNUPG:] KEY_CONSIDERED {A} 0
[GNUPG:] IMPORT_OK 4 {A}
[GNUPG:] IMPORT_OK 0 {B}
[GNUPG:] KEY_CONSIDERED {B} 0
[GNUPG:] IMPORT_RES 3 0 0 0 1 0 0 1 0 0 0 0 1 0 0
"""


def test_import_status_names_what_changed() -> None:
    report = parse_import_status(STATUS)
    assert report.changed == {A: ("new signatures",)}
    assert report.unchanged == {B}
    assert report.summary and report.problems == {}
    flags = parse_import_status(f"[GNUPG:] IMPORT_OK 14 {A.lower()}\n")
    assert flags.changed == {A: ("new user ids", "new signatures", "new subkeys")}
    assert not flags.summary


def test_import_problem_is_named() -> None:
    report = parse_import_status(f"[GNUPG:] IMPORT_PROBLEM 4 {A}\n[GNUPG:] IMPORT_RES 1\n")
    assert report.problems == {A: "error storing certificate"}


def test_merge_only_outcome() -> None:
    offered = frozenset({A, B, C})
    done = write_outcome(offered, parse_import_status(STATUS), 0)
    assert (done.updated, done.unchanged, done.absent, done.retry) == (
        {A: ("new signatures",)},
        {B},
        {C},
        frozenset(),
    )


def test_failed_run_retries_what_gpg_did_not_confirm() -> None:
    offered = frozenset({A, B, C})
    partial = write_outcome(offered, parse_import_status(STATUS), 2)
    assert partial.retry == {C} and partial.absent == frozenset()
    nothing = write_outcome(offered, ImportReport({}, frozenset(), {}, False), 2)
    assert nothing.retry == offered and not nothing.absent
    problem = parse_import_status(f"[GNUPG:] IMPORT_PROBLEM 4 {C}\n[GNUPG:] IMPORT_RES 1\n")
    assert write_outcome(frozenset({C}), problem, 0).retry == {C}
    # a key gpg did not mention is not in the keyring only when gpg says the run succeeded
    assert write_outcome(frozenset({C}), problem, 0).absent == frozenset()


def test_keys_not_offered_are_ignored() -> None:
    done = write_outcome(frozenset({B}), parse_import_status(STATUS), 0)
    assert done.updated == {} and done.unchanged == {B}


def test_ownertrust() -> None:
    text = f"# List of assigned trustvalues\n{A}:6:\n{B}:5:\n{C.lower()}:6:\n# {B}:6:\nbroken\n"
    assert ultimately_trusted(text) == {A, C}


def test_primary_fingerprints_skip_subkeys() -> None:
    listing = f"""sec:u:255:22:AAAA:1:2::u:::scESC:::+::ed25519:::0:
fpr:::::::::{A}:
grp:::::::::0123:
uid:u::::1::X::Me <me@example.org>::::::::::0:
ssb:u:255:18:CCCC:1::::::e:::+::cv25519::
fpr:::::::::{C}:
grp:::::::::4567:
sec:-:255:22:BBBB:1:2::-:::scESC:::#::ed25519:::0:
fpr:::::::::{B}:
"""
    assert primary_fingerprints(listing, "sec") == {A, B}
    assert primary_fingerprints(listing.replace("sec:", "pub:"), "pub") == {A, B}
    assert primary_fingerprints(listing, "pub") == frozenset()


def test_homedir_order(tmp_path: Path) -> None:
    env = {"GNUPGHOME": str(tmp_path / "env"), "HOME": str(tmp_path)}
    assert resolve_homedir(str(tmp_path / "asked"), "~/cfg", env) == tmp_path / "asked"
    assert resolve_homedir("", str(tmp_path / "cfg"), env) == tmp_path / "cfg"
    assert resolve_homedir("", "", env) == tmp_path / "env"
    assert resolve_homedir("", "", {}) == Path("~/.gnupg").expanduser()


@given(st.text(max_size=400))
def test_any_output_is_read_without_error(text: str) -> None:
    report = parse_import_status(text)
    offered = frozenset(report.changed) | frozenset(report.problems) | {A}
    done = write_outcome(offered, report, 2)
    assert done.retry | done.unchanged | set(done.updated) | done.absent <= offered
    ultimately_trusted(text)
    primary_fingerprints(text, "pub")
