"""The ``recoverd`` command line: parse arguments, call an action, print, exit with SPEC codes.

Exit codes: 0 success; 1 a run failed; 2 usage or policy error; 3 partial; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from recoverd import __version__
from recoverd.actions.backup import backup_levels, backup_machine
from recoverd.controller import Controller
from recoverd.errors import PolicyError, RecoverdError, UsageError
from recoverd.log import RunFilter
from recoverd.log.record import STATES
from recoverd.progress import ProgressLine
from recoverd.runs import exit_code
from recoverd.table import format_table, human_bytes

Handler = Callable[[Controller, argparse.Namespace], int]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "recoverd"


# -- output helpers ----------------------------------------------------------------------------


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, sort_keys=False))


def local_time(iso_text: str | None, zone: str) -> str:
    """Return an ISO timestamp as ``YYYY-MM-DD HH:MM +08`` in the client's time zone."""
    if not iso_text:
        return "-"
    moment = datetime.fromisoformat(iso_text).astimezone(ZoneInfo(zone))
    return moment.strftime("%Y-%m-%d %H:%M %z")[:-2]


def run_result(view: dict[str, Any]) -> str:
    """Return a one-line summary of a run for tables."""
    if view.get("error"):
        return view["error"]
    stats = view.get("stats") or {}
    if view.get("action") == "backup" and "files_new" in stats:
        return (
            f"snapshot {view.get('snapshot')}: {stats['files_new']} new, "
            f"{stats['files_changed']} changed, {human_bytes(stats.get('bytes_added'))} added"
        )
    if view.get("action") == "prune" and "snapshots_removed" in stats:
        pruned = ", repository pruned" if stats.get("pruned") else ""
        return f"{stats['snapshots_removed']} snapshot(s) forgotten{pruned}"
    return ""


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


# -- commands ----------------------------------------------------------------------------------


def cmd_check(ctl: Controller, args: argparse.Namespace) -> int:
    policies = ctl.policies  # raises PolicyError with every problem
    machines = policies.machines()
    levels = sum(len(m.levels) for m in machines)
    if args.json:
        emit_json({"clients": len(policies.clients), "machines": len(machines), "levels": levels})
    else:
        for cid, client in sorted(policies.clients.items()):
            print(f"{client.source}: {cid} ({client.name}): {len(client.machines)} machine(s)")
        print(
            f"ok: {len(policies.clients)} client(s), {len(machines)} machine(s), {levels} level(s)"
        )
    return 0


def cmd_machines(ctl: Controller, args: argparse.Namespace) -> int:
    machines = ctl.policies.machines(args.client)
    if args.client and args.client not in ctl.policies.clients:
        raise UsageError(f"no client {args.client!r} in the policies")
    rows = []
    for m in machines:
        zone = ctl.policies.clients[m.client].timezone
        last_good = {}
        for level in m.levels:
            good = ctl.log.last_run(m.client, m.name, level.name, state="succeeded")
            last_good[level.name] = good["finished_at"] if good else None
        record = {
            "client": m.client,
            "machine": m.name,
            "transport": m.transport,
            "address": m.address,
            "role": m.role,
            "asset_tag": m.asset_tag,
            "mac": m.mac,
            "levels": [lv.name for lv in m.levels],
            "last_good": last_good,
        }
        if args.json:
            emit_json(record)
            continue
        lasts = ", ".join(f"{n} {local_time(t, zone)}" for n, t in last_good.items() if t)
        rows.append(
            [
                m.client,
                m.name,
                m.transport,
                m.address,
                m.asset_tag,
                m.mac,
                ",".join(record["levels"]),
                lasts or "never",
            ]
        )
    if not args.json:
        print(
            format_table(
                [
                    "CLIENT",
                    "MACHINE",
                    "TRANSPORT",
                    "ADDRESS",
                    "ASSET",
                    "MAC",
                    "LEVELS",
                    "LAST GOOD",
                ],
                rows,
            )
        )
    return 0


def cmd_backup(ctl: Controller, args: argparse.Namespace) -> int:
    machine = ctl.policies.find_machine(args.machine)
    levels = backup_levels(machine, args.level)
    progress = None if args.json else ProgressLine
    views = backup_machine(ctl, machine, levels, progress=progress)
    zone = ctl.policies.clients[machine.client].timezone
    for view in views:
        if args.json:
            emit_json(view)
        else:
            print(
                f"{view['machine']} {view['level']} {view['action']}: {view['state']} "
                f"{run_result(view)} (run {view['id']}, {local_time(view['finished_at'], zone)})"
            )
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
        repositories = {lv.repository: lv for lv in levels}
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


def cmd_plugins(ctl: Controller, args: argparse.Namespace) -> int:
    infos = ctl.plugins.describe()
    if args.json:
        for info in infos:
            emit_json(vars(info))
        return 0
    print(
        format_table(
            ["PLUGIN", "VERSION", "PROVIDES"],
            [
                [
                    i.name,
                    i.version,
                    "; ".join(
                        f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in i.provides.items()
                    ),
                ]
                for i in infos
            ],
        )
    )
    return 0


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS lets the global options stand before or after the command without the
    # subcommand's defaults overriding what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--policies",
        type=Path,
        default=argparse.SUPPRESS,
        help="policy directory (env RECOVERD_POLICIES, default ./policies)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON"
    )
    with_state = argparse.ArgumentParser(add_help=False, parents=[common])
    with_state.add_argument(
        "--state",
        dest="state_dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="state directory (env RECOVERD_STATE, default ~/.local/state/recoverd)",
    )
    parser = argparse.ArgumentParser(
        prog="recoverd",
        parents=[with_state],
        description="Backups, disk images, restores and a maintenance log for client machines.",
    )
    parser.add_argument("--version", action="version", version=f"recoverd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, handler: Handler, help_text: str, parent: argparse.ArgumentParser = with_state
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[parent], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    command("check", cmd_check, "validate every policy file")
    p = command("machines", cmd_machines, "inventory of machines and their last good runs")
    p.add_argument("--client", help="only this client")
    p = command("backup", cmd_backup, "run a machine's backup levels now")
    p.add_argument("machine", help="machine name, or client/machine")
    p.add_argument("--level", help="only this level")
    p = command("snapshots", cmd_snapshots, "list a machine's restore points")
    p.add_argument("machine", help="machine name, or client/machine")
    p.add_argument("--level", help="only this level")
    # `log --state S` filters by run state (SPEC); the state directory goes before `log`.
    p = command("log", cmd_log, "the maintenance log, one line per run", parent=common)
    p.add_argument("--client", help="only this client")
    p.add_argument("--machine", help="only this machine (name or client/machine)")
    p.add_argument("--since", help="from this date, time or age (2026-11-01, 7d)")
    p.add_argument("--state", dest="run_state", choices=STATES, help="only runs in this state")
    command("plugins", cmd_plugins, "loaded plugins, their kinds and versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    args.json = getattr(args, "json", False)
    policy_dir = getattr(args, "policies", None) or os.environ.get("RECOVERD_POLICIES", "policies")
    state_dir = getattr(args, "state_dir", None) or os.environ.get("RECOVERD_STATE")
    try:
        ctl = Controller(Path(policy_dir), Path(state_dir) if state_dir else default_state_dir())
        return args.handler(ctl, args)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"recoverd: {len(exc.problems)} policy problem(s)", file=sys.stderr)
        return exc.exit_code
    except RecoverdError as exc:
        print(f"recoverd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recoverd: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. a state directory on a full or read-only disk
        print(f"recoverd: {exc}", file=sys.stderr)
        return 1
