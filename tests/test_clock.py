"""The one timestamp format events carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from personify.clock import FrozenClock, SystemClock, epoch_us, format_timestamp, from_epoch_us


def test_a_utc_moment_is_written_with_milliseconds_and_a_z() -> None:
    assert format_timestamp(datetime(2026, 5, 5, 1, 2, 3, 4999, tzinfo=UTC)) == (
        "2026-05-05T01:02:03.004Z"
    )
    assert format_timestamp(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=13, minutes=30))]
        ),
    )
)
def test_every_zone_is_written_as_the_same_instant_in_utc(moment: datetime) -> None:
    expected = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert format_timestamp(moment) == expected


@given(st.datetimes(timezones=st.just(UTC)))
def test_epoch_us_is_exact(moment: datetime) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert epoch_us(moment) == (moment - epoch) // timedelta(microseconds=1)


@given(st.datetimes(timezones=st.just(UTC)))
def test_from_epoch_us_inverts_epoch_us(moment: datetime) -> None:
    assert from_epoch_us(epoch_us(moment)) == moment


def test_now_us_agrees_with_now() -> None:
    frozen = FrozenClock(datetime(2026, 5, 5, 1, 2, 3, 456789, tzinfo=UTC))
    assert frozen.now_us() == epoch_us(frozen.now())
    frozen.advance(1.5)
    assert frozen.now_us() == epoch_us(frozen.now())
    clock = SystemClock()
    before = epoch_us(clock.now())
    now_us = clock.now_us()
    after = epoch_us(clock.now())
    assert before <= now_us <= after
