"""Parse a level's ``every`` schedule (the forms of the SPEC) into an :class:`Every`.

This module only says *what* a schedule means; when its next run falls (zones, DST, catch-up)
is the scheduler's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from difflib import get_close_matches
from functools import partial
from itertools import pairwise

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
FORMS = (
    '"day at HH:MM"',
    '"<weekday> at HH:MM"',
    '"weekday at HH:MM"',
    '"mon,wed,fri at HH:MM"',
    '"N hours"',
    '"N minutes"',
    '"month on day D at HH:MM"',
    '"month on last day at HH:MM"',
)
LAST_DAY = 31
"""``month on last day`` is stored as day 31: days past a month's end run on its last day."""

_DAY_NAMES = {name: i for i, name in enumerate(WEEKDAYS)} | {
    name[:3]: i for i, name in enumerate(WEEKDAYS)
}
_VOCABULARY = (
    *_DAY_NAMES,
    *("day", "weekday", "month", "on", "last", "at"),
    *("hour", "hours", "minute", "minutes"),
)
_INTERVAL = re.compile(r"(\d+) (hours?|minutes?)")
_AT = re.compile(r"(.+) at (\S+)")
_LONGEST_INTERVAL = 366 * 24 * 60  # minutes; longer "N hours" are typos, not schedules
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_MONTH_DAY = re.compile(r"month on day (\d+)")


@dataclass(frozen=True)
class Every:
    """A parsed schedule, in exactly one of three shapes.

    - ``interval`` set: "N hours" / "N minutes", counted from the last run.
    - ``weekdays`` set (0 = Monday) with ``at``: "day", "weekday", one weekday or a list.
    - ``month_day`` set (1..31) with ``at``: a day of every month. Days 29-31 run on the
      month's last day in months that are shorter, so ``LAST_DAY`` (31) means "last day".

    ``at`` is a wall-clock time in the client's time zone.
    """

    interval: timedelta | None = None
    weekdays: tuple[int, ...] = ()
    month_day: int | None = None
    at: time | None = None

    @property
    def period(self) -> timedelta:
        """Return the nominal time between two runs.

        For weekdays it is the longest gap between consecutive listed days (1 day for "day",
        3 days for "weekday", 7 days for one weekday), so a run is never thought overdue
        between two slots; for months it is 31 days, the longest month.
        """
        if self.interval is not None:
            return self.interval
        if self.weekdays:
            days = self.weekdays
            gaps = [b - a for a, b in pairwise(days)]
            return timedelta(days=max([*gaps, days[0] + 7 - days[-1]]))
        return timedelta(days=31)

    def __str__(self) -> str:
        """Return the canonical text: equal schedules print alike."""
        if self.interval is not None:
            minutes = int(self.interval.total_seconds()) // 60
            if minutes % 60:
                return f"{minutes} minute" + ("s" if minutes != 1 else "")
            return f"{minutes // 60} hour" + ("s" if minutes != 60 else "")
        at = f"at {self.at:%H:%M}"
        if self.month_day == LAST_DAY:
            return f"month on last day {at}"
        if self.month_day is not None:
            return f"month on day {self.month_day} {at}"
        if self.weekdays == tuple(range(7)):
            return f"day {at}"
        if self.weekdays == tuple(range(5)):
            return f"weekday {at}"
        if len(self.weekdays) == 1:
            return f"{WEEKDAYS[self.weekdays[0]]} {at}"
        return ",".join(WEEKDAYS[d][:3] for d in self.weekdays) + f" {at}"


def parse_every(text: str) -> Every:
    """Given an ``every`` text such as ``"day at 01:30"``, return its :class:`Every`.

    Names are case-insensitive and runs of spaces count as one. Raise ValueError with a
    message meant for the user (and a "did you mean" hint when one fits) if the text is not
    one of the SPEC's forms.
    """
    words = " ".join(re.sub(r"\s*,\s*", ",", text.lower()).split())
    every = _parse(words)
    if every is None:
        hint = _hint(words)
        suggestion = f" (did you mean {hint!r}?)" if hint else ""
        raise ValueError(f"unknown schedule {text!r}{suggestion}; forms: {', '.join(FORMS)}")
    return every


def _parse(words: str) -> Every | None:
    """Return the schedule ``words`` (normalised) means, or None if it is no known form.

    Raise ValueError if the form is known but a number or time in it is out of range.
    """
    if match := _INTERVAL.fullmatch(words):
        minutes = int(match[1]) * (60 if match[2].startswith("hour") else 1)
        if not 1 <= minutes <= _LONGEST_INTERVAL:
            raise ValueError(
                f"{words!r}: an interval must be between 1 minute and 366 days; "
                "use a weekday or month form for longer periods"
            )
        return Every(interval=timedelta(minutes=minutes))
    match = _AT.fullmatch(words)
    if not match:
        return None
    head, clock = match[1], match[2]
    if head == "day":
        days: tuple[int, ...] | None = tuple(range(7))
    elif head == "weekday":
        days = tuple(range(5))
    elif head == "month on last day":
        return Every(month_day=LAST_DAY, at=_clock(clock))
    elif day := _MONTH_DAY.fullmatch(head):
        if not 1 <= int(day[1]) <= 31:
            raise ValueError(f"day {day[1]} is not a day of the month (1..31)")
        return Every(month_day=int(day[1]), at=_clock(clock))
    else:
        days = _weekday_list(head)
    if days is None:
        return None
    return Every(weekdays=days, at=_clock(clock))


def _weekday_list(head: str) -> tuple[int, ...] | None:
    """Return the sorted days of a list like ``mon,wed,friday``, or None if a name is unknown.

    Raise ValueError if a day is listed twice (likely a typo for another day).
    """
    days: list[int] = []
    for name in head.split(","):
        if name not in _DAY_NAMES:
            return None
        if _DAY_NAMES[name] in days:
            raise ValueError(f"{head!r} lists {WEEKDAYS[_DAY_NAMES[name]]} twice")
        days.append(_DAY_NAMES[name])
    return tuple(sorted(days))


def _clock(text: str) -> time:
    """Return the time ``HH:MM`` names. Raise ValueError if it is not a time of day."""
    match = _CLOCK.fullmatch(text)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{text!r} is not a time HH:MM")
    return time(int(match[1]), int(match[2]))


def _hint(words: str) -> str | None:
    """Return a valid schedule close to ``words`` (misspelt or extra words), or None."""
    spaced = re.sub(r"(\d)([a-z])", r"\1 \2", words)

    # First fix misspellings only; then also drop words nothing resembles ("every day ...").
    for drop in (False, True):
        candidate = re.sub(r"[a-z]+", partial(_closest_word, drop=drop), spaced)
        candidate = " ".join(candidate.split())
        try:
            if candidate != words and _parse(candidate) is not None:
                return candidate
        except ValueError:
            continue
    return None


def _closest_word(match: re.Match[str], *, drop: bool) -> str:
    """Return the schedule word closest to the matched word; with ``drop``, "" if none is."""
    word = match[0]
    if word in _VOCABULARY:
        return word
    close = get_close_matches(word, _VOCABULARY, n=1, cutoff=0.6)
    return close[0] if close else ("" if drop else word)
