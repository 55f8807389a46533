"""Sign off a run: ``accept``."""

from __future__ import annotations

import argparse

from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.output import emit_json, local_time
from recoverd.policy.load import client_zones


def cmd_accept(ctl: Controller, args: argparse.Namespace) -> int:
    earlier = ctl.log.acceptances(args.run_id)
    view = ctl.log.accept(args.run_id, args.by, args.note)
    if args.json:
        emit_json(view)
        return 0
    # Times in the client's zone, as everywhere else (UTC when its policy names none).
    zone = client_zones(ctl.policy_dir, [view["client"]]).get(view["client"], "UTC")
    print(
        f"run {view['id']} ({view['machine']} {view['action']} {view['level'] or ''}, "
        f"{view['state']}) accepted by {view['accepted_by']} at "
        f"{local_time(view['accepted_at'], zone)}"
    )
    if earlier:
        names = ", ".join(f"{e.body.get('by')} ({local_time(e.at, zone)})" for e in earlier)
        print(f"earlier acceptance(s) kept in the log: {names}")
    return 0


def register(add: AddCommand) -> None:
    p = add("accept", cmd_accept, "sign off a finished run (appends an acceptance entry)")
    p.add_argument("run_id", metavar="RUN_ID", help="the run's id (see `recoverd log`)")
    p.add_argument("--by", required=True, metavar="NAME", help="who accepts it (验收人员)")
    p.add_argument("--note", metavar="TEXT", help="a remark kept with the acceptance")
