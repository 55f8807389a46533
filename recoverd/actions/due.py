"""Where each level stands against its schedule, read from the maintenance log.

The log is the only memory: a level is due when its last good run started before the latest
slot of its schedule (for ``N hours``: longer ago than N hours), and a level that never
succeeded is due at once. However many slots passed meanwhile (daemon down, machine asleep,
clock jump), a due level is one run. After a failed attempt the log also says when to try
again: soon after a transient failure (with backoff, a few times), only at the next slot after
a permanent one, or once more as soon as the machine's policy file changed (the engineer fixed
an address or pinned a new host key); an interrupted run is redone once at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recoverd.actions.backup import level_action
from recoverd.actions.report import parse_sla
from recoverd.controller import Controller
from recoverd.log import MaintenanceLog
from recoverd.policy.model import Level, Machine
from recoverd.policy.schedule import Schedule

GOOD_STATES = ("succeeded", "partial")
"""A partial backup still made a restore point: the level is served until its next slot."""

MAX_ATTEMPTS = 4
"""Attempts per slot for transient failures: the first run and three retries."""

RETRY_BACKOFF = (timedelta(minutes=2), timedelta(minutes=10), timedelta(minutes=30))
"""Wait after the 1st, 2nd, 3rd failed attempt before the next one."""


RETRY_REASONS = ("retry ", "redo ")
"""How the ``reason`` of a duty that will try again soon begins (see :func:`level_duty`)."""


def started(view: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(view["started_at"])


def ended(view: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(view["finished_at"] or view["started_at"])


@dataclass(frozen=True)
class Duty:
    """One level of one machine against its schedule at one instant.

    ``run_at`` is when the daemon should start it next: at or before ``now`` when it should
    run now, None while a run of it is in progress.
    """

    machine: Machine
    level: Level
    schedule: Schedule
    now: datetime
    last_good: dict[str, Any] | None
    last_attempt: dict[str, Any] | None
    due: bool
    due_since: datetime | None
    run_at: datetime | None
    reason: str

    @property
    def running(self) -> bool:
        return self.last_attempt is not None and self.last_attempt["state"] == "running"

    @property
    def runnable(self) -> bool:
        """True when the daemon should start a run of this level now."""
        return self.run_at is not None and self.run_at <= self.now

    @property
    def missed_since(self) -> datetime | None:
        """When the level first needed a run that has not succeeded yet: the first slot after
        its last good run (for an interval form, one interval after it); None while it is not
        due, or if it never succeeded."""
        if not self.due or self.last_good is None:
            return None
        if self.schedule.interval is not None:
            return self.due_since
        return self.schedule.next_slot(started(self.last_good))

    @property
    def grace(self) -> timedelta:
        """How long a level may go past its schedule before it is overdue: its ``grace``, by
        default one period of its schedule."""
        grace = parse_sla(self.level.grace)
        if grace is not None:
            return grace
        if self.schedule.interval is not None:
            return self.schedule.interval
        slot = self.missed_since or self.schedule.latest_slot(self.now)
        return self.schedule.next_slot(slot) - slot

    def overdue_at(self, now: datetime | None = None) -> bool:
        """True when at ``now`` (default: when the duty was read) the level has had no good
        run for longer than its schedule allows plus its grace, and is not running. A level
        that never succeeded is overdue at once."""
        if not self.due or self.running:
            return False
        missed = self.missed_since
        return missed is None or (now or self.now) - missed > self.grace

    @property
    def overdue(self) -> bool:
        return self.overdue_at()

    @property
    def retrying(self) -> bool:
        """True when the newest attempt failed and the daemon will try the slot again soon
        (a transient failure with retries left, or a first interruption)."""
        return self.failing and self.reason.startswith(RETRY_REASONS)

    @property
    def failing(self) -> bool:
        """True when the newest finished attempt failed or was interrupted."""
        return self.last_attempt is not None and self.last_attempt["state"] in (
            "failed",
            "interrupted",
        )


def policy_changed_at(path: Path) -> datetime | None:
    """Return when the policy file ``path`` was last written, to the second as runs record
    their start (a run started in the same second counts as after it), or None if it cannot
    be read."""
    try:
        return datetime.fromtimestamp(int(path.stat().st_mtime), UTC)
    except OSError:
        return None


def machine_duties(
    log: MaintenanceLog,
    machine: Machine,
    timezone: str,
    now: datetime,
    changed_at: datetime | None = None,
) -> list[Duty]:
    """Return the duty of each scheduled level of ``machine`` (client zone ``timezone``);
    ``changed_at`` is when its policy file last changed (:func:`level_duty`).

    Due-ness needs, per level, only its last good run, its newest run and the attempts at
    the current slot: the log finds those with index searches, however long the history.
    """
    found = []
    for level in machine.levels:
        if not level.every:
            continue
        schedule = Schedule.of(level.every, timezone)
        runs = log.level_runs(
            machine.client,
            machine.name,
            level.name,
            level_action(level),
            since=attempts_since(schedule, now),
            good_states=GOOD_STATES,
        )
        found.append(level_duty(machine, level, schedule, runs, now, changed_at))
    return found


def attempts_since(schedule: Schedule, now: datetime) -> datetime:
    """Return since when failed runs count as attempts at the slot that is due at ``now``:
    the latest calendar slot, or one interval back."""
    return schedule.latest_slot(now) if schedule.interval is None else now - schedule.interval


def level_duty(
    machine: Machine,
    level: Level,
    schedule: Schedule,
    runs: list[dict[str, Any]],
    now: datetime,
    changed_at: datetime | None = None,
) -> Duty:
    """Given a level's runs (oldest first: at least its last good run, its newest run and
    every run since :func:`attempts_since`), return its duty. A permanent failure waits for
    the next slot, unless the policy changed after it (``changed_at``, up to ``now``): then
    the level is tried once more at once."""
    good = [r for r in runs if r["state"] in GOOD_STATES]
    last_good = good[-1] if good else None
    last = runs[-1] if runs else None

    def duty(due: bool, due_since: datetime | None, run_at: datetime | None, why: str) -> Duty:
        return Duty(machine, level, schedule, now, last_good, last, due, due_since, run_at, why)

    if schedule.interval is None:
        latest = schedule.latest_slot(now)
        due = last_good is None or started(last_good) < latest
        due_since = latest if last_good else None
    else:
        due_since = started(last_good) + schedule.interval if last_good else None
        due = due_since is None or due_since <= now
    since = attempts_since(schedule, now)  # attempts made for the slot that is due now
    if last is not None and last["state"] == "running":
        return duty(due, due_since, None, "running")
    if not due:
        at = schedule.next_slot(now) if schedule.interval is None else due_since
        return duty(False, None, at, "scheduled")
    failed = [r for r in runs if r["state"] not in GOOD_STATES and started(r) >= since]
    if not failed:
        return duty(True, due_since, now, "due" if last_good else "never succeeded")
    newest = failed[-1]
    if newest["state"] == "interrupted" and sum(r["state"] == "interrupted" for r in failed) == 1:
        return duty(True, due_since, now, "redo after an interrupted run")
    # A skipped offline workstation is tried again like a transient failure: it may be back.
    transient = newest["state"] in ("failed", "skipped") and (newest["stats"] or {}).get(
        "transient"
    )
    if transient and len(failed) < MAX_ATTEMPTS:
        wait = RETRY_BACKOFF[min(len(failed), len(RETRY_BACKOFF)) - 1]
        return duty(
            True, due_since, ended(newest) + wait, f"retry {len(failed)}/{MAX_ATTEMPTS - 1}"
        )
    if changed_at is not None and started(newest) < changed_at <= now:
        return duty(True, due_since, now, "the policy changed after the failure")
    if schedule.interval is None:
        at = schedule.next_slot(now)
    else:
        at = started(newest) + schedule.interval
    return duty(True, due_since, at, f"{newest['state']}; next try at the next slot")


def duties(ctl: Controller, now: datetime) -> list[Duty]:
    """Return the duty of every scheduled level of every machine of ``ctl`` at ``now``."""
    policies = ctl.policies
    found = []
    for client_id in sorted(policies.clients):
        client = policies.clients[client_id]
        changed_at = policy_changed_at(client.source)
        for machine in client.machines.values():
            found += machine_duties(ctl.log, machine, client.timezone, now, changed_at)
    return found


def copies_not_due(
    ctl: Controller, machine: Machine, levels: list[Level], now: datetime
) -> dict[str, Duty]:
    """Given the levels a ``recoverd backup MACHINE`` (no ``--level``) would run, return the
    scheduled copy levels among them that are not due, by name, with their duty. A monthly
    offsite copy is not redone by every manual backup; it runs when its schedule says so, or
    when named with ``--level``. A copy level without a schedule runs with every backup."""
    client = ctl.policies.clients[machine.client]
    copies = [lv for lv in levels if lv.kind == "copy"]
    if not copies:
        return {}
    by_level = {
        d.level.name: d
        for d in machine_duties(
            ctl.log, machine, client.timezone, now, policy_changed_at(client.source)
        )
    }
    return {
        level.name: duty
        for level in copies
        if (duty := by_level.get(level.name)) is not None and not duty.due
    }
