"""The ``verify`` command: run a machine's restore drills now."""

from __future__ import annotations

import argparse

from recoverd.actions.verify import run_drill, verify_levels
from recoverd.alerts import notify_after_manual_runs
from recoverd.commands import ENGINEER_HELP, AddCommand
from recoverd.controller import Controller
from recoverd.output import emit_json, run_result
from recoverd.progress import ProgressLine
from recoverd.runs import exit_code
from recoverd.text import visible


def cmd_verify(ctl: Controller, args: argparse.Namespace) -> int:
    machine = ctl.policies.find_machine(args.machine)
    views = []
    for level in verify_levels(machine, args.level):
        progress = None if args.json else ProgressLine(f"{machine.name} {level.name}")
        try:
            view = run_drill(
                ctl, machine, level, seed=args.seed, progress=progress, engineer=args.engineer
            )
        finally:
            if progress is not None:
                progress.done()
        views.append(view)
        if args.json:
            emit_json(view)
            continue
        stats = view["stats"] or {}
        print(f"{view['machine']} {view['level']} verify: {view['state']} (run {view['id']})")
        if "files_verified" in stats:
            print(f"  {run_result({**view, 'error': None})}, seed {stats['seed']}")
        if "boot_result" in stats:
            probes = "".join(f"; {p} {o}" for p, o in (stats.get("boot_probes") or {}).items())
            print(
                f"  boot: {stats['boot_result']} after {stats['boot_s']} s "
                f"({stats.get('boot_accel')}, {stats.get('boot_firmware')}){probes}; "
                f"screenshot {stats.get('boot_screenshot') or 'none'}"
            )
        if view.get("error"):
            print(f"  {visible(view['error'])}")
    if args.notify:
        notify_after_manual_runs(ctl, machine, views)
    return exit_code(views)


def register(add: AddCommand) -> None:
    p = add("verify", cmd_verify, "run a machine's restore drills now")
    p.add_argument("machine", help="machine name, or client/machine")
    p.add_argument("--level", help="only this verify level")
    p.add_argument(
        "--notify", action="store_true", help="send drill-failed/resolved messages as scheduled"
    )
    p.add_argument(
        "--seed", type=int, help="draw the sample of an earlier drill again (its recorded seed)"
    )
    p.add_argument("--engineer", help=ENGINEER_HELP)
