"""Restore drills: prove that a level's latest good backup restores, and record the proof.

A ``verify`` level names the level it tests (``of``). A drill restores that level's newest good
snapshot into a scratch place (on the machine, or on the controller with ``where =
"controller"``), compares what came back with the snapshot's content, removes the scratch place,
and runs restic's own repository check on one N-th of the repository's data, a different N-th
each drill. Orchestration only: a restore target for the ``scratch`` destination (a plugin,
:mod:`recoverd_plugins.drills`) restores, compares and cleans up through the level's engine.

The run records what an auditor asks for: files verified, mismatches (with the first paths),
bytes restored, the measured time to restore (RTO evidence), the sample's seed and size, and
the check subset. A snapshot older than the ``of`` level's schedule allows fails the drill as a
*stale backup*, however well it restores.
"""

from __future__ import annotations

import dataclasses
import secrets as stdlib_secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from recoverd.actions.restore import (
    MAX_LISTED,
    backup_of,
    choose_snapshot,
    good_backups,
    record_verification,
    target_class,
    with_record,
)
from recoverd.controller import Controller
from recoverd.engine import Engine, Outcome, ProgressCallback, Snapshot
from recoverd.errors import RepositoryLocked, UsageError
from recoverd.locks import machine_lock
from recoverd.log import RunFilter
from recoverd.log.maintenance import utc_now
from recoverd.policy.model import Level, Machine, Repository
from recoverd.policy.schedule import Schedule
from recoverd.restore import RestoreRequest, RestoreTarget
from recoverd.restore_points import default_restore_points
from recoverd.runs import recorded_run
from recoverd.transport import Transport

CHECK_SUBSETS = 12
"""restic check reads 1/CHECK_SUBSETS of the repository's data per drill, a different part each
time: twelve drills (a year of monthly drills) read all of it."""


def verify_levels(machine: Machine, level_name: str | None = None) -> list[Level]:
    """Return the verify levels ``recoverd verify`` runs: the one named, or all of them.

    Raise UsageError if there is none, or the named level is not a verify level.
    """
    if level_name is None:
        levels = [lv for lv in machine.levels if lv.kind == "verify"]
        if not levels:
            raise UsageError(
                f'{machine.qualified_name} has no verify level (add one with kind = "verify" '
                'and of = "<level>")'
            )
        return levels
    level = machine.level(level_name)
    if level is None:
        names = ", ".join(lv.name for lv in machine.levels) or "none"
        raise UsageError(f"{machine.qualified_name} has no level {level_name!r} (levels: {names})")
    if level.kind != "verify":
        raise UsageError(f"level {level_name!r} is a {level.kind} level, not a verify level")
    return [level]


@dataclasses.dataclass(frozen=True)
class DrillSource:
    """What a drill restores: the data level (files or image), where its snapshots are, and
    the level whose schedule says how fresh the newest one must be (``of``)."""

    data_level: Level
    repository: Repository
    of: Level


def drill_source(ctl: Controller, machine: Machine, level: Level) -> DrillSource:
    """Return what the verify ``level`` restores. A copy level is drilled in its target
    repository, with the snapshots of the level it copies.

    Raise UsageError if ``of`` names no files, image or copy level.
    """
    of = machine.level(level.of or "")
    data = machine.level(of.of or "") if of is not None and of.kind == "copy" else of
    if of is None or data is None or data.kind not in ("files", "image"):
        raise UsageError(
            f"verify level {level.name!r} of {machine.qualified_name}: {level.of!r} is not a "
            "files, image or copy level"
        )
    if data.target is not None:
        raise UsageError(
            f"verify level {level.name!r}: {data.name} is a Windows Server Backup image; "
            "drills of wbadmin images are not supported (restore one with `recoverd restore`)"
        )
    if of.kind == "copy":
        repository = ctl.policies.clients[machine.client].repositories[of.to or ""]
    else:
        repository = ctl.policies.repository_for(machine, data)
    return DrillSource(data, repository, of)


def freshness_limit(of: Level, timezone: str, now: datetime) -> datetime | None:
    """Return the oldest time the newest snapshot of ``of`` may have without being stale, None
    when ``of`` has no schedule.

    One missed slot is tolerated: the backup of the latest slot may still be running or
    retrying, so the snapshot must be no older than the slot before the latest one. For
    ``N hours`` / ``N minutes``: no older than twice the interval.
    """
    if not of.every:
        return None
    schedule = Schedule.of(of.every, timezone)
    if schedule.interval is not None:
        return now - 2 * schedule.interval
    latest = schedule.latest_slot(now)
    return schedule.latest_slot(latest - timedelta(seconds=1))


def check_subset(ctl: Controller, machine: Machine, level: Level) -> str:
    """Return the ``n/N`` subset this drill's restic check reads: the one after the previous
    drill's, counted from the drills of ``level`` in the maintenance log."""
    earlier = ctl.log.runs(
        RunFilter(client=machine.client, machine=machine.name, level=level.name, action="verify")
    )
    done = sum(1 for v in earlier if (v["stats"] or {}).get("check_subset"))
    return f"{done % CHECK_SUBSETS + 1}/{CHECK_SUBSETS}"


def _newest_snapshot(
    ctl: Controller, engine: Engine, machine: Machine, source: DrillSource
) -> Snapshot:
    """The newest good snapshot: recorded as a successful backup, or for a copy the newest one
    in the copy's repository (copies get new ids there), with the record of the backup it
    was copied from."""
    if source.of.kind != "copy":
        return choose_snapshot(ctl, engine, machine, source.data_level, None)
    found = engine.snapshots(machine.client, machine, source.repository, source.data_level.name)
    good = good_backups(ctl, machine, source.data_level)
    # Never the copy of an image of a wiped device (the copy's record is its original's).
    defaults = {v["id"] for v in default_restore_points(list(good.values()))}
    usable = [s for s in found if (view := backup_of(s, good)) is None or view["id"] in defaults]
    if not usable:
        raise UsageError(
            f"copy level {source.of.name} of {machine.qualified_name} holds no snapshots yet"
            if not found
            else f"copy level {source.of.name} of {machine.qualified_name} holds only images of "
            "a wiped device"
        )
    found = usable
    return with_record(found[-1], good)


def _transport(ctl: Controller, machine: Machine, level: Level) -> Transport:
    """The machine's transport, or with ``where = "controller"`` the controller itself (with
    the restic on its PATH), where the repository must then be reachable."""
    if level.where != "controller":
        return ctl.transport(machine)
    here = dataclasses.replace(machine, transport="local", restic="restic")
    return ctl.plugins["transports"].get("local")(here, ctl.secrets)  # type: ignore[no-any-return]


def run_drill(
    ctl: Controller,
    machine: Machine,
    level: Level,
    *,
    trigger: str = "manual",
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run one restore drill of the verify ``level`` as a recorded run; return its view.

    ``seed`` draws the sample again as a recorded drill drew it (default: a new random seed).
    Raise MachineBusy if another run holds the machine (nothing is recorded then).
    """
    client = ctl.policies.clients[machine.client]
    start = {
        "client": client.id,
        "machine": machine.name,
        "level": level.name,
        "kind": level.kind,
        "action": "verify",
        "trigger": trigger,
        "engineer": client.engineer,
    }
    seed = stdlib_secrets.randbelow(2**32) if seed is None else seed
    with machine_lock(ctl.state_dir, machine), recorded_run(ctl.log, **start) as run:
        source = drill_source(ctl, machine, level)
        subset = check_subset(ctl, machine, level)
        with _transport(ctl, machine, level) as transport:
            engine = ctl.engine(transport, source.data_level.kind)
            target_cls = target_class(ctl, source.data_level, "scratch", transport.os_family)
            target = target_cls(engine)
            snapshot = _newest_snapshot(ctl, engine, machine, source)
            request = RestoreRequest(
                client=client.id,
                machine=machine,
                level=source.data_level,
                repository=source.repository,
                snapshot=snapshot,
                sample=level.sample if source.data_level.kind == "files" else "all",
                seed=seed,
            )
            run.outcome = _drill(target, request, subset, progress)
            run.outcome.stats.update(
                of=source.of.name, where=level.where, repository=source.repository.name
            )
            stale = _staleness(source.of, client.timezone, snapshot, run.outcome.stats)
            if stale:
                run.outcome.state = "failed"
                run.outcome.error = "; ".join(filter(None, [stale, run.outcome.error]))
    return run.view


def _drill(
    target: RestoreTarget, request: RestoreRequest, subset: str, progress: ProgressCallback | None
) -> Outcome:
    """Plan, restore, compare and clean up; then check the repository. Return the outcome."""
    plan = target.plan(request)
    stats: dict[str, Any] = {
        "target": plan.target,
        "snapshot_time": request.snapshot.time,
        "seed": request.seed,
        "sample": request.sample,
        "sample_size": plan.files_total,
        "files_in_snapshot": plan.details.get("files_in_snapshot", plan.files_total),
    }
    started = time.monotonic()
    try:
        stats.update(target.write(request, plan, progress))
        stats["restore_s"] = round(time.monotonic() - started, 3)
        checked = time.monotonic()
        verification = target.verify(request, plan, progress)
        stats["verify_s"] = round(time.monotonic() - checked, 3)
        stats["duration_s"] = stats["time_to_restore_s"] = round(time.monotonic() - started, 3)
    finally:
        target.cleanup(request, plan)
    for key in ("image_sha256", "stream_sha256", "fs_type", "fs_check"):
        if key in plan.details:
            stats[key] = plan.details[key]
    if "sampled" in plan.details:  # which files were tested, for the auditor (the first ones)
        stats["sampled_files"] = plan.details["sampled"][:MAX_LISTED]
    errors = [record_verification(stats, verification, request.snapshot)]
    try:
        problems = target.check_repository(request, subset)
    except RepositoryLocked as exc:
        # restic check locks the repository exclusively: while a backup writes to it, the
        # check waits for the next drill, which reads the same subset (it was not counted).
        stats["check"] = f"not run: {exc}"
        problems = None
    if problems is not None:
        stats["check_subset"] = subset
        stats["check"] = "passed" if not problems else "failed"
        if problems:
            stats["check_problems"] = problems[:MAX_LISTED]
            errors.append(f"restic check --read-data-subset {subset}: " + "; ".join(problems[:3]))
    error = "; ".join(e for e in errors if e) or None
    return Outcome("failed" if error else "succeeded", request.snapshot.short_id, stats, error)


def _staleness(of: Level, timezone: str, snapshot: Snapshot, stats: dict[str, Any]) -> str | None:
    """Record the snapshot's age in ``stats``; return the "stale backup" error, or None."""
    now = utc_now()
    taken = datetime.fromisoformat(snapshot.time).astimezone(UTC)
    stats["snapshot_age_s"] = round((now - taken).total_seconds())
    limit = freshness_limit(of, timezone, now)
    if limit is None or taken >= limit:
        return None
    stats["stale"] = True
    return (
        f"stale backup: the newest good snapshot of {of.name} ({snapshot.short_id}, taken "
        f"{taken.isoformat(timespec='seconds')}) is older than its schedule "
        f"{of.every!r} allows (not before {limit.isoformat(timespec='seconds')})"
    )
