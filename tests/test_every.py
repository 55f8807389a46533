"""The ``every`` schedule parser: every SPEC form, its period, and helpful errors."""

from datetime import time, timedelta

import pytest

from recoverd.policy.every import LAST_DAY, Every, parse_every


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("day at 01:30", Every(weekdays=(0, 1, 2, 3, 4, 5, 6), at=time(1, 30))),
        ("sunday at 03:00", Every(weekdays=(6,), at=time(3, 0))),
        ("Sunday  at 3:00", Every(weekdays=(6,), at=time(3, 0))),
        ("weekday at 07:15", Every(weekdays=(0, 1, 2, 3, 4), at=time(7, 15))),
        ("mon,wed,fri at 22:00", Every(weekdays=(0, 2, 4), at=time(22, 0))),
        ("Friday, monday at 22:00", Every(weekdays=(0, 4), at=time(22, 0))),
        ("6 hours", Every(interval=timedelta(hours=6))),
        ("1 hour", Every(interval=timedelta(hours=1))),
        ("90 minutes", Every(interval=timedelta(minutes=90))),
        ("1 minute", Every(interval=timedelta(minutes=1))),
        ("month on day 1 at 05:00", Every(month_day=1, at=time(5, 0))),
        ("month on day 29 at 05:00", Every(month_day=29, at=time(5, 0))),
        ("month on last day at 23:59", Every(month_day=LAST_DAY, at=time(23, 59))),
    ],
)
def test_parse_every_spec_form_parses(text: str, expected: Every) -> None:
    assert parse_every(text) == expected


def test_parse_every_day_31_means_last_day() -> None:
    assert parse_every("month on day 31 at 04:00") == parse_every("month on last day at 04:00")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("DAY AT 1:30", "day at 01:30"),
        ("mon,tue,wed,thu,fri at 08:00", "weekday at 08:00"),
        ("sun,sat at 10:00", "sat,sun at 10:00"),
        ("wed at 10:00", "wednesday at 10:00"),
        ("120 minutes", "2 hours"),
        ("1 hours", "1 hour"),
        ("month on day 31 at 04:00", "month on last day at 04:00"),
    ],
)
def test_every_str_gives_canonical_text(text: str, canonical: str) -> None:
    assert str(parse_every(text)) == canonical
    assert parse_every(canonical) == parse_every(text)


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("day at 01:30", timedelta(days=1)),
        ("sunday at 03:00", timedelta(days=7)),
        ("weekday at 07:00", timedelta(days=3)),  # Friday to Monday
        ("mon,wed,fri at 22:00", timedelta(days=3)),  # Friday to Monday
        ("mon,tue at 22:00", timedelta(days=6)),  # Tuesday to Monday
        ("4 hours", timedelta(hours=4)),
        ("30 minutes", timedelta(minutes=30)),
        ("month on day 15 at 05:00", timedelta(days=31)),
        ("month on last day at 05:00", timedelta(days=31)),
    ],
)
def test_every_period_is_longest_gap(text: str, period: timedelta) -> None:
    assert parse_every(text).period == period


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "dayly at 01:30",
            "unknown schedule 'dayly at 01:30' (did you mean 'day at 01:30'?); forms:",
        ),
        ("every day at 01:30", "(did you mean 'day at 01:30'?)"),
        ("sundy at 03:00", "(did you mean 'sunday at 03:00'?)"),
        ("montly on day 1 at 05:00", "(did you mean 'month on day 1 at 05:00'?)"),
        ("every 6 hours", "(did you mean '6 hours'?)"),
        ("6hours", "(did you mean '6 hours'?)"),
        ("nightly", "unknown schedule 'nightly'; forms: \"day at HH:MM\""),
        ("day at 25:00", "'25:00' is not a time HH:MM"),
        ("day at 12:60", "'12:60' is not a time HH:MM"),
        ("day at noon", "'noon' is not a time HH:MM"),
        ("month on day 32 at 01:00", "day 32 is not a day of the month (1..31)"),
        ("month on day 0 at 01:00", "day 0 is not a day of the month (1..31)"),
        ("0 hours", "an interval must be between 1 minute and 366 days"),
        ("9000 hours", "an interval must be between 1 minute and 366 days"),
        ("mon,mon at 01:00", "'mon,mon' lists monday twice"),
        ("", "unknown schedule ''"),
    ],
)
def test_parse_every_bad_text_raises_helpful_error(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_every(text)
    assert message in str(caught.value)


def test_parse_every_unknown_schedule_lists_every_form() -> None:
    with pytest.raises(ValueError, match="unknown schedule") as caught:
        parse_every("fortnightly")
    for form in ("day at HH:MM", "N minutes", "month on last day at HH:MM", "mon,wed,fri at"):
        assert form in str(caught.value)
