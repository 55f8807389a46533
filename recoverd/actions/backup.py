"""Back up a machine's levels now: one recorded run per level, then its retention.

Orchestration only: the transport reaches the machine, the engine runs the backup tool, the
maintenance log records what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from recoverd.controller import Controller
from recoverd.engine import BackupRequest, CopyRequest, Engine, Outcome, Progress
from recoverd.errors import RecoverdError, RepositoryLocked, UsageError, unexpected
from recoverd.locks import machine_lock
from recoverd.log import RunFilter
from recoverd.log.maintenance import utc_now
from recoverd.policy.model import BACKUP_KINDS, Level, Machine, Repository
from recoverd.restore_points import default_restore_points
from recoverd.runs import recorded_run

PRUNE_INTERVAL = timedelta(days=7)
"""A repository is pruned at most this often (prune rewrites packs: slow and heavy)."""

T = TypeVar("T")
ProgressFactory = Callable[[str], Callable[[Progress], None]]
ExclusiveGate = Callable[[str], AbstractContextManager[object]]
"""Given ``client/repository``, a context in which nothing else writes to that repository."""


def backup_levels(machine: Machine, level_name: str | None = None) -> list[Level]:
    """Return the levels ``recoverd backup`` runs: the one named, or every backup level.

    Copy levels come after the levels they copy.

    Raise UsageError if the named level does not exist or is not a backup level.
    """
    if level_name is None:
        levels = [lv for lv in machine.levels if lv.kind in BACKUP_KINDS]
        if not levels:
            raise UsageError(f"{machine.qualified_name} has no backup levels")
        # Copies last, so that they take the snapshots this very command makes.
        return sorted(levels, key=lambda lv: lv.kind == "copy")
    level = machine.level(level_name)
    if level is None:
        names = ", ".join(lv.name for lv in machine.levels) or "none"
        raise UsageError(f"{machine.qualified_name} has no level {level_name!r} (levels: {names})")
    if level.kind not in BACKUP_KINDS:
        raise UsageError(
            f"level {level_name!r} is a {level.kind} level; "
            f"use `recoverd {'verify' if level.kind == 'verify' else 'backup'}`"
        )
    return [level]


def backup_machine(
    ctl: Controller,
    machine: Machine,
    levels: list[Level],
    *,
    trigger: str = "manual",
    progress: ProgressFactory | None = None,
    exclusive: ExclusiveGate | None = None,
    accept_change: bool = False,
) -> list[dict[str, Any]]:
    """Back up (or copy) ``levels`` of ``machine`` over one connection; return the runs' views.

    The machine's lock is held throughout, so no other run (of this or another recoverd
    process) works on it at the same time. A machine that cannot be reached still gets one
    failed run per level, with the reason. ``exclusive(repository_key)`` is entered around a
    level's retention, which must not run beside another writer of the repository (the
    daemon's gate; a manual backup relies on restic's own repository locks).
    ``accept_change``: image a device even if it no longer looks like its last good image.

    Raise MachineBusy if another run holds the machine's lock (nothing is recorded then).
    """
    client = ctl.policies.clients[machine.client]
    common = {
        "client": client.id,
        "machine": machine.name,
        "trigger": trigger,
        "engineer": client.engineer,
    }

    def start(level: Level) -> dict[str, Any]:
        return {
            **common,
            "level": level.name,
            "kind": level.kind,
            "action": level_action(level),
            "repository": written_repository(level),
        }

    views = []
    with machine_lock(ctl.state_dir, machine):
        try:
            transport = ctl.transport(machine)  # no such transport plugin: recorded too
            transport.open()
        except Exception as exc:  # a transport plugin that cannot even be made: recorded too
            error = exc if isinstance(exc, RecoverdError) else unexpected(exc, "cannot connect")
            for level in levels:
                with recorded_run(ctl.log, **start(level)) as run:
                    raise error from None
                views.append(run.view)
            return views
        try:
            for level in levels:
                with recorded_run(ctl.log, **start(level)) as run:
                    engine = ctl.engine(transport, level.kind)
                    report = progress(f"{machine.name} {level.name}") if progress else None
                    try:
                        if level.kind == "copy":
                            run.outcome = engine.copy(copy_request(ctl, machine, level))
                        else:
                            request = backup_request(
                                ctl, machine, level, accept_change=accept_change
                            )
                            backup = partial(engine.backup, request, report)
                            run.outcome = after_stale_locks(engine, request.repository, backup)
                    finally:
                        if report is not None and hasattr(report, "done"):
                            report.done()
                views.append(run.view)
                if level.keep and run.view["state"] in ("succeeded", "partial"):
                    request = retention_request(ctl, machine, level)
                    key = f"{client.id}/{request.repository.name}"
                    with exclusive(key) if exclusive else nullcontext():
                        views.append(apply_retention(ctl, engine, request, start(level)))
        finally:
            transport.close()
    return views


def level_action(level: Level) -> str:
    """Return the log's ``action`` for a run of ``level``: backup, copy or verify."""
    return {"copy": "copy", "verify": "verify"}.get(level.kind, "backup")


def written_repository(level: Level) -> str | None:
    """Return the name of the repository a run of ``level`` writes to (None for verify).

    A wbadmin image level writes to its ``target`` (a drive or share), not a repository.
    """
    return level.to if level.kind == "copy" else level.repository or level.target


def backup_request(
    ctl: Controller, machine: Machine, level: Level, *, accept_change: bool = False
) -> BackupRequest:
    """Return the request to back up a files or image ``level`` of ``machine``; an image
    level's carries its last good image that is a default restore point (what the device is
    compared with before it is imaged)."""
    repository = ctl.policies.repository_for(machine, level)
    baseline = None
    if level.kind == "image":
        good = ctl.log.good_backups(machine.client, machine.name, level.name)
        baseline = next(reversed(default_restore_points(good)), None)
    return BackupRequest(
        machine.client, machine, level, repository, baseline=baseline, accept_change=accept_change
    )


def copy_request(ctl: Controller, machine: Machine, level: Level) -> CopyRequest:
    """Return the request to copy the snapshots of a copy ``level``'s ``of`` level."""
    of = machine.level(level.of or "")
    if of is None:  # the policy loader rejects this; a guard for hand-built policies
        raise UsageError(
            f"copy level {level.name!r} of {machine.qualified_name}: no level {level.of!r}"
        )
    repositories = ctl.policies.clients[machine.client].repositories
    source = ctl.policies.repository_for(machine, of)
    return CopyRequest(machine.client, machine, level, of, source, repositories[level.to or ""])


def retention_request(ctl: Controller, machine: Machine, level: Level) -> BackupRequest:
    """Return the request whose ``keep`` retention follows a good run of ``level``.

    A copy level's snapshots keep the tags of the level they copy, so its ``keep`` is applied
    to those tags in the target repository.
    """
    if level.kind != "copy":
        return backup_request(ctl, machine, level)
    request = copy_request(ctl, machine, level)
    return BackupRequest(
        machine.client, machine, replace(request.of, keep=level.keep), request.target
    )


def apply_retention(
    ctl: Controller, engine: Engine, request: BackupRequest, start: dict[str, Any]
) -> dict[str, Any]:
    """Forget the level's snapshots beyond ``keep``; prune the repository if a week is up.

    Recorded as its own run (action ``prune``) so that a failed retention never hides a
    good backup, nor a good backup a failed retention.
    """
    repository = request.repository
    last_prune = [
        v
        for v in ctl.log.runs(
            RunFilter(
                client=request.client,
                action="prune",
                state="succeeded",
                since=utc_now() - PRUNE_INTERVAL,
            )
        )
        if v["repository"] == repository.name and (v["stats"] or {}).get("pruned")
    ]
    with recorded_run(ctl.log, **{**start, "action": "prune"}) as run:
        outcome = after_stale_locks(engine, repository, partial(engine.forget, request))
        outcome.stats["pruned"] = False
        if not last_prune:
            pruned = engine.prune(request.client, request.machine, repository)
            outcome.stats["pruned"] = True
            outcome.stats["prune_duration_s"] = pruned.stats.get("duration_s")
        run.outcome = outcome
    return run.view


def after_stale_locks(engine: Engine, repository: Repository, operation: Callable[[], T]) -> T:
    """Given an engine operation on ``repository``, run it; if the repository is locked, remove
    the locks whose owner is gone (a restic killed with its connection or controller) and, if
    there were any, run it once more. Return its result.

    Raise RepositoryLocked if a live process holds the lock (its lock is never removed) or the
    engine cannot tell stale locks (it has no ``remove_stale_locks``).
    """
    try:
        return operation()
    except RepositoryLocked:
        remove = getattr(engine, "remove_stale_locks", None)
        removed = remove(repository) if remove is not None else 0
        if not removed:
            raise
    result = operation()
    if isinstance(result, Outcome):
        result.stats["stale_locks_removed"] = removed
    return result
