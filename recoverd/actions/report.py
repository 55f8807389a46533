"""The monthly report for a client: coverage, freshness, failures, drills, restores, SLA.

The figures come from the policies (what should have run) and the maintenance log (what did
run), and nowhere else, so a report can be re-made for any past month;
:mod:`recoverd.actions.report_render` turns them into HTML, Markdown or CSV.
"""

from __future__ import annotations

import calendar
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from recoverd.errors import RecoverdError, UsageError
from recoverd.log import MaintenanceLog
from recoverd.log.anchors import Anchor
from recoverd.log.verify import Verdict
from recoverd.policy.every import parse_every
from recoverd.policy.model import Client, Level, Machine, PolicySet

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


# --- Scheduled slots -----------------------------------------------------------------------
# Kept apart on purpose: the shared scheduler (recoverd/policy, issue 3) will answer "which
# slots fall in this span"; until it lands, this counts them from `parse_every` alone.


def expected_runs(level: Level, month: Month, until: datetime | None = None) -> int:
    """Given a level and a month (which carries the client's zone), return its slot count.

    Slots are wall-clock times in the month's zone: each listed weekday at ``at``, one day a
    month (days past a short month's end fall on its last day), or every N hours/minutes
    counted from the month's start in elapsed time. Only slots before ``until`` count (the
    report of the current month counts the slots so far). A level without ``every`` (run by
    hand only) has no slots.
    """
    if not level.every:
        return 0
    every = parse_every(level.every)
    end = min(month.end, until) if until else month.end
    if every.interval is not None:
        elapsed = end.astimezone(UTC) - month.start.astimezone(UTC)
        return max(0, int(elapsed / every.interval))
    assert every.at is not None  # every form but intervals has a time of day
    if every.month_day is not None:
        days = [month.days[min(every.month_day, len(month.days)) - 1]]
    else:
        days = [d for d in month.days if d.weekday() in every.weekdays]
    return sum(1 for d in days if datetime.combine(d, every.at, month.tz) < end)


# --- Figures ---------------------------------------------------------------------------------

GOOD = "succeeded"
BAD = ("failed", "interrupted")
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
    """Scheduled against done for one level of one machine in the month."""

    name: str
    kind: str
    every: str | None
    scheduled: int
    succeeded: int
    partial: int
    failed: int

    @property
    def covered(self) -> int:
        """Successful runs counted against the slots (extra manual runs do not fill gaps)."""
        return min(self.succeeded, self.scheduled)


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
    """Outcome per day of the month: ``failed``, ``partial``, ``succeeded``, ``none`` or
    ``future`` (after the report's as-of time)."""

    @property
    def drill_passed(self) -> bool:
        return any(d.view["state"] == GOOD for d in self.drills)


@dataclass(frozen=True)
class RepositoryUsage:
    """What the log knows of a repository's growth (restic reports no total on backup)."""

    name: str
    added_in_month: int
    added_to_date: int
    """Sum of ``bytes_added`` of every backup up to the month's end, before any prune."""
    protected: int
    """Sum of the source size of each machine level's newest good snapshot."""
    snapshots_in_month: int


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
    with ``check_log`` also the verdict on the log from the month's start to its end.

    Only the month's runs are read as a whole; what the report needs from before the month
    (each machine's last good backup, per level, and the bytes added to each repository) is
    asked of the log directly, so a report costs the same in the log's first year and its
    tenth. Raise UsageError if the client is unknown or the month malformed.
    """
    client = policies.clients.get(client_id)
    if client is None:
        known = ", ".join(sorted(policies.clients)) or "none"
        raise UsageError(f"no client {client_id!r} in the policies (clients: {known})")
    month = Month.parse(month_text, client.timezone)
    as_of = min(now, month.end)
    sla = parse_sla(client.restore_sla)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The bytes added before the month are one aggregate over the whole history; SQLite
        # runs it without the GIL, so it proceeds while the month's runs are read and the
        # log is checked.
        added_before = pool.submit(log.bytes_added, client.id, month.start)
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
                machine, earlier[machine.name], by_machine[machine.name], month, as_of, sla
            )
            for machine in client.machines.values()
        ]
        log_check = _check_log(log, month, anchors or [], warnings or []) if check_log else None
        good_before = [v for views in earlier.values() for v in views]
        repositories = _repositories(client, good_before, added_before.result(), in_month)
    return Report(client, month, as_of, sla, machines, repositories, log_check)


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


def _machine_report(
    machine: Machine,
    good_before: list[dict[str, Any]],
    in_month: list[dict[str, Any]],
    month: Month,
    as_of: datetime,
    sla: timedelta | None,
) -> MachineReport:
    """Given a machine's good backups before the month and its runs in the month, return
    what the report says about it."""
    mine = sorted(in_month, key=lambda v: datetime.fromisoformat(v["started_at"]))
    good_backups = good_before + [v for v in mine if v["action"] == "backup" and v["state"] == GOOD]
    # Log order is start order; runs of different levels may overlap, so compare end times.
    last_good = max(good_backups, key=_finished, default=None)
    return MachineReport(
        name=machine.name,
        role=machine.role,
        asset_tag=machine.asset_tag,
        levels=[_level_figures(level, mine, month, as_of) for level in machine.levels],
        last_good=last_good,
        last_good_age=as_of - _finished(last_good) if last_good else None,
        failures=[
            Failure(v, _rpo(v, good_backups)) for v in mine if v["state"] in (*BAD, "partial")
        ],
        drills=[_timed(v, sla) for v in mine if v["action"] == "verify"],
        restores=[_timed(v, sla) for v in mine if v["action"] == "restore"],
        days=_days(mine, month, as_of),
    )


def _finished(view: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(view["finished_at"] or view["started_at"])


def _action_of(level: Level) -> str:
    """Return the action a level's runs are recorded as (files and image levels: backup)."""
    return {"verify": "verify", "copy": "copy"}.get(level.kind, "backup")


def _level_figures(
    level: Level, runs: list[dict[str, Any]], month: Month, as_of: datetime
) -> LevelFigures:
    action = _action_of(level)
    states = Counter(v["state"] for v in runs if v["level"] == level.name and v["action"] == action)
    return LevelFigures(
        name=level.name,
        kind=level.kind,
        every=level.every,
        scheduled=expected_runs(level, month, as_of),
        succeeded=states[GOOD],
        partial=states["partial"],
        failed=sum(states[s] for s in BAD),
    )


def _rpo(failure: dict[str, Any], good_backups: list[dict[str, Any]]) -> timedelta | None:
    """Return the age of the newest good backup finished before ``failure`` started."""
    started = datetime.fromisoformat(failure["started_at"])
    earlier = [_finished(v) for v in good_backups if _finished(v) <= started]
    return started - max(earlier) if earlier else None


def _timed(view: dict[str, Any], sla: timedelta | None) -> Timed:
    seconds = measured_seconds(view)
    within = None if sla is None or seconds is None else seconds <= sla.total_seconds()
    return Timed(view, seconds, within)


def _days(runs: list[dict[str, Any]], month: Month, as_of: datetime) -> dict[date, str]:
    """Return each day's outcome: the worst state of the runs started that (local) day."""
    by_day: dict[date, set[str]] = {d: set() for d in month.days}
    for view in runs:
        by_day[datetime.fromisoformat(view["started_at"]).astimezone(month.tz).date()].add(
            view["state"]
        )
    today = as_of.astimezone(month.tz).date()
    outcome = {}
    for day, states in by_day.items():
        if states & set(BAD):
            outcome[day] = "failed"
        elif "partial" in states:
            outcome[day] = "partial"
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
) -> list[RepositoryUsage]:
    """Return each repository's usage: the month's backups, the bytes added before it, and
    the newest good backup of each machine level (from the month, else from before it)."""
    backups = [v for v in in_month if v["action"] == "backup"]
    usage = []
    for name in sorted(client.repositories):
        this_month = [v for v in backups if v["repository"] == name]
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        candidates = [v for v in good_before if v["repository"] == name] + this_month
        for view in sorted(candidates, key=_finished):
            if view["state"] == GOOD:
                newest[(view["machine"], view["level"])] = view
        added_in_month = sum(_stat(v, "bytes_added") for v in this_month)
        usage.append(
            RepositoryUsage(
                name=name,
                added_in_month=added_in_month,
                added_to_date=added_before.get(name, 0) + added_in_month,
                protected=sum(_stat(v, "bytes_processed") for v in newest.values()),
                snapshots_in_month=sum(1 for v in this_month if v["snapshot"]),
            )
        )
    return usage


def _stat(view: dict[str, Any], name: str) -> int:
    value = (view.get("stats") or {}).get(name)
    return int(value) if isinstance(value, int | float) else 0
