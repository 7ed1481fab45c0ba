"""Update feeds: the pure rules (core/feeds.py) and the two readers (net/feeds.py), against
the formats' own samples and hostile bytes."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.core import feeds
from refreshd.core.feeds import DAY, FeedKind, Window
from refreshd.net import feeds as wire
from tests.feed_servers import manifest

FPR = "32144D9D" + "A" * 32
OTHER = "65FB1218" + "B" * 32


def day(n: int, prefixes: set[int] = frozenset()) -> Window:  # type: ignore[assignment]
    return Window(n * DAY, (n + 1) * DAY, frozenset(prefixes))


def test_a_key_the_windows_cover_without_its_prefix_is_current_until_their_end() -> None:
    windows = [day(12), day(10, {0x65FB1218}), day(11)]  # any order
    assert feeds.known_current_until(FPR, 10.5 * DAY, windows) == 13 * DAY
    assert feeds.known_current_until(OTHER, 10.5 * DAY, windows) is None  # listed
    assert feeds.known_current_until(OTHER, 11 * DAY, windows) == 13 * DAY  # listed before


def test_a_gap_or_no_window_means_a_fetch() -> None:
    assert feeds.known_current_until(FPR, 10.5 * DAY, [day(10), day(12)]) is None
    assert feeds.known_current_until(FPR, 11.5 * DAY, [day(10), day(12)]) is None
    assert feeds.known_current_until(FPR, 10.5 * DAY, []) is None
    assert feeds.known_current_until(FPR, 9.5 * DAY, [day(10)]) is None  # starts after since
    assert feeds.known_current_until(FPR, 13 * DAY, [day(10), day(11)]) is None  # all before


def test_overlapping_windows_count_once_and_a_listing_in_any_of_them_counts() -> None:
    long = Window(10 * DAY, 12 * DAY, frozenset())
    assert feeds.known_current_until(FPR, 10 * DAY, [long, day(11), day(12)]) == 13 * DAY
    listed = Window(11 * DAY, 11.5 * DAY, frozenset({0x32144D9D}))
    assert feeds.known_current_until(FPR, 10 * DAY, [long, listed]) is None


def test_a_feed_not_fetched_for_days_vouches_for_nothing() -> None:
    windows = [day(10), day(11)]
    assert feeds.fresh(windows, 12.5 * DAY) == windows
    assert feeds.fresh(windows, 12 * DAY + feeds.STALE_AFTER + 1) == []


def test_old_windows_are_forgotten_after_a_refresh_period() -> None:
    windows = [day(n) for n in range(30)]
    kept = feeds.keep(windows, now=30 * DAY, refresh_period=7 * DAY)
    assert kept == [day(n) for n in range(22, 30)]


@pytest.mark.parametrize("kind", list(FeedKind))
def test_one_request_per_period_at_a_random_moment_of_it(kind: FeedKind) -> None:
    rng = random.Random(3)
    now = 100.25 * DAY
    nexts = [feeds.fetch_at(kind, now=now, rng=rng) for _ in range(500)]
    assert all(101 * DAY <= t < 102 * DAY for t in nexts)
    assert max(nexts) - min(nexts) > 0.9 * DAY  # spread over the whole day
    firsts = [feeds.fetch_at(kind, now=now, rng=rng, first=True) for _ in range(500)]
    assert all(now <= t < now + DAY for t in firsts)
    assert max(firsts) - min(firsts) > 0.9 * DAY


# Sequoia's sample (sequoia-net updates.rs, sample_manifest): epochs 15296 to 15322, five
# prefixes, byte for byte.
SAMPLE = bytes.fromhex("e42bafbdd575770a00003bc000003bda32144d9d65fb12187e91f4029ed85a5eea71546a")


def test_the_update_manifest_sample_of_sequoia_reads_as_it_says() -> None:
    w = wire.read_update_manifest(200, SAMPLE, 15296)
    assert (w.start, w.end) == (15296 * 2**15, 15323 * 2**15)
    assert w.prefixes == {0x32144D9D, 0x65FB1218, 0x7E91F402, 0x9ED85A5E, 0xEA71546A}
    assert manifest(15296, 15322, set(w.prefixes)) == SAMPLE  # the test server writes the same


@pytest.mark.parametrize(
    ("status", "body", "absent"),
    [
        (404, b"", True),
        (501, b"", True),
        (400, b"Requested epoch must be in the past and completed", False),
        (500, b"", False),
        (200, b"", False),
        (200, SAMPLE[:15], False),
        (200, b"\x00" * 8 + SAMPLE[8:], False),  # bad magic
        (200, SAMPLE[:8] + SAMPLE[12:16] + SAMPLE[8:12], False),  # end before start
        (200, SAMPLE[:-1], False),  # a truncated prefix
    ],
)
def test_a_manifest_answer_that_is_not_one_is_refused(
    status: int, body: bytes, absent: bool
) -> None:
    with pytest.raises(wire.FeedUnreadable) as err:
        wire.read_update_manifest(status, body, 15296)
    assert isinstance(err.value, wire.FeedAbsent) is absent


def test_a_manifest_starting_after_the_epoch_asked_for_is_refused() -> None:
    with pytest.raises(wire.FeedUnreadable):
        wire.read_update_manifest(200, SAMPLE, 15000)


def test_the_prefix_log_reads_one_utc_day() -> None:
    w = wire.read_prefix_log(200, b"32144d9d\r\n65FB1218\r\n", date(2026, 11, 30))
    assert w.prefixes == {0x32144D9D, 0x65FB1218}
    assert w.start == datetime(2026, 11, 30, tzinfo=UTC).timestamp() and w.end - w.start == DAY
    assert wire.read_prefix_log(200, b"", date(2026, 11, 30)).prefixes == frozenset()


@pytest.mark.parametrize(
    ("status", "body", "absent"),
    [
        (404, b"", True),
        (400, b"Bad Request\n", False),
        (200, b"32144d9d", False),  # no CRLF
        (200, b"32144d9d\n", False),  # LF only
        (200, b"32144d9\r\n", False),
        (200, b"32144d9dz\r\n", False),
        (200, b"<html>\r\n", False),
        (200, b"".join(b"%08x\r\n" % i for i in range(1001)), False),  # may be cut short
    ],
)
def test_a_prefix_log_answer_that_is_not_one_is_refused(
    status: int, body: bytes, absent: bool
) -> None:
    with pytest.raises(wire.FeedUnreadable) as err:
        wire.read_prefix_log(status, body, date(2026, 11, 30))
    assert isinstance(err.value, wire.FeedAbsent) is absent


def test_a_full_prefix_log_of_a_thousand_lines_is_read() -> None:
    body = b"".join(b"%08x\r\n" % i for i in range(1000))
    assert len(wire.read_prefix_log(200, body, date(2026, 11, 30)).prefixes) == 1000


@settings(deadline=None)
@given(st.integers(100, 600), st.binary(max_size=200))
def test_any_bytes_are_read_or_refused_with_feed_unreadable(status: int, body: bytes) -> None:
    for read in (
        lambda: wire.read_update_manifest(status, body, 15296),
        lambda: wire.read_prefix_log(status, body, date(2026, 11, 30)),
    ):
        try:
            w = read()
        except wire.FeedUnreadable:
            continue
        assert w.start < w.end and all(0 <= p < 2**32 for p in w.prefixes)


@settings(deadline=None)
@given(st.sets(st.integers(0, 2**32 - 1), max_size=50), st.integers(0, 2**31))
def test_a_manifest_written_as_hagrid_does_reads_back(prefixes: set[int], start: int) -> None:
    w = wire.read_update_manifest(200, manifest(start, start + 3, prefixes), start)
    assert w.prefixes == prefixes and w.end - w.start == 4 * 2**15
