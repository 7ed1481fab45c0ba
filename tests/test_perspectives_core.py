"""Comparing what separate network paths saw of one directory (pure)."""

from __future__ import annotations

from refreshd.core.perspectives import REASKS, Seen, Verdict, View, ask_again, compare, repeated

A, B = "A" * 40, "B" * 40
X1, X2 = "E1" * 20, "E2" * 20


def keys(exit: str | None, **fprs: str) -> View:
    return View(exit, Seen.KEYS, dict(fprs))


def test_equal_answers_over_distinct_exits_agree() -> None:
    c = compare([keys(X1, **{A: "d1"}), keys(X2, **{A: "d1"})])
    assert c.verdict is Verdict.AGREE and not c.shared_exit
    assert c.exits == (X1, X2)


def test_other_fingerprints_are_a_conflict_naming_both() -> None:
    c = compare([keys(X1, **{A: "d1"}), keys(X2, **{B: "d2"})])
    assert c.verdict is Verdict.CONFLICT
    assert A in c.reason and B in c.reason and X1 in c.reason and X2 in c.reason


def test_a_key_on_one_path_and_not_found_on_another_is_a_conflict() -> None:
    c = compare([keys(X1, **{A: "d1"}), View(X2, Seen.NOT_FOUND)])
    assert c.verdict is Verdict.CONFLICT
    assert "not found" in c.reason


def test_different_material_for_one_fingerprint_is_a_conflict() -> None:
    assert compare([keys(X1, **{A: "d1"}), keys(X2, **{A: "d2"})]).verdict is Verdict.CONFLICT


def test_an_extra_key_on_one_path_is_a_conflict() -> None:
    c = compare([keys(X1, **{A: "d1"}), keys(X2, **{A: "d1", B: "d2"})])
    assert c.verdict is Verdict.CONFLICT


def test_not_found_everywhere_agrees() -> None:
    assert compare([View(X1, Seen.NOT_FOUND), View(X2, Seen.NOT_FOUND)]).verdict is Verdict.AGREE


def test_a_failed_path_is_not_a_conflict() -> None:
    c = compare([keys(X1, **{A: "d1"}), View(X2, Seen.FAILED, reason="timed out")])
    assert c.verdict is Verdict.SINGLE
    assert "timed out" in c.reason and "not a conflict" in c.reason


def test_no_answer_at_all_is_failed() -> None:
    c = compare([View(None, Seen.FAILED, reason="Tor unavailable")] * 2)
    assert c.verdict is Verdict.FAILED


def test_paths_through_one_exit_agree_and_say_they_shared_it() -> None:
    c = compare([keys(X1, **{A: "d1"}), keys(X1, **{A: "d1"})])
    assert c.verdict is Verdict.AGREE and c.shared_exit
    assert "shared an exit" in c.reason


def test_a_conflict_over_one_exit_is_still_a_conflict() -> None:
    c = compare([keys(X1, **{A: "d1"}), keys(X1, **{B: "d2"})])
    assert c.verdict is Verdict.CONFLICT and c.shared_exit


def test_three_paths_one_dissenting_is_a_conflict() -> None:
    same = keys(X1, **{A: "d1"})
    c = compare([same, keys(X2, **{A: "d1"}), keys("E3" * 20, **{B: "d2"})])
    assert c.verdict is Verdict.CONFLICT


def failed(exit: str | None) -> View:
    return View(exit, Seen.FAILED, reason="timeout")


def test_a_path_that_repeated_an_exit_is_asked_again_while_tor_has_more_exits() -> None:
    views = [keys(X1, **{A: "d1"}), keys(X1, **{A: "d1"})]
    assert repeated(views) == [1]
    assert ask_again(views, exits_in_network=2, rounds=0) == [1]
    assert ask_again(views, exits_in_network=2, rounds=REASKS - 1) == [1]


def test_distinct_exits_are_not_asked_again() -> None:
    views = [keys(X1, **{A: "d1"}), keys(X2, **{B: "d2"})]
    assert repeated(views) == [] and ask_again(views, 5, 0) == []


def test_re_asking_stops_after_its_rounds() -> None:
    views = [keys(X1, **{A: "d1"}), keys(X1, **{A: "d1"})]
    assert ask_again(views, exits_in_network=2, rounds=REASKS) == []


def test_a_network_with_fewer_exits_than_paths_is_asked_once() -> None:
    views = [keys(X1, **{A: "d1"}), keys(X1, **{A: "d1"}), keys(X2, **{A: "d1"})]
    assert repeated(views) == [1]
    assert ask_again(views, exits_in_network=1, rounds=0) == []
    assert ask_again(views, exits_in_network=2, rounds=0) == []  # 3 paths, 2 exits
    assert ask_again(views, exits_in_network=3, rounds=0) == [1]
    assert ask_again(views, exits_in_network=None, rounds=0) == []  # Tor did not say


def test_failed_paths_and_unknown_exits_are_never_asked_again() -> None:
    views = [keys(X1, **{A: "d1"}), failed(X1), keys(None, **{A: "d1"}), keys(None, **{A: "d1"})]
    assert repeated(views) == []
    assert ask_again(views, exits_in_network=10, rounds=0) == []


def test_a_later_repeat_of_any_earlier_exit_counts() -> None:
    views = [keys(X1, **{A: "d1"}), keys(X2, **{A: "d1"}), keys(X1, **{A: "d1"}), keys(X2)]
    assert repeated(views) == [2, 3]
