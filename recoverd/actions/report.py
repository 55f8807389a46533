"""The monthly report for a client: coverage, freshness, failures, drills, restores, SLA.

The figures come from the policies (what should have run) and the maintenance log (what did
run), and nowhere else, so a report can be re-made for any past month;
:mod:`recoverd.actions.report_render` turns them into HTML, Markdown or CSV.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from recoverd.errors import RecoverdError, UsageError
from recoverd.log import MaintenanceLog
from recoverd.log.anchors import Anchor
from recoverd.log.verify import Verdict
from recoverd.policy.every import parse_every
from recoverd.policy.model import Client, Level, Machine, PolicySet
from recoverd.policy.schedule import Schedule

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


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
        if not FIRST_YEAR <= int(match[1]) <= LAST_YEAR:  # datetime ends in 9999
            raise UsageError(f"--month {text!r}: the year must be {FIRST_YEAR}..{LAST_YEAR}")
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


# --- Scheduled slots -----------------------------------------------------------------------


def slot_times(
    level: Level, month: Month, until: datetime | None = None, since: datetime | None = None
) -> list[datetime]:
    """Return a level's scheduled slots in the month, as aware instants, oldest first.

    Calendar forms have their slots from the shared scheduler (wall-clock times in the
    client's zone, DST handled there); interval forms (``6 hours``) have a slot every
    interval from the month's start, in elapsed time. Only slots at or after ``since`` (the
    machine's onboarding) and before ``until`` (the report's as-of time) count. A level
    without ``every`` (run by hand only) has none.
    """
    if not level.every:
        return []
    start = max(month.start, since) if since else month.start
    end = min(month.end, until) if until else month.end
    if end <= start:
        return []
    schedule = Schedule.of(level.every, month.zone)
    if schedule.interval is not None:
        step, first = schedule.interval, month.start.astimezone(UTC)
        count = int((end.astimezone(UTC) - first) / step)
        slots = [first + i * step for i in range(count + 1)]
    else:
        slots = schedule.slots(start - timedelta(seconds=1), end)
    return [slot for slot in slots if start <= slot < end]


def expected_runs(level: Level, month: Month, until: datetime | None = None) -> int:
    """Given a level and a month (which carries the client's zone), return its slot count
    (see :func:`slot_times`)."""
    return len(slot_times(level, month, until))


# --- Figures ---------------------------------------------------------------------------------

GOOD = "succeeded"
BAD = ("failed", "interrupted")
FIRST_YEAR, LAST_YEAR = 1970, 9998
"""The years a report or an export may cover: none of recoverd's runs is older than 1970, and
a month's end must still be a date."""
_SLA = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?")


def parse_sla(text: str | None) -> timedelta | None:
    """Given a ``restore_sla`` such as ``4h`` or ``1d12h`` (validated by the policy), return it."""
    match = _SLA.fullmatch(text or "")
    if not text or not match:
        return None
    days, hours, minutes = (int(n or 0) for n in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def measured_seconds(view: dict[str, Any]) -> float | None:
    """Return how long a run took: its ``duration_s`` stat, else end minus start."""
    duration = (view.get("stats") or {}).get("duration_s")
    if isinstance(duration, int | float):
        return float(duration)
    if view.get("started_at") and view.get("finished_at"):
        span = datetime.fromisoformat(view["finished_at"]) - datetime.fromisoformat(
            view["started_at"]
        )
        return span.total_seconds()
    return None


@dataclass(frozen=True)
class LevelFigures:
    """Scheduled slots against what ran, for one level of one machine in the month.

    Every slot has one outcome, so ``scheduled == succeeded + partial + failed + missed``: a
    slot is covered by the runs started from it to the next slot (a run covers only the slot
    it falls after; extra runs do not fill earlier gaps), and its outcome is the best of them.
    """

    name: str
    kind: str
    every: str | None
    scheduled: int
    succeeded: int
    """Slots with a succeeded run."""
    partial: int
    """Slots whose best run was partial (some files unreadable)."""
    failed: int
    """Slots with runs, none of them good."""
    missed: int = 0
    """Slots without any run."""
    runs: int = 0
    """Runs of the level started in the month (manual ones and retries included)."""
    retried: int = 0
    """Failed runs followed by a good run for the same slot (a warning, not a failure)."""
    bytes_added: int = 0

    @property
    def covered(self) -> int:
        """Slots with a successful run."""
        return self.succeeded


@dataclass(frozen=True)
class Timed:
    """A drill or restore with its measured time against the SLA."""

    view: dict[str, Any]
    seconds: float | None
    within_sla: bool | None
    """None when there is no SLA or no measured time."""


@dataclass(frozen=True)
class Failure:
    """A run of the month that did not succeed, with the recovery point at that moment."""

    view: dict[str, Any]
    rpo: timedelta | None
    """Age of the machine's newest good backup when the run started; None if it had none."""
    retried_by: dict[str, Any] | None = None
    """The good run of the same level that followed it for the same slot (or, for a level
    without a schedule, the same day): the failure was retried into success."""

    @property
    def reason(self) -> str:
        """The reason in plain words for the customer (the log keeps the technical text)."""
        return plain_reason(self.view)


@dataclass(frozen=True)
class MachineReport:
    """Everything the report says about one machine."""

    name: str
    role: str
    asset_tag: str | None
    levels: list[LevelFigures]
    last_good: dict[str, Any] | None
    last_good_age: timedelta | None
    failures: list[Failure]
    drills: list[Timed]
    restores: list[Timed]
    days: dict[date, str]
    """Outcome per day of the month: ``failed``, ``partial``, ``retried`` (a failure retried
    into success), ``succeeded``, ``none`` or ``future`` (after the report's as-of time)."""
    onboarded: datetime | None = None
    """From when its slots count: its ``since`` date, else its first recorded run."""
    has_drill_level: bool = False
    acceptances: list[dict[str, Any]] = field(default_factory=list)
    """Sign-offs of the month's runs: run, by, at, note (oldest first)."""
    notices: list[dict[str, Any]] = field(default_factory=list)
    """Runs to look at though they did not fail: skipped offline, or with an anomaly."""

    @property
    def drill_passed(self) -> bool:
        return any(d.view["state"] == GOOD for d in self.drills)

    @property
    def backup_levels(self) -> list[LevelFigures]:
        return [lv for lv in self.levels if lv.kind != "verify"]

    @property
    def verdict(self) -> tuple[str, str]:
        """Return the machine's verdict, ``good``, ``attention`` or ``at risk``, and why."""
        levels = self.backup_levels
        if not levels:
            return "good", "no backup level"
        if self.last_good is None:
            return "at risk", "never backed up"
        scheduled = sum(lv.scheduled for lv in levels)
        covered = sum(lv.succeeded + lv.partial for lv in levels)
        periods = [parse_every(lv.every).period for lv in levels if lv.every]
        stale = periods and self.last_good_age and self.last_good_age > 2 * min(periods)
        if stale:
            return "at risk", f"last good backup {_age(self.last_good_age)} old"
        problems = []
        if scheduled and covered < scheduled:
            problems.append(f"{scheduled - covered} of {scheduled} scheduled backups missing")
        if any(lv.partial for lv in levels):
            problems.append("some files could not be read")
        if self.has_drill_level and not self.drill_passed:
            problems.append("no passed restore drill")
        retried = sum(lv.retried for lv in self.levels)
        if problems:
            return "attention", "; ".join(problems)
        if retried:
            return "good", f"every scheduled backup done ({retried} retried after a failure)"
        return "good", "every scheduled backup done" if scheduled else "backed up"


@dataclass(frozen=True)
class RepositoryUsage:
    """What the log knows of a repository's growth (restic reports no total on backup)."""

    name: str
    added_in_month: int | None
    """None for a repository that only receives copies (restic copy reports no size)."""
    added_to_date: int | None
    """Sum of ``bytes_added`` of every backup up to the month's end, before any prune."""
    protected: int
    """Sum of the source size of each machine level's newest good snapshot (for a copy
    level: of the level it copies, once a copy succeeded)."""
    snapshots_in_month: int
    copies: bool = False
    """True if copy levels write to it."""


@dataclass(frozen=True)
class MonthTrend:
    """One month of the trend charts: backup runs by outcome and data stored."""

    month: str
    good: int
    bad: int
    stored: int
    """Bytes added by backups up to the month's end (before pruning)."""

    @property
    def success_pct(self) -> float | None:
        total = self.good + self.bad
        return round(100 * self.good / total, 1) if total else None


@dataclass(frozen=True)
class Report:
    """The monthly report of one client."""

    client: Client
    month: Month
    as_of: datetime
    sla: timedelta | None
    machines: list[MachineReport]
    repositories: list[RepositoryUsage]
    log_check: Verdict | RecoverdError | None = None
    """The check of the log from the month's start to its end, when one was asked for."""
    trends: list[MonthTrend] = field(default_factory=list)
    """The last 12 months, oldest first, the report's month last."""

    @property
    def scheduled(self) -> int:
        return sum(lv.scheduled for m in self.machines for lv in m.levels if lv.kind != "verify")

    @property
    def covered(self) -> int:
        return sum(lv.covered for m in self.machines for lv in m.levels if lv.kind != "verify")

    @property
    def coverage_pct(self) -> float | None:
        """Share of the backup slots of the month with a successful run, in percent."""
        return round(100 * self.covered / self.scheduled, 1) if self.scheduled else None

    @property
    def without_passed_drill(self) -> list[str]:
        return [m.name for m in self.machines if not m.drill_passed]

    @property
    def retried(self) -> int:
        return sum(lv.retried for m in self.machines for lv in m.levels)

    @property
    def oldest_last_good(self) -> MachineReport | None:
        """The machine whose newest good backup is oldest (one never backed up comes first)."""
        if not self.machines:
            return None
        return max(self.machines, key=lambda m: m.last_good_age or timedelta.max)

    @property
    def devices(self) -> dict[str, int]:
        return dict(sorted(Counter(m.role for m in self.machines).items()))

    @property
    def timed(self) -> list[Timed]:
        return [t for m in self.machines for t in (*m.drills, *m.restores)]


TREND_MONTHS = 12


def build_report(
    policies: PolicySet,
    log: MaintenanceLog,
    client_id: str,
    month_text: str,
    now: datetime,
    *,
    check_log: bool = False,
    anchors: list[Anchor] | None = None,
    warnings: list[str] | None = None,
) -> Report:
    """Given the policies, the log, a client and ``YYYY-MM``, return the month's figures;
    with ``check_log`` also the verdict on the log from the month's start to its end (and on
    ``anchors``, the witnesses' heads).

    Only the month's runs are read as a whole; what the report needs from before the month
    (each machine's last good backup, per level, its first run, and the backups per month
    and repository) is asked of the log directly, so a report costs the same in the log's
    first year and its tenth. Raise UsageError if the client is unknown or the month
    malformed.
    """
    client = policies.clients.get(client_id)
    if client is None:
        known = ", ".join(sorted(policies.clients)) or "none"
        raise UsageError(f"no client {client_id!r} in the policies (clients: {known})")
    month = Month.parse(month_text, client.timezone)
    as_of = min(now, month.end)
    sla = parse_sla(client.restore_sla)
    boundaries = _trend_boundaries(month)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The backups per month are one aggregate over the whole history; SQLite runs it
        # without the GIL, so it proceeds while the month's runs are read and the log is
        # checked.
        history = pool.submit(log.backup_history, client.id, boundaries)
        in_month = log.runs_started(client.id, month.start, month.end)
        earlier = {
            machine.name: _good_before(log, client, machine, month)
            for machine in client.machines.values()
        }
        by_machine: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for view in in_month:
            by_machine[view["machine"]].append(view)
        machines = [
            _machine_report(
                machine,
                earlier[machine.name],
                by_machine[machine.name],
                month,
                as_of,
                sla,
                _onboarded(log, client, machine, by_machine[machine.name]),
            )
            for machine in client.machines.values()
        ]
        log_check = _check_log(log, month, anchors or [], warnings or []) if check_log else None
        good_before = [v for views in earlier.values() for v in views]
        rows = history.result()
        added_before: dict[str | None, int] = defaultdict(int)
        for repository, bucket, _state, _count, added in rows:
            if bucket < TREND_MONTHS - 1:
                added_before[repository] += added or 0
        copied = _copied(log, client, as_of)
        repositories = _repositories(client, good_before, added_before, in_month, copied)
    return Report(
        client,
        month,
        as_of,
        sla,
        machines,
        repositories,
        log_check,
        trends=_trends(boundaries, rows, month),
    )


def _trend_boundaries(month: Month) -> list[datetime]:
    """Return the starts of the 12 months ending with ``month``, and its end."""
    starts = []
    year, number = month.year, month.month
    for _ in range(TREND_MONTHS):
        starts.append(Month(year, number, month.zone).start)
        year, number = (year, number - 1) if number > 1 else (year - 1, 12)
    return [*reversed(starts), month.end]


def _trends(
    boundaries: list[datetime], rows: list[tuple[Any, ...]], month: Month
) -> list[MonthTrend]:
    good: Counter[int] = Counter()
    bad: Counter[int] = Counter()
    added: Counter[int] = Counter()
    for _repository, bucket, state, count, bytes_added in rows:
        added[bucket] += bytes_added or 0
        if state in (GOOD, "partial"):
            good[bucket] += count
        elif state in BAD:
            bad[bucket] += count
    stored = added[-1]
    trends = []
    for i, start in enumerate(boundaries[:-1]):
        stored += added[i]
        local = start.astimezone(month.tz)
        trends.append(MonthTrend(f"{local:%Y-%m}", good[i], bad[i], stored))
    return trends


def _check_log(
    log: MaintenanceLog, month: Month, anchors: list[Anchor], warnings: list[str]
) -> Verdict | RecoverdError:
    """Return the verdict on the entries from the month's start to the end of the log (the
    chain, the signed head and the last signature) and on ``anchors`` (the witnesses'
    heads), or why the log could not be checked."""
    try:
        return log.verify(since=month.start, anchors=anchors, warnings=warnings)
    except RecoverdError as exc:
        return exc


def _onboarded(
    log: MaintenanceLog, client: Client, machine: Machine, in_month: list[dict[str, Any]]
) -> datetime | None:
    """Return from when the machine's slots count: midnight of its ``since`` day in the
    client's zone, else the start of its first recorded run (None: it never ran)."""
    if machine.since is not None:
        return datetime.combine(machine.since, datetime.min.time(), ZoneInfo(client.timezone))
    first = log.first_run_at(client.id, machine.name)
    return datetime.fromisoformat(first) if first else None


def _good_before(
    log: MaintenanceLog, client: Client, machine: Machine, month: Month
) -> list[dict[str, Any]]:
    """Return the machine's last good backup before the month of each of its backup levels,
    and of any level (one no longer in the policy may hold its newest backup)."""
    names = [lv.name for lv in machine.levels if _action_of(lv) == "backup"]
    found: dict[str, dict[str, Any]] = {}
    for level in (*names, None):
        view = log.last_good_backup(client.id, machine.name, level, month.start)
        if view:
            found.setdefault(view["id"], view)
    return list(found.values())


def _copied(log: MaintenanceLog, client: Client, as_of: datetime) -> set[tuple[str, str]]:
    """Return the (machine, copy level) pairs with a succeeded copy by ``as_of``."""
    done = set()
    for machine in client.machines.values():
        for level in machine.levels:
            if level.kind != "copy":
                continue
            view = log.last_run(client.id, machine.name, level.name, GOOD, "copy")
            if view and datetime.fromisoformat(view["started_at"]) < as_of:
                done.add((machine.name, level.name))
    return done


def _machine_report(
    machine: Machine,
    good_before: list[dict[str, Any]],
    in_month: list[dict[str, Any]],
    month: Month,
    as_of: datetime,
    sla: timedelta | None,
    onboarded: datetime | None = None,
) -> MachineReport:
    """Given a machine's good backups before the month and its runs in the month, return
    what the report says about it."""
    mine = sorted(in_month, key=lambda v: datetime.fromisoformat(v["started_at"]))
    good_backups = good_before + [
        v for v in mine if v["action"] == "backup" and v["state"] in (GOOD, "partial")
    ]
    # Log order is start order; runs of different levels may overlap, so compare end times.
    last_good = max(good_backups, key=_finished, default=None)
    figures = []
    retried_by: dict[str, dict[str, Any]] = {}
    for level in machine.levels:
        level_figures, retries = _level_figures(level, mine, month, as_of, onboarded)
        figures.append(level_figures)
        retried_by.update(retries)
    return MachineReport(
        name=machine.name,
        role=machine.role,
        asset_tag=machine.asset_tag,
        levels=figures,
        last_good=last_good,
        last_good_age=as_of - _finished(last_good) if last_good else None,
        failures=[
            Failure(v, _rpo(v, good_backups), retried_by.get(v["id"]))
            for v in mine
            if v["state"] in (*BAD, "partial")
        ],
        drills=[_timed(v, sla) for v in mine if v["action"] == "verify"],
        restores=[_timed(v, sla) for v in mine if v["action"] == "restore"],
        days=_days(mine, month, as_of, set(retried_by)),
        onboarded=onboarded,
        has_drill_level=any(lv.kind == "verify" for lv in machine.levels),
        acceptances=[
            {"run": v["id"], "action": v["action"], "level": v["level"], **a}
            for v in mine
            for a in v.get("acceptances") or ()
        ],
        notices=[
            v
            for v in mine
            if (v["stats"] or {}).get("offline") or (v["stats"] or {}).get("anomaly")
        ],
    )


def _finished(view: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(view["finished_at"] or view["started_at"])


def _action_of(level: Level) -> str:
    """Return the action a level's runs are recorded as (files and image levels: backup)."""
    return {"verify": "verify", "copy": "copy"}.get(level.kind, "backup")


_RANK = {GOOD: 3, "partial": 2, "failed": 1, "interrupted": 1}


def _level_figures(
    level: Level,
    runs: list[dict[str, Any]],
    month: Month,
    as_of: datetime,
    onboarded: datetime | None,
) -> tuple[LevelFigures, dict[str, dict[str, Any]]]:
    """Return the level's figures, and the failed runs retried into success (run id -> the
    good run that followed for the same slot)."""
    action = _action_of(level)
    mine = [v for v in runs if v["level"] == level.name and v["action"] == action]
    # Onboarding unknown (the machine never ran): no slot counts against it.
    slots = slot_times(level, month, as_of, onboarded) if onboarded else []
    windows: list[list[dict[str, Any]]] = [[] for _ in slots]
    outside: list[dict[str, Any]] = []
    for view in mine:
        started = datetime.fromisoformat(view["started_at"])
        i = bisect_right(slots, started) - 1
        (windows[i] if i >= 0 else outside).append(view)
    outcome = Counter()
    for window in windows:
        best = max((_RANK.get(v["state"], 0) for v in window), default=-1)
        outcome[{3: "succeeded", 2: "partial", -1: "missed"}.get(best, "failed")] += 1
    # A failure followed by a good run for the same slot (without a schedule: the same day).
    groups = windows if slots else _by_day(mine, month)
    retried: dict[str, dict[str, Any]] = {}
    for group in groups:
        for i, view in enumerate(group):
            if view["state"] in BAD:
                later = next((v for v in group[i + 1 :] if v["state"] == GOOD), None)
                if later is not None:
                    retried[view["id"]] = later
    figures = LevelFigures(
        name=level.name,
        kind=level.kind,
        every=level.every,
        scheduled=len(slots),
        succeeded=outcome["succeeded"],
        partial=outcome["partial"],
        failed=outcome["failed"],
        missed=outcome["missed"],
        runs=len(mine),
        retried=len(retried),
        bytes_added=sum(_stat(v, "bytes_added") for v in mine),
    )
    return figures, retried


def _by_day(runs: list[dict[str, Any]], month: Month) -> list[list[dict[str, Any]]]:
    days: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for view in runs:
        days[datetime.fromisoformat(view["started_at"]).astimezone(month.tz).date()].append(view)
    return list(days.values())


def _rpo(failure: dict[str, Any], good_backups: list[dict[str, Any]]) -> timedelta | None:
    """Return the age of the newest good backup finished before ``failure`` started."""
    started = datetime.fromisoformat(failure["started_at"])
    earlier = [_finished(v) for v in good_backups if _finished(v) <= started]
    return started - max(earlier) if earlier else None


def _timed(view: dict[str, Any], sla: timedelta | None) -> Timed:
    seconds = measured_seconds(view)
    within = None if sla is None or seconds is None else seconds <= sla.total_seconds()
    return Timed(view, seconds, within)


def _days(
    runs: list[dict[str, Any]], month: Month, as_of: datetime, retried: set[str] = frozenset()
) -> dict[date, str]:
    """Return each day's outcome: the worst state of the runs started that (local) day; a
    failure retried into success counts as ``retried``, a warning, not as a failure."""
    by_day: dict[date, set[str]] = {d: set() for d in month.days}
    for view in runs:
        state = "retried" if view["id"] in retried else view["state"]
        by_day[datetime.fromisoformat(view["started_at"]).astimezone(month.tz).date()].add(state)
    today = as_of.astimezone(month.tz).date()
    outcome = {}
    for day, states in by_day.items():
        if states & set(BAD):
            outcome[day] = "failed"
        elif "partial" in states:
            outcome[day] = "partial"
        elif "retried" in states:
            outcome[day] = "retried"
        elif GOOD in states:
            outcome[day] = "succeeded"
        else:
            outcome[day] = "future" if day > today else "none"
    return outcome


def _repositories(
    client: Client,
    good_before: list[dict[str, Any]],
    added_before: dict[str | None, int],
    in_month: list[dict[str, Any]],
    copied: set[tuple[str, str]] = frozenset(),
) -> list[RepositoryUsage]:
    """Return each repository's usage: the month's backups, the bytes added before it, and
    the newest good backup of each machine level (from the month, else from before it); a
    repository that copy levels write to holds the newest snapshot of each level copied."""
    backups = [v for v in in_month if v["action"] == "backup"]
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for view in sorted(good_before + backups, key=_finished):
        if view["state"] == GOOD:
            newest[(view["machine"], view["level"])] = view
    copy_levels = [
        (machine.name, level)
        for machine in client.machines.values()
        for level in machine.levels
        if level.kind == "copy"
    ]
    usage = []
    for name in sorted(client.repositories):
        this_month = [v for v in backups if v["repository"] == name]
        copies_here = [(m, lv) for m, lv in copy_levels if lv.to == name]
        protected = sum(
            _stat(v, "bytes_processed")
            for (_m, _lv), v in newest.items()
            if v["repository"] == name
        )
        protected += sum(
            _stat(newest[(m, lv.of)], "bytes_processed")
            for m, lv in copies_here
            if (m, lv.name) in copied and (m, lv.of) in newest
        )
        copy_runs = [
            v
            for v in in_month
            if v["action"] == "copy" and v["repository"] == name and v["snapshot"]
        ]
        only_copies = bool(copies_here) and not this_month and not added_before.get(name)
        added_in_month = sum(_stat(v, "bytes_added") for v in this_month)
        usage.append(
            RepositoryUsage(
                name=name,
                added_in_month=None if only_copies else added_in_month,
                added_to_date=None if only_copies else added_before.get(name, 0) + added_in_month,
                protected=protected,
                snapshots_in_month=sum(1 for v in this_month if v["snapshot"]) + len(copy_runs),
                copies=bool(copies_here),
            )
        )
    return usage


def _stat(view: dict[str, Any], name: str) -> int:
    value = (view.get("stats") or {}).get(name)
    return int(value) if isinstance(value, int | float) else 0


def _age(age: timedelta) -> str:
    days, hours = age.days, age.seconds // 3600
    return f"{days} d {hours} h" if days else f"{hours} h"


# --- Reasons in plain words ------------------------------------------------------------------

_REASONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.I), text)
    for p, text in [
        (r"host key", "the machine's identity check failed (its SSH host key changed)"),
        (r"certificate", "the machine's certificate could not be validated"),
        (
            r"authenticat|permission denied \(publickey",
            "the backup server could not log in to the machine",
        ),
        (
            r"cannot reach|unreachable|connection refused|no route|timed out connecting|"
            r"name or service not known",
            "the machine could not be reached (switched off or off the network)",
        ),
        (r"offline", "the machine was offline"),
        (r"controller process .* ended", "the backup server stopped during the run"),
        (r"stopped by the operator|interrupted", "the run was stopped before it finished"),
        (r"stalled|no progress|timeout|timed out", "the run took too long and was stopped"),
        (r"no space left|disk full|quota", "the backup storage is full"),
        (
            r"wrong password|password is incorrect|no key found",
            "the backup storage refused its password",
        ),
        (r"locked|lock held", "the backup storage was busy with another job"),
        (
            r"repository .*(not exist|does not exist|not found)|unable to open repo|"
            r"config file",
            "the backup storage could not be opened",
        ),
        (
            r"could not be read|unreadable|partial",
            "some files could not be read (in use, or no permission)",
        ),
        (r"mismatch", "the restore drill found files that differ from the backup"),
        (
            r"all zeros|lost the file system|accept-change",
            "the disk looked wiped or replaced, so it was not imaged",
        ),
        (r"not found|no such file", "a disk or folder was not found"),
        (r"internal error", "an internal error of the backup software"),
    ]
]
_TECHNICAL = re.compile(r"sh -c|IFS=|RESTIC_|restic |\$\{?\w|\|\||&&|`|/bin/|exit status")


def plain_reason(view: dict[str, Any]) -> str:
    """Return why a run did not succeed, in words a customer reads: never the command line
    or the wrapper around it (the maintenance log keeps the technical text)."""
    error = view.get("error") or ""
    if view.get("state") == "interrupted" and not error:
        return "the run was stopped before it finished"
    for pattern, text in _REASONS:
        if pattern.search(error):
            return text
    first = error.strip().splitlines()[0][:160] if error.strip() else ""
    if first and not _TECHNICAL.search(first):
        return first
    return f"the run failed; the technical detail is in the maintenance log (run {view['id']})"
