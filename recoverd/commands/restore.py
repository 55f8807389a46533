"""Commands for the engineer at a broken machine: ``restore`` and the machine ``card``."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from recoverd.actions.bare_metal import prepare_bare_metal
from recoverd.actions.restore import PreparedRestore, RestoreOrder
from recoverd.commands import ENGINEER_HELP, AddCommand
from recoverd.controller import Controller
from recoverd.errors import RestoreRefused, UsageError
from recoverd.output import emit_json, format_table, human_bytes, local_time
from recoverd.policy.model import BACKUP_KINDS, Machine
from recoverd.progress import ProgressLine
from recoverd.restore import VERIFY_MODES, RestorePlan
from recoverd.runs import exit_code
from recoverd.text import visible

LISTED = 20
"""Replaced (and created) files a plan shows by name; the rest are counted."""


def plan_record(prepared: PreparedRestore) -> dict[str, Any]:
    """Return the plan as data (what ``--json`` prints and the text is made of)."""
    plan, snapshot = prepared.plan, prepared.request.snapshot
    return {
        "machine": prepared.machine.qualified_name,
        "level": prepared.level.name,
        "kind": prepared.level.kind,
        "snapshot": snapshot.short_id,
        "snapshot_id": snapshot.id,
        "snapshot_time": snapshot.time,
        "target": plan.target,
        "source": plan.source,
        "destination": plan.destination,
        "bytes": plan.bytes_total,
        "files": plan.files_total,
        "replaced": plan.replaced[:LISTED],
        "replaced_count": len(plan.replaced),
        "created": plan.created[:LISTED],
        "created_count": len(plan.created),
        "unchanged": plan.unchanged,
        "links_found": plan.details.get("links_found", []),
        "refusal": plan.refusal,
    }


def format_plan(prepared: PreparedRestore) -> str:
    """Return the plan as the engineer reads it before confirming."""
    plan: RestorePlan = prepared.plan
    snapshot = prepared.request.snapshot
    zone = prepared.client.timezone
    lines = [
        f"Restore plan for {prepared.machine.qualified_name} ({prepared.client.name})",
        f"  snapshot   {snapshot.short_id}  {local_time(snapshot.time, zone)}  "
        f"level {prepared.level.name} ({prepared.level.kind})",
        f"  restores   {plan.source}"
        + ("" if plan.bytes_total is None else f", {human_bytes(plan.bytes_total)}"),
        f"  to         {plan.destination}  [{plan.target}]",
    ]
    if plan.details.get("destination_given"):
        lines.append(
            f"             (given as {plan.details['destination_given']}: a symbolic link)"
        )
    # A whole image replaces its destination; a recovery of some files names them.
    if prepared.level.kind == "image" and plan.replaced in ([], [plan.destination]):
        if plan.replaced:
            lines.append(f"  replaces   everything on {plan.destination}")
    else:
        lines.append(f"  replaces   {len(plan.replaced)} existing file(s) that differ")
        lines += [f"               {visible(path)}" for path in plan.replaced[:LISTED]]
        if len(plan.replaced) > LISTED:
            lines.append(f"               ... and {len(plan.replaced) - LISTED} more")
        lines.append(f"  creates    {len(plan.created)} file(s) missing now")
        lines += [f"               {path}" for path in plan.created[:LISTED]]
        if len(plan.created) > LISTED:
            lines.append(f"               ... and {len(plan.created) - LISTED} more")
        if prepared.target_cls.leaves_unchanged:
            lines.append(f"  leaves     {plan.unchanged} file(s) that match the snapshot")
        else:
            lines.append(f"  rewrites   {plan.unchanged} file(s) that look unchanged")
        links = plan.details.get("links_found", [])
        if links:
            lines.append(
                f"  links      {len(links)} symbolic link(s) where the snapshot has a folder"
            )
            lines += [f"               {link}" for link in links[:LISTED]]
    if plan.refusal:
        lines.append(f"  REFUSED    {visible(plan.refusal)}")
    return "\n".join(lines)


def confirm(question: str) -> bool | None:
    """Ask y/N on the terminal; return None when there is no terminal to ask on."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_restore(ctl: Controller, args: argparse.Namespace) -> int:
    if args.bare_metal:
        return restore_bare_metal(ctl, args)
    order = RestoreOrder(
        machine=args.machine,
        level=args.level,
        snapshot=args.snapshot,
        to=args.to,
        in_place=args.in_place,
        device=args.device,
        items=tuple(args.items),
        symptom=args.symptom,
        reported_by=args.reported_by,
        engineer=args.engineer,
        verify=args.verify,
        replace_links=args.replace_links,
    )
    with PreparedRestore(ctl, order) as prepared:
        if args.json:
            emit_json({"plan": plan_record(prepared)})
        else:
            print(format_plan(prepared))
        if prepared.plan.refusal:
            raise RestoreRefused(f"restore refused: {prepared.plan.refusal}")
        if args.dry_run:
            if not args.json:
                print("dry run: nothing was changed")
            return 0
        if not args.yes:
            answer = confirm("Restore now? This overwrites what the plan says.")
            if answer is None:
                raise RestoreRefused(
                    "no terminal to confirm on: pass --yes to restore without asking "
                    "(nothing was changed)"
                )
            if not answer:
                raise RestoreRefused("not confirmed; nothing was changed")
        progress = None if args.json else ProgressLine(f"{prepared.machine.name} restore")
        try:
            view = prepared.run(progress)
        finally:
            if progress is not None:
                progress.done()
    if args.json:
        emit_json(view)
    else:
        stats = view["stats"] or {}
        verdict = stats.get("verification", "not verified")
        how = f"{stats['verify']}, " if stats.get("verify") else ""
        took = stats.get("time_to_restore_s")
        written = (
            f"{human_bytes(stats.get('bytes_restored'))} in {took} s"
            if took is not None
            else "not restored"
        )
        print(
            f"{view['machine']} restore: {view['state']}, verification {verdict} "
            f"({how}{stats.get('files_verified', 0)} checked), {written} (run {view['id']})"
        )
        if view.get("error"):
            print(f"  {visible(view['error'])}")
    return exit_code([view])


def restore_bare_metal(ctl: Controller, args: argparse.Namespace) -> int:
    """Prepare a Windows bare-metal restore: print the WinRE steps and record the service."""
    if args.dry_run or args.items:
        raise UsageError(
            "--bare-metal writes nothing to the machine (it prints the WinRE steps and records "
            "the service): leave out --dry-run and --item"
        )
    machine = ctl.policies.find_machine(args.machine)
    prepared = prepare_bare_metal(
        ctl,
        machine,
        level_name=args.level,
        version=args.snapshot,
        symptom=args.symptom,
        reported_by=args.reported_by,
        engineer=args.engineer,
    )
    view = prepared.run
    if args.json:
        emit_json({"run": view, "version": prepared.version, "steps": prepared.steps})
        return exit_code([view])
    if not prepared.steps:
        print(f"{machine.name} bare-metal restore: {view['state']} (run {view['id']})")
        print(f"  {visible(view['error'])}")
        return exit_code([view])
    print(
        f"Bare-metal restore of {machine.qualified_name} from backup version "
        f"{prepared.version}, in the Windows Recovery Environment:"
    )
    for number, step in enumerate(prepared.steps, 1):
        print(f"{number}. {step}")
    print(f"Recorded as run {view['id']} (prepared).")
    return exit_code([view])


def machine_card(ctl: Controller, machine: Machine) -> dict[str, Any]:
    """Return the machine card: identity, levels, latest restore points (from the
    maintenance log: the card must work while the machine is down) and the restore command."""
    client = ctl.policies.clients[machine.client]
    points = []
    for level in machine.levels:
        if level.kind not in BACKUP_KINDS:
            continue
        good = ctl.log.good_backups(client.id, machine.name, level.name)
        for view in good[-3:][::-1]:
            stats = view["stats"] or {}
            points.append(
                {
                    "level": level.name,
                    "kind": level.kind,
                    "snapshot": view["snapshot"],
                    "time": view["finished_at"],
                    "size": stats.get("image_size", stats.get("bytes_processed")),
                    "run": view["id"],
                }
            )
    same_name = [m for m in ctl.policies.machines() if m.name == machine.name]
    name = machine.name if len(same_name) == 1 else machine.qualified_name
    default = "image" if machine.restore == "image" else "files"
    return {
        "machine": machine.name,
        "client": client.id,
        "client_name": client.name,
        "asset_tag": machine.asset_tag,
        "address": machine.address,
        "mac": machine.mac,
        "role": machine.role,
        "transport": machine.transport,
        "engineer": client.engineer,
        "restore_sla": client.restore_sla,
        "levels": [
            {
                "name": lv.name,
                "kind": lv.kind,
                "every": lv.every,
                "repository": lv.repository,
                "what": lv.device if lv.kind == "image" else ", ".join(lv.paths) or lv.of,
            }
            for lv in machine.levels
        ],
        "restore_points": points,
        "restore_default": machine.restore,
        "restore_command": shlex.join(["recoverd", "restore", name]),
        "restores": next((p for p in points if p["kind"] == default), None),
    }


def cmd_card(ctl: Controller, args: argparse.Namespace) -> int:
    machine = ctl.policies.find_machine(args.machine)
    card = machine_card(ctl, machine)
    if args.json:
        emit_json(card)
        return 0
    zone = ctl.policies.clients[machine.client].timezone
    print(f"Machine card: {machine.qualified_name}")
    for label, key in (
        ("client", "client_name"),
        ("asset tag", "asset_tag"),
        ("address", "address"),
        ("MAC", "mac"),
        ("role", "role"),
        ("engineer", "engineer"),
        ("restore SLA", "restore_sla"),
    ):
        print(f"  {label:<12} {card[key] or '-'}")
    print("\nLevels")
    print(
        format_table(
            ["LEVEL", "KIND", "EVERY", "REPOSITORY", "WHAT"],
            [
                [lv["name"], lv["kind"], lv["every"], lv["repository"], lv["what"]]
                for lv in card["levels"]
            ],
        )
    )
    print("\nLatest restore points")
    if card["restore_points"]:
        print(
            format_table(
                ["TIME", "LEVEL", "SNAPSHOT", "SIZE"],
                [
                    [local_time(p["time"], zone), p["level"], p["snapshot"], human_bytes(p["size"])]
                    for p in card["restore_points"]
                ],
            )
        )
    else:
        print("  none recorded yet")
    print(f"\nOne-click restore ({card['restore_default']}):")
    print(f'  {card["restore_command"]} --symptom "..." --reported-by "..."')
    chosen = card["restores"]
    if chosen:
        print(
            f"  restores snapshot {chosen['snapshot']} of level {chosen['level']} "
            f"({local_time(chosen['time'], zone)}) unless --snapshot says otherwise; "
            "it shows the plan and asks before writing"
        )
    return 0


def register(add: AddCommand) -> None:
    p = add("restore", cmd_restore, "restore a machine from a snapshot (plans and asks first)")
    p.add_argument("machine", help="machine name, or client/machine")
    p.add_argument("--level", help="restore from this level (default: by the restore target)")
    p.add_argument("--snapshot", help="snapshot id or prefix (default: the latest good one)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--to",
        metavar="PATH",
        help="files below PATH (also --item files), or an image into file PATH",
    )
    where.add_argument("--in-place", action="store_true", help="files back where they were")
    where.add_argument(
        "--device", metavar="DEV", help="an image onto device DEV (also --item volumes)"
    )
    where.add_argument(
        "--bare-metal",
        action="store_true",
        help="Windows: print the WinRE steps that restore the whole machine, record the service",
    )
    p.add_argument(
        "--item",
        dest="items",
        action="append",
        default=[],
        metavar="PATH",
        help="Windows image: a file, folder or volume (D:) to recover; repeat for more",
    )
    p.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        help="files: 'restic' (default) has restic read every restored file back against the "
        "snapshot and checks every file's size; 'full' also reads the snapshot again from the "
        "repository and compares a sha256 of every file (slower, independent of restic restore)",
    )
    p.add_argument(
        "--replace-links",
        action="store_true",
        help="files: replace symbolic links found where the snapshot has folders with those "
        "folders (without it such a restore is refused: it would write through them)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.add_argument("--symptom", help="the fault as reported (service record)")
    p.add_argument("--reported-by", help="who reported it")
    p.add_argument("--engineer", help=ENGINEER_HELP)
    p = add("card", cmd_card, "the machine card: identity, restore points, restore command")
    p.add_argument("machine", help="machine name, or client/machine")
