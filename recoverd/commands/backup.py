"""Commands that back up and list restore points: ``backup``, ``snapshots``."""

from __future__ import annotations

import argparse
import sys

from recoverd import clock
from recoverd.actions.backup import backup_levels, backup_machine
from recoverd.actions.due import copies_not_due
from recoverd.alerts import notify_after_manual_runs
from recoverd.commands import ENGINEER_HELP, AddCommand
from recoverd.controller import Controller
from recoverd.errors import UsageError
from recoverd.log import RunFilter
from recoverd.output import emit_json, format_table, human_bytes, local_time, run_result
from recoverd.progress import ProgressLine
from recoverd.runs import exit_code
from recoverd.text import visible


def cmd_backup(ctl: Controller, args: argparse.Namespace) -> int:
    machine = ctl.policies.find_machine(args.machine)
    levels = backup_levels(machine, args.level)
    if args.accept_change and not args.level:
        raise UsageError("--accept-change is for one image level: name it with --level")
    held = {} if args.level else copies_not_due(ctl, machine, levels, clock.now())
    levels = [level for level in levels if level.name not in held]
    progress = None if args.json else ProgressLine
    views = (
        backup_machine(
            ctl,
            machine,
            levels,
            progress=progress,
            engineer=args.engineer,
            accept_change=args.accept_change,
        )
        if levels
        else []
    )
    if args.notify:
        notify_after_manual_runs(ctl, machine, views)
    zone = ctl.policies.clients[machine.client].timezone
    for name, duty in held.items():
        when = f"next {local_time(duty.run_at.isoformat(), zone)}" if duty.run_at else "later"
        print(
            f"{machine.name} {name} copy: not due ({when}); run it now with "
            f"`recoverd backup {machine.qualified_name} --level {name}`",
            file=sys.stderr,
        )
    for view in views:
        if args.json:
            emit_json(view)
        else:
            print(
                f"{view['machine']} {view['level']} {view['action']}: {view['state']} "
                f"{visible(run_result(view))} (run {view['id']}, "
                f"{local_time(view['finished_at'], zone)})"
            )
            for warning in (view["stats"] or {}).get("warnings") or []:
                print(f"  warning: {visible(warning)}")
    return exit_code(views)


def cmd_snapshots(ctl: Controller, args: argparse.Namespace) -> int:
    machine = ctl.policies.find_machine(args.machine)
    levels = backup_levels(machine, args.level)
    client = ctl.policies.clients[machine.client]
    backups = {
        v["snapshot"]: v["stats"]
        for v in ctl.log.runs(RunFilter(client=client.id, machine=machine.name, action="backup"))
        if v["snapshot"]
    }
    rows = []
    with ctl.transport(machine) as transport:
        # A Windows image level has no repository: it is listed by its target.
        repositories = {lv.repository or lv.target: lv for lv in levels}
        for name in sorted(repositories):
            level = repositories[name]
            engine = ctl.engine(transport, level.kind)
            only = args.level
            repository = ctl.policies.repository_for(machine, level)
            for snap in engine.snapshots(client.id, machine, repository, only):
                stats = backups.get(snap.short_id) or backups.get(snap.id) or {}
                files = snap.files if snap.files is not None else stats.get("files_processed")
                size = snap.size if snap.size is not None else stats.get("bytes_processed")
                record = {
                    "id": snap.id,
                    "short_id": snap.short_id,
                    "time": snap.time,
                    "level": snap.level,
                    "repository": name,
                    "paths": list(snap.paths),
                    "files": files,
                    "size": size,
                }
                rows.append(record)
    rows.sort(key=lambda r: r["time"])
    if args.json:
        emit_json(rows)
        return 0
    print(
        format_table(
            ["TIME", "LEVEL", "SNAPSHOT", "FILES", "SIZE", "REPOSITORY"],
            [
                [
                    local_time(r["time"], client.timezone),
                    r["level"],
                    r["short_id"],
                    r["files"],
                    human_bytes(r["size"]),
                    r["repository"],
                ]
                for r in rows
            ],
        )
    )
    return 0


def register(add: AddCommand) -> None:
    p = add("backup", cmd_backup, "run a machine's backup levels now")
    p.add_argument("machine", help="machine name, or client/machine")
    p.add_argument("--level", help="only this level")
    p.add_argument("--engineer", help=ENGINEER_HELP)
    p.add_argument(
        "--notify", action="store_true", help="send failed/resolved messages as scheduled runs do"
    )
    p.add_argument(
        "--accept-change",
        action="store_true",
        help="image the level's device even if it lost the file system of its last good image "
        "or is all zeros (recorded)",
    )
    p = add("snapshots", cmd_snapshots, "list a machine's restore points")
    p.add_argument("machine", help="machine name, or client/machine")
    p.add_argument("--level", help="only this level")
