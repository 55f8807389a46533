"""Back up a machine's levels now: one recorded run per level, then its retention.

Orchestration only: the transport reaches the machine, the engine runs the backup tool, the
maintenance log records what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from recoverd.controller import Controller
from recoverd.engine import BackupRequest, CopyRequest, Engine, Outcome, Progress
from recoverd.errors import RecoverdError, RepositoryLocked, Unreachable, UsageError, unexpected
from recoverd.locks import machine_lock
from recoverd.log import RunFilter
from recoverd.log.maintenance import utc_now
from recoverd.people import engineer_of_run, provider_engineers
from recoverd.policy.model import BACKUP_KINDS, Level, Machine, Repository
from recoverd.restore_points import default_restore_points
from recoverd.runs import recorded_run
from recoverd.wake import wake_and_connect

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
    engineer: str | None = None,
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
        "engineer": engineer_of_run(
            trigger, engineer, client.engineer, provider_engineers(ctl.policies)
        ),
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
            woken = wake_and_connect(ctl, machine, transport)
        except Unreachable as exc:
            for level in levels:
                with recorded_run(ctl.log, **start(level)) as run:
                    if machine.offline != "skip":
                        raise exc
                    run.outcome = offline_outcome(ctl, machine, level, exc)
                views.append(run.view)
            return views
        except Exception as exc:  # a transport plugin that cannot even be made: recorded too
            error = exc if isinstance(exc, RecoverdError) else unexpected(exc, "cannot connect")
            for level in levels:
                with recorded_run(ctl.log, **start(level)) as run:
                    raise error from None
                views.append(run.view)
            return views
        try:
            for level in levels:
                transport.stall_after = machine.stall_after_for(level)
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
                            owners = partial(ask_lock_owners, ctl, machine, request.repository)
                            run.outcome = after_stale_locks(
                                engine, request.repository, backup, owners
                            )
                    finally:
                        if report is not None and hasattr(report, "done"):
                            report.done()
                    if woken and run.outcome is not None:
                        run.outcome.stats["wake"] = woken
                    if level.kind == "files" and run.outcome is not None:
                        note_anomaly(ctl, machine, level, run.outcome)
                views.append(run.view)
                if level.keep and run.view["state"] in ("succeeded", "partial"):
                    request = retention_request(ctl, machine, level)
                    key = f"{client.id}/{request.repository.name}"
                    with exclusive(key) if exclusive else nullcontext():
                        views.append(apply_retention(ctl, engine, request, start(level)))
        finally:
            transport.close()
    return views


def offline_outcome(ctl: Controller, machine: Machine, level: Level, exc: Unreachable) -> Outcome:
    """Return the ``skipped`` outcome of a run of an unreachable ``offline = "skip"`` machine.

    Its stats say since when the machine is offline (the first of the skipped runs in a row)
    and whether that is longer than ``alert_after`` (``offline_alert``: one ``offline`` event
    is due). ``transient``: the daemon tries again within the slot, as after a failure.
    """
    now = utc_now()
    since = now
    last = ctl.log.last_run(machine.client, machine.name, level.name, "skipped")
    if last is not None and (last["stats"] or {}).get("offline"):
        # The same incident if every run of the level since then was offline too (this one
        # is running).
        where = RunFilter(
            client=machine.client,
            machine=machine.name,
            level=level.name,
            since=datetime.fromisoformat(last["started_at"]),
        )
        if all(
            v["state"] == "running" or (v["stats"] or {}).get("offline")
            for v in ctl.log.runs(where)
        ):
            since = datetime.fromisoformat(last["stats"]["offline_since"])
    offline_for = (now - since).total_seconds()
    stats = {
        "offline": True,
        "transient": True,
        "offline_since": since.isoformat(timespec="seconds"),
        "offline_for_s": round(offline_for),
        "alert_after_s": machine.alert_after,
        "offline_alert": offline_for >= machine.alert_after,
    }
    return Outcome("skipped", None, stats, f"offline: {exc}")


ANOMALY_MIN_FILES = 20
"""Fewer files than this (now, or before a shrink) are never an anomaly: in a folder of five
files, three edited ones are 60% and mean nothing."""


def note_anomaly(ctl: Controller, machine: Machine, level: Level, outcome: Outcome) -> None:
    """Put ``stats.anomaly`` into a good files run's outcome when its new+changed files or its
    shrinking against the level's previous good backup pass the limits (possible ransomware,
    mass deletion). The first backup of a level (everything new) is no anomaly."""
    if outcome.state not in ("succeeded", "partial"):
        return
    previous = ctl.log.last_good_backup(machine.client, machine.name, level.name, utc_now())
    if previous is None:
        return
    changed = (
        level.anomaly_changed if level.anomaly_changed is not None else machine.anomaly_changed
    )
    shrink = level.anomaly_shrink if level.anomaly_shrink is not None else machine.anomaly_shrink
    found = find_anomaly(outcome.stats, previous["stats"] or {}, changed, shrink)
    if found:
        found["against"] = {
            "run": previous["id"],
            "snapshot": previous["snapshot"],
            "started_at": previous["started_at"],
        }
        outcome.stats["anomaly"] = found


def find_anomaly(
    stats: dict[str, Any], before: dict[str, Any], changed_limit: float, shrink_limit: float
) -> dict[str, Any]:
    """Given a files run's stats and those of the previous good run, return what is unusual
    (``changed``: the share of new+changed files above ``changed_limit``; ``shrunk``: files or
    bytes fewer by more than ``shrink_limit``), empty if nothing is."""
    found: dict[str, Any] = {}
    files = int(stats.get("files_processed") or 0)
    touched = int(stats.get("files_new") or 0) + int(stats.get("files_changed") or 0)
    if files >= ANOMALY_MIN_FILES and touched / files > changed_limit:
        found["changed"] = {
            "files": touched,
            "of": files,
            "share": round(touched / files, 3),
            "limit": changed_limit,
        }
    files_before = int(before.get("files_processed") or 0)
    bytes_now, bytes_before = (
        int(stats.get("bytes_processed") or 0),
        int(before.get("bytes_processed") or 0),
    )
    if files_before >= ANOMALY_MIN_FILES:
        file_drop = 1 - files / files_before
        byte_drop = 1 - bytes_now / bytes_before if bytes_before else 0.0
        if max(file_drop, byte_drop) > shrink_limit:
            found["shrunk"] = {
                "files": files,
                "files_before": files_before,
                "bytes": bytes_now,
                "bytes_before": bytes_before,
                "share": round(max(file_drop, byte_drop), 3),
                "limit": shrink_limit,
            }
    return found


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
        owners = partial(ask_lock_owners, ctl, request.machine, repository)
        outcome = after_stale_locks(engine, repository, partial(engine.forget, request), owners)
        outcome.stats["pruned"] = False
        if not last_prune:
            prune = partial(engine.prune, request.client, request.machine, repository)
            pruned = after_stale_locks(engine, repository, prune, owners)
            outcome.stats["pruned"] = True
            outcome.stats["prune_duration_s"] = pruned.stats.get("duration_s")
        run.outcome = outcome
    return run.view


def after_stale_locks(
    engine: object,
    repository: Repository,
    operation: Callable[[], T],
    owners: Callable[[set[str]], list[dict[str, Any]]] | None = None,
) -> T:
    """Given an engine operation on ``repository``, run it; if the repository is locked, remove
    the stale locks (restic's rule: not refreshed for 30 minutes, or the owner's pid proven
    gone on its host), whoever wrote them, and if there were any, run it once more. Return its
    result; an Outcome's stats name the locks removed (``stale_locks``).

    ``owners(hosts)``, given the host names of locks only their own hosts can judge, asks those
    hosts to remove their stale locks and returns what they removed (:func:`ask_lock_owners`).

    Raise RepositoryLocked if only live locks are there (a live lock is never removed) or the
    engine cannot tell stale locks (it has no ``remove_stale_locks``).
    """
    try:
        return operation()
    except RepositoryLocked:
        remove = getattr(engine, "remove_stale_locks", None)
        removed = remove(repository) if remove is not None else []
        elsewhere = getattr(engine, "lock_hosts_elsewhere", set())
        if owners is not None and elsewhere:
            removed = removed + owners(elsewhere)
        if not removed:
            raise
    result = operation()
    if isinstance(result, Outcome):
        result.stats["stale_locks_removed"] = len(removed)
        result.stats["stale_locks"] = removed
    return result


def ask_lock_owners(
    ctl: Controller, machine: Machine, repository: Repository, hosts: set[str]
) -> list[dict[str, Any]]:
    """Ask the machines of ``machine``'s client that ``hosts`` (host names in locks) name to
    remove their own stale locks of ``repository``; return the locks they removed.

    A host is asked only when exactly one other machine of the client has that name or address:
    cloned PCs share host names, and asking the wrong one proves nothing. A machine that
    cannot be reached is left alone: its locks go stale after restic's 30 minutes.
    """
    removed: list[dict[str, Any]] = []
    machines = ctl.policies.clients[machine.client].machines.values()
    for host in sorted(hosts):
        named = [
            m
            for m in machines
            if m.name != machine.name
            and host.lower() in (m.name.lower(), (m.address or "").lower())
        ]
        if len(named) != 1 or named[0].transport == "winrm":
            continue
        try:
            with ctl.transport(named[0]) as transport:
                found = ctl.engine(transport, "files").remove_stale_locks(repository)  # type: ignore[attr-defined]
        except RecoverdError:
            continue
        removed += [{**lock, "judged_by": named[0].name} for lock in found]
    return removed
