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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from recoverd.actions.backup import after_stale_locks, ask_lock_owners, offline_outcome
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
from recoverd.errors import RepositoryLocked, Unreachable, UsageError
from recoverd.locks import RepositoryTurns, machine_lock
from recoverd.log import RunFilter
from recoverd.log.maintenance import utc_now
from recoverd.people import engineer_of_run, provider_engineers
from recoverd.policy.model import Level, Machine, Repository
from recoverd.policy.schedule import Schedule
from recoverd.restore import RestoreRequest, RestoreTarget
from recoverd.restore_points import default_restore_points
from recoverd.runs import recorded_run
from recoverd.transport import Transport
from recoverd.wake import wake_and_connect

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


def repository_turns(ctl: Controller, client: str, repository: Repository) -> RepositoryTurns:
    """Return the turns drills take on ``repository``, with its check rotation: where there
    is none yet, it goes on from the checks of its drills in the maintenance log."""

    def checks_in_the_log() -> int:
        earlier = ctl.log.runs(RunFilter(client=client, action="verify"))
        return sum(
            1
            for v in earlier
            if (v["stats"] or {}).get("check_subset")
            and (v["stats"] or {}).get("repository") == repository.name
        )

    return RepositoryTurns(ctl.state_dir, f"{client}/{repository.name}", checks_in_the_log)


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
    engineer: str | None = None,
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
        "engineer": engineer_of_run(
            trigger, engineer, client.engineer, provider_engineers(ctl.policies)
        ),
    }
    seed = stdlib_secrets.randbelow(2**32) if seed is None else seed
    with machine_lock(ctl.state_dir, machine), recorded_run(ctl.log, **start) as run:
        source = drill_source(ctl, machine, level)
        turns = repository_turns(ctl, client.id, source.repository)
        transport = _transport(ctl, machine, level)
        try:
            woken = wake_and_connect(ctl, machine, transport) if level.where != "controller" else {}
        except Unreachable as exc:
            if machine.offline != "skip" or level.where == "controller":
                raise
            run.outcome = offline_outcome(ctl, machine, level, exc)
            transport = None
        if transport is not None:
            with transport:
                run.outcome = _drill_over(
                    ctl, machine, level, source, turns, transport, seed, progress
                )
                if woken:
                    run.outcome.stats["wake"] = woken
    return run.view


def _drill_over(
    ctl: Controller,
    machine: Machine,
    level: Level,
    source: DrillSource,
    turns: RepositoryTurns,
    transport: Transport,
    seed: int,
    progress: ProgressCallback | None,
) -> Outcome:
    """Run the drill over the connected ``transport``; return its outcome."""
    client = ctl.policies.clients[machine.client]
    transport.stall_after = machine.stall_after_for(level)
    engine = ctl.engine(transport, source.data_level.kind)
    destination = "boot" if level.boot else "scratch"
    target_cls = target_class(ctl, source.data_level, destination, transport.os_family)
    target = target_cls(engine)
    # Other drills of the repository restore meanwhile; its check runs alone.
    with turns.turn(alone=False):
        snapshot = _newest_snapshot(ctl, engine, machine, source)
        request = RestoreRequest(
            client=client.id,
            machine=machine,
            level=source.data_level,
            repository=source.repository,
            snapshot=snapshot,
            sample=level.sample if source.data_level.kind == "files" else "all",
            seed=seed,
            drill=level,
            evidence_dir=str(ctl.state_dir / "evidence" / client.id / machine.name),
        )
        stats = _restore_and_compare(target, request, progress)
    owners = partial(ask_lock_owners, ctl, machine, source.repository)
    outcome = _check_in_turn(target, request, turns, stats, owners)
    outcome.stats.update(of=source.of.name, where=level.where, repository=source.repository.name)
    stale = _staleness(source.of, client.timezone, snapshot, outcome.stats)
    if stale:
        outcome.state = "failed"
        outcome.error = "; ".join(filter(None, [stale, outcome.error]))
    return outcome


def _restore_and_compare(
    target: RestoreTarget, request: RestoreRequest, progress: ProgressCallback | None
) -> dict[str, Any]:
    """Plan, restore, compare and clean up; return the stats, with ``verification_error``
    (None when everything matched)."""
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
    stats.update({k: v for k, v in plan.details.items() if k.startswith("boot_")})
    stats.update({k: v for k, v in plan.details.items() if k.startswith("boot_")})
    if "sampled" in plan.details:  # which files were tested, for the auditor (the first ones)
        stats["sampled_files"] = plan.details["sampled"][:MAX_LISTED]
    stats["verification_error"] = record_verification(stats, verification, request.snapshot)
    return stats


def _check_in_turn(
    target: RestoreTarget,
    request: RestoreRequest,
    turns: RepositoryTurns,
    stats: dict[str, Any],
    owners: Callable[[set[str]], list[dict[str, Any]]],
) -> Outcome:
    """Check the repository when no other drill uses it: the next ``n/N`` part of its data.
    Return the drill's outcome: failed if the restore or the check found problems, partial if
    the check could not run (the repository was locked by a backup, say), else succeeded."""
    errors = [stats.pop("verification_error")]
    problems: list[str] | None = None
    with turns.turn(alone=True):
        done = turns.checks_done()
        subset = f"{done % CHECK_SUBSETS + 1}/{CHECK_SUBSETS}"
        check = partial(target.check_repository, request, subset)
        try:
            engine = getattr(target, "engine", None)
            problems = after_stale_locks(engine, request.repository, check, owners)
        except RepositoryLocked as exc:
            # restic check locks the repository exclusively: while a backup writes to it, the
            # check waits for the next drill, which reads the same subset (it was not counted).
            stats["check"] = f"not run: {exc}"
        else:
            turns.checked(done + 1)
    if problems is not None:
        stats["check_subset"] = subset
        stats["check"] = "passed" if not problems else "failed"
        if problems:
            stats["check_problems"] = problems[:MAX_LISTED]
            errors.append(f"restic check --read-data-subset {subset}: " + "; ".join(problems[:3]))
    error = "; ".join(e for e in errors if e) or None
    if error:
        state = "failed"
    elif problems is None:
        state, error = "partial", f"the repository check did not run ({stats['check']})"
    else:
        state = "succeeded"
    return Outcome(state, request.snapshot.short_id, stats, error)


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
