"""The maintenance-log commands: ``log``."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from typing import Any

from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.errors import RecoverdError, UsageError
from recoverd.log import RunFilter
from recoverd.log.record import STATES
from recoverd.output import emit_json, format_table, local_time, run_result


def parse_since(text: str) -> datetime:
    """Given ``2026-11-01``, ``2026-11-01T08:00``, ``7d`` or ``12h``, return an aware instant.

    Raise UsageError if the text is none of those.
    """
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now().astimezone() - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: use a date (2026-11-01), a time (2026-11-01T08:00) or an age (7d)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def cmd_log(ctl: Controller, args: argparse.Namespace) -> int:
    machine = args.machine
    client = args.client
    if machine and "/" in machine:
        client, _, machine = machine.partition("/")
    where = RunFilter(
        client=client,
        machine=machine,
        since=parse_since(args.since) if args.since else None,
        state=args.run_state,
    )
    views = ctl.log.runs(where)
    if args.json:
        for view in views:
            emit_json(view)
        return 0
    zones = {cid: c.timezone for cid, c in _clients_if_valid(ctl).items()}
    print(
        format_table(
            ["TIME", "CLIENT", "MACHINE", "ACTION", "LEVEL", "STATE", "ENGINEER", "RESULT", "RUN"],
            [
                [
                    local_time(v["started_at"], zones.get(v["client"], "UTC")),
                    v["client"],
                    v["machine"],
                    v["action"],
                    v["level"],
                    v["state"],
                    v["engineer"],
                    run_result(v)[:80],
                    v["id"],
                ]
                for v in views
            ],
        )
    )
    return 0


def _clients_if_valid(ctl: Controller) -> dict[str, Any]:
    """The clients, or none when the policies are broken: the log must stay readable."""
    try:
        return ctl.policies.clients
    except RecoverdError:
        return {}


def register(add: AddCommand) -> None:
    # `log --state S` filters by run state (SPEC); the state directory goes before `log`.
    p = add("log", cmd_log, "the maintenance log, one line per run", state_option=False)
    p.add_argument("--client", help="only this client")
    p.add_argument("--machine", help="only this machine (name or client/machine)")
    p.add_argument("--since", help="from this date, time or age (2026-11-01, 7d)")
    p.add_argument("--state", dest="run_state", choices=STATES, help="only runs in this state")
