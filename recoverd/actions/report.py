"""The monthly report for a client: coverage, freshness, failures, drills, restores, SLA.

Orchestration only: the figures come from the policies (what should have run) and the
maintenance log (what did run); :mod:`recoverd.actions.report_render` turns them into HTML,
Markdown or CSV.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from recoverd.errors import UsageError

_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Month:
    """A calendar month in a client's time zone."""

    year: int
    month: int
    zone: str

    @classmethod
    def parse(cls, text: str, zone: str) -> Month:
        """Given ``2026-11`` and a zone name, return the month. Raise UsageError if malformed."""
        match = _MONTH.fullmatch(text.strip())
        if not match or not 1 <= int(match[2]) <= 12:
            raise UsageError(f"--month {text!r}: use YYYY-MM, e.g. 2026-11")
        return cls(int(match[1]), int(match[2]), zone)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @property
    def days(self) -> list[date]:
        """Return every day of the month."""
        count = calendar.monthrange(self.year, self.month)[1]
        return [date(self.year, self.month, d) for d in range(1, count + 1)]

    @property
    def start(self) -> datetime:
        """Return midnight of the first day, in the month's zone."""
        return datetime(self.year, self.month, 1, tzinfo=self.tz)

    @property
    def end(self) -> datetime:
        """Return midnight after the last day (exclusive end), in the month's zone."""
        return datetime.combine(self.days[-1] + timedelta(days=1), datetime.min.time(), self.tz)

    def contains(self, iso_text: str | None) -> bool:
        """Return True if the ISO instant ``iso_text`` falls within the month."""
        if not iso_text:
            return False
        return self.start <= datetime.fromisoformat(iso_text) < self.end
