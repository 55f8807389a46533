"""When a level's runs fall: an :class:`Every` read in the client's time zone.

Calendar forms (``day at 01:30``, ``sunday at 03:00``, ``month on last day at 23:00``) have
*slots*: one instant per matching local day. A wall-clock time that a DST change skips (02:30 on
the spring-forward night in Europe) falls one hour later on the same day, 03:30; one that a DST
change repeats (02:30 on the fall-back night) falls on its first occurrence. Either way the day
has exactly one slot. Interval forms (``4 hours``) have no calendar: they count from the last
run.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from recoverd.policy.every import Every, parse_every

_SEARCH = timedelta(days=33)
"""Every calendar form has a slot in any window this long (the longest month, plus DST)."""

_NEAR = timedelta(days=2)
"""A daily form has a slot in any window this long: searched first, it spares generating a
month of slots for the common case."""


@dataclass(frozen=True)
class Schedule:
    """A level's ``every`` in its client's time zone."""

    every: Every
    zone: ZoneInfo

    @classmethod
    def of(cls, every: str, timezone: str) -> Schedule:
        """Given a level's ``every`` text and its client's zone name, return its schedule.

        Raise ValueError if either is invalid (the policy loader has checked both).
        """
        return cls(parse_every(every), ZoneInfo(timezone))

    @property
    def interval(self) -> timedelta | None:
        """The time between runs of an interval form, None for a calendar form."""
        return self.every.interval

    def slots(self, start: datetime, end: datetime) -> list[datetime]:
        """Given a window (``start``, ``end``], return its calendar slots as aware UTC instants.

        Raise ValueError for an interval form, which has no calendar.
        """
        if self.interval is not None:
            raise ValueError(f"{self.every} counts from the last run and has no calendar slots")
        return [s for s in self._slots_around(start, end) if start < s <= end]

    def latest_slot(self, moment: datetime) -> datetime:
        """Return the newest calendar slot at or before ``moment``."""
        return (self.slots(moment - _NEAR, moment) or self.slots(moment - _SEARCH, moment))[-1]

    def next_slot(self, moment: datetime) -> datetime:
        """Return the first calendar slot after ``moment``."""
        return (self.slots(moment, moment + _NEAR) or self.slots(moment, moment + _SEARCH))[0]

    def _slots_around(self, start: datetime, end: datetime) -> Iterator[datetime]:
        # One day of margin either side: a local day may begin before ``start`` in UTC.
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        last = end.astimezone(self.zone).date() + timedelta(days=1)
        at = self.every.at
        assert at is not None  # calendar forms always have a time of day
        while day <= last:
            if self._matches(day):
                # fold=0: a skipped time maps past the gap, a repeated time to its first pass.
                local = datetime(day.year, day.month, day.day, at.hour, at.minute, tzinfo=self.zone)
                yield local.astimezone(UTC)
            day += timedelta(days=1)

    def _matches(self, day: date) -> bool:
        if self.every.month_day is None:
            return day.weekday() in self.every.weekdays
        month_end = calendar.monthrange(day.year, day.month)[1]
        return day.day == min(self.every.month_day, month_end)
