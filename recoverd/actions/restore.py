"""One-click restore: pick the level, snapshot and restore target, plan, then restore and
verify as one recorded run (a service record: symptom, who reported it, the engineer).

Orchestration only: the restore target (a plugin) plans, writes and verifies through the
level's engine; this module chooses them, times the work and writes the maintenance log.
Nothing is recorded before the engineer has confirmed: a plan, a refusal or a dry run changes
nothing anywhere.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from recoverd.controller import Controller
from recoverd.engine import Engine, Outcome, ProgressCallback, Snapshot
from recoverd.errors import EngineError, RecoverdError, TransportError, UsageError, unexpected
from recoverd.locks import machine_lock
from recoverd.people import engineer_of_run, provider_engineers
from recoverd.policy.model import Level, Machine
from recoverd.restore import RestorePlan, RestoreRequest, RestoreTarget, Verification
from recoverd.restore_points import default_restore_points
from recoverd.runs import recorded_run
from recoverd.transport import Transport

MAX_LISTED = 100


@dataclass(frozen=True)
class RestoreOrder:
    """What the engineer asked for on the command line."""

    machine: str
    level: str | None = None
    snapshot: str | None = None
    to: str | None = None
    in_place: bool = False
    device: str | None = None
    items: tuple[str, ...] = ()
    """What to recover from a Windows system image (``--item``)."""
    symptom: str | None = None
    reported_by: str | None = None
    engineer: str | None = None
    verify: str | None = None
    """``--verify``: how a files restore is checked (None: the target's default)."""
    replace_links: bool = False
    """``--replace-links``: replace symbolic links where the snapshot has folders."""

    @property
    def destination_kind(self) -> str:
        """``device``, ``path`` or ``in-place``."""
        # An empty --to or --device is a destination too (refused as such), never "in place".
        if self.device is not None:
            return "device"
        if self.to is not None:
            return "path"
        return "in-place"


def restore_level(machine: Machine, order: RestoreOrder) -> Level:
    """Return the level to restore from: the one named, else the first level of the kind the
    options imply (``--device`` or ``--item``: an image, ``--in-place``: files) or the
    machine's ``restore``.

    Raise UsageError if there is no such level or it holds no restorable snapshots.
    """
    if order.level:
        level = machine.level(order.level)
        if level is None:
            names = ", ".join(lv.name for lv in machine.levels) or "none"
            raise UsageError(f"{machine.qualified_name} has no level {order.level!r} ({names})")
        if level.kind not in ("files", "image"):
            raise UsageError(f"level {level.name} is a {level.kind} level: nothing to restore")
        if order.items and level.kind != "image":
            raise UsageError(f"--item recovers from a system image; {level.name} is a files level")
        return level
    if order.device is not None or order.items:
        kind = "image"
    elif order.in_place:
        kind = "files"
    else:
        kind = "image" if machine.restore == "image" else "files"
    level = next((lv for lv in machine.levels if lv.kind == kind), None)
    if level is None:
        raise UsageError(f"{machine.qualified_name} has no {kind} level to restore from")
    return level


def target_class(
    ctl: Controller, level: Level, destination_kind: str, os_family: str = "posix"
) -> type[RestoreTarget]:
    """Return the restore target plugin for this kind of level and destination on this kind
    of machine; of several, the one registered last (third-party plugins register after the
    built-ins).

    Raise UsageError if no loaded plugin restores it there.
    """
    for cls in reversed(ctl.plugins["restore_targets"].entries.values()):
        if (
            level.kind in cls.kinds
            and destination_kind in cls.destinations
            and os_family in cls.os_families
        ):
            return cls  # type: ignore[no-any-return]
    options = {"device": "--device", "path": "--to", "in-place": "--in-place"}
    raise UsageError(
        f"no restore target restores {level.kind} snapshots with "
        f"{options.get(destination_kind, destination_kind + ' drills')} "
        f"on {os_family} machines (see `recoverd plugins`)"
    )


def verify_mode(target_cls: type[RestoreTarget], wanted: str | None) -> str | None:
    """Return how the restore is verified: ``wanted`` (``--verify``), else the target's
    default; None for targets with a check of their own (images).

    Raise UsageError if the target does not offer ``wanted``.
    """
    if wanted is None or wanted in target_cls.verify_modes:
        return wanted or next(iter(target_cls.verify_modes), None)
    raise UsageError(
        f"--verify {wanted} is for files restores; the {target_cls.name} restore target "
        "verifies in its own way (leave --verify out)"
    )


def good_backups(ctl: Controller, machine: Machine, level: Level) -> dict[str, dict[str, Any]]:
    """Return the level's successful backup runs in the maintenance log by their snapshot id."""
    return {
        v["snapshot"]: v for v in ctl.log.good_backups(machine.client, machine.name, level.name)
    }


def with_record(snapshot: Snapshot, good: dict[str, dict[str, Any]]) -> Snapshot:
    """Given a snapshot and :func:`good_backups`, return the snapshot with the stats the log
    recorded for the backup that made it (``record``: an image's sha256), or for the one it was
    copied from; the snapshot as it is if the log records neither."""
    view = backup_of(snapshot, good)
    return replace(snapshot, record=view["stats"] or {}) if view else snapshot


def backup_of(snapshot: Snapshot, good: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Given a snapshot and :func:`good_backups`, return the good backup run that made it (or
    the one it was copied from), None if the log records neither."""
    ids = [snapshot.id, snapshot.short_id]
    if snapshot.original:
        ids += [snapshot.original, snapshot.original[:8]]
    return next((good[i] for i in ids if i in good), None)


def choose_snapshot(
    ctl: Controller, engine: Engine, machine: Machine, level: Level, wanted: str | None
) -> Snapshot:
    """Return the snapshot named by ``wanted`` (an id or its prefix), else the newest one that
    the maintenance log records as a successful backup of the level and that may be a default
    (never the image of a wiped device: :func:`default_restore_points`). A snapshot the log
    records carries that backup's stats (``record``).

    The engine is asked for that one snapshot first (for restic one ``ls``, whose listing the
    plan then reuses); only if it is not there are all the level's snapshots listed.

    Raise UsageError if there is none.
    """
    repository = ctl.policies.repository_for(machine, level)
    good = good_backups(ctl, machine, level)
    defaults = {v["snapshot"]: v for v in default_restore_points(list(good.values()))}
    asked = wanted or next(reversed(defaults), None)  # the newest good backup
    if asked:
        found = engine.snapshot(machine.client, machine, repository, level.name, asked)
        if found is not None:
            return with_record(found, good)
    snapshots = engine.snapshots(machine.client, machine, repository, level.name)
    if wanted:
        found_all = [s for s in snapshots if s.id.startswith(wanted)]
        if len(found_all) != 1:
            problem = "matches several snapshots" if found_all else "is not a snapshot"
            raise UsageError(
                f"{wanted!r} {problem} of level {level.name} of {machine.qualified_name} "
                f"(see `recoverd snapshots {machine.qualified_name} --level {level.name}`)"
            )
        return with_record(found_all[0], good)
    for snapshot in reversed(snapshots):
        if snapshot.id in defaults or snapshot.short_id in defaults:
            return with_record(snapshot, good)
    if snapshots:
        left_out = len(good) - len(defaults)
        why = (
            f" ({left_out} good image(s) of a wiped device are never taken by default)"
            if left_out
            else ""
        )
        raise UsageError(
            f"none of the {len(snapshots)} snapshot(s) of level {level.name} is recorded as a "
            f"successful backup in this maintenance log{why}; pick one with --snapshot ID"
        )
    raise UsageError(f"level {level.name} of {machine.qualified_name} has no snapshots yet")


def record_verification(
    stats: dict[str, Any], verification: Verification, snapshot: Snapshot
) -> str | None:
    """Put ``verification`` into a run's ``stats`` (files_verified, mismatches and the first
    MAX_LISTED differences as ``mismatched``); return the run's error, None if it passed."""
    stats["verification"] = "passed" if verification.ok else "failed"
    stats["verification_method"] = verification.method
    stats["files_verified"] = verification.checked
    stats["mismatches"] = len(verification.mismatches)
    if verification.ok:
        return None
    stats["mismatched"] = verification.mismatches[:MAX_LISTED]
    shown = "; ".join(verification.mismatches[:5])
    more = " ..." if len(verification.mismatches) > 5 else ""
    return (
        f"verification failed: {len(verification.mismatches)} difference(s) from "
        f"snapshot {snapshot.short_id}: {shown}{more}"
    )


class PreparedRestore(AbstractContextManager["PreparedRestore"]):
    """A planned restore with its connection open: show ``plan``, then :meth:`run` it."""

    def __init__(self, ctl: Controller, order: RestoreOrder) -> None:
        self.ctl = ctl
        self.order = order
        self.machine = ctl.policies.find_machine(order.machine)
        self.client = ctl.policies.clients[self.machine.client]
        self.level = restore_level(self.machine, order)
        os_family = ctl.plugins["transports"].get(self.machine.transport).os_family
        self.target_cls = target_class(ctl, self.level, order.destination_kind, os_family)
        if order.items and not self.target_cls.takes_items:
            raise UsageError(
                f"--item is not for the {self.target_cls.name} restore target: it restores the "
                "whole snapshot"
            )
        self.verify_mode = verify_mode(self.target_cls, order.verify)
        self.transport: Transport = ctl.transport(self.machine)
        self.transport.open()
        try:
            engine = ctl.engine(self.transport, self.level.kind)
            self.target = self.target_cls(engine)
            snapshot = choose_snapshot(ctl, engine, self.machine, self.level, order.snapshot)
            self.request = RestoreRequest(
                client=self.client.id,
                machine=self.machine,
                level=self.level,
                repository=ctl.policies.repository_for(self.machine, self.level),
                snapshot=snapshot,
                destination=order.device if order.device is not None else order.to,
                items=order.items,
                replace_links=order.replace_links,
                **({"verify": self.verify_mode} if self.verify_mode else {}),
            )
            self.plan: RestorePlan = self.target.plan(self.request)
        except BaseException:
            self.transport.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.transport.close()

    def run(self, progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Restore and verify as one recorded run; return its view.

        A verification mismatch ends the run ``failed`` and names what differs.
        """
        order, plan = self.order, self.plan
        start = {
            "client": self.client.id,
            "machine": self.machine.name,
            "level": self.level.name,
            "kind": self.level.kind,
            "action": "restore",
            "trigger": "manual",
            "engineer": engineer_of_run(
                "manual", order.engineer, None, provider_engineers(self.ctl.policies)
            ),
            "reported_by": order.reported_by,
            "symptom": order.symptom,
            "repository": self.level.repository,
        }
        # Never beside another run of ours on the machine (a backup reading what we overwrite).
        with (
            machine_lock(self.ctl.state_dir, self.machine),
            recorded_run(self.ctl.log, **start) as run,
        ):
            started = time.monotonic()
            stats: dict[str, Any] = {
                "target": plan.target,
                "destination": plan.destination,
                "snapshot_time": self.request.snapshot.time,
                "files_replaced": len(plan.replaced),
                "files_created": len(plan.created),
                **plan.details,
            }
            if self.verify_mode:
                stats["verify"] = self.verify_mode
            try:
                stats.update(self.target.write(self.request, plan, progress))
            except (TransportError, EngineError) as exc:
                raise self._not_restored(exc) from None
            except Exception as exc:  # unforeseen: recorded as failed, naming what is not back
                raise self._not_restored(unexpected(exc, "restore stopped")) from exc
            stats["restore_s"] = round(time.monotonic() - started, 3)
            checked = time.monotonic()
            verification = self.target.verify(self.request, plan, progress)
            stats["verify_s"] = round(time.monotonic() - checked, 3)
            stats["duration_s"] = stats["time_to_restore_s"] = round(time.monotonic() - started, 3)
            error = record_verification(stats, verification, self.request.snapshot)
            state = "succeeded" if verification.ok else "failed"
            run.outcome = Outcome(state, self.request.snapshot.short_id, stats, error)
        return run.view

    def _not_restored(self, exc: RecoverdError) -> RecoverdError:
        """Given the error that cut the restore short, return it naming the files that are not
        (or not wholly) back, found by verifying over a new connection; return it as it is if
        that cannot be done (the machine stays unreachable) or every file is back.
        """
        try:
            self.transport.close()
            self.transport.open()
            # Compare in full: a file cut short may already have its final size.
            request = replace(self.request, verify="full") if self.verify_mode else self.request
            verification = self.target.verify(request, self.plan, None)
        except RecoverdError:
            return exc
        if verification.ok:
            return exc
        missing = verification.mismatches
        shown = "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        return type(exc)(
            f"{exc}; {len(missing)} of {verification.checked} file(s) not restored: {shown}"
        )
