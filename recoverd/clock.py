"""The controller's clock: one place where recoverd reads the time, so tests can move it.

Everything that stamps or compares times (the maintenance log, schedules, the daemon) calls
:func:`now`. Tests swap the process-wide clock with :func:`use_clock` and a :class:`FakeClock`
to run weeks of schedules in seconds; production always uses the system clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """Return the current instant, timezone-aware in UTC."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a FakeClock needs an aware start time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        """Move the clock to ``moment`` (forwards only: time never runs back for a daemon)."""
        with self._lock:
            self._now = max(self._now, moment.astimezone(UTC))

    def advance(self, delta: timedelta) -> None:
        """Move the clock forwards by ``delta``."""
        with self._lock:
            self._now += delta


_current: Clock = SystemClock()


def now() -> datetime:
    """Return the current instant of the process-wide clock, aware in UTC."""
    return _current.now()


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the process-wide clock for the block (tests), then restore the old one."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous
