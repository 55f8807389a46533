"""Commands that read the policies and plugins: ``check``, ``machines``, ``plugins``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recoverd.actions.backup import level_action
from recoverd.actions.check import policy_warnings
from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.errors import UsageError
from recoverd.output import emit_json, format_table, local_time


def cmd_check(ctl: Controller, args: argparse.Namespace) -> int:
    policies = ctl.policies  # raises PolicyError with every problem
    if args.online:
        from recoverd.commands.enroll import cmd_check_online

        return cmd_check_online(ctl, args)
    machines = policies.machines()
    levels = sum(len(m.levels) for m in machines)
    warnings = policy_warnings(ctl)
    if args.json:
        emit_json(
            {
                "clients": len(policies.clients),
                "machines": len(machines),
                "levels": levels,
                "warnings": warnings,
            }
        )
    else:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for cid, client in sorted(policies.clients.items()):
            print(f"{client.source}: {cid} ({client.name}): {len(client.machines)} machine(s)")
        provider = policies.provider
        if provider.source is not None:
            routes = len(provider.routes)
            print(f"{provider.source}: provider settings, {routes} notification route(s)")
        print(
            f"ok: {len(policies.clients)} client(s), {len(machines)} machine(s), {levels} level(s)"
        )
    if args.notify:
        return check_routes(ctl)
    return 0


def check_routes(ctl: Controller) -> int:
    """Send a test message through every notification route; exit 1 if one did not arrive."""
    from recoverd.alerts import Alerts

    results = Alerts(ctl).test_routes()
    for route, index, problem in results:
        print(f"notify.{route}.urls[{index}]: {problem or 'delivered'}")
    if not results:
        print("no notification routes: add [notify.NAME] to provider.toml (docs/monitoring.md)")
    return 1 if not results or any(problem for *_, problem in results) else 0


def cmd_machines(ctl: Controller, args: argparse.Namespace) -> int:
    machines = ctl.policies.machines(args.client)
    if args.client and args.client not in ctl.policies.clients:
        raise UsageError(f"no client {args.client!r} in the policies")
    rows = []
    for m in machines:
        zone = ctl.policies.clients[m.client].timezone
        last_good = {}
        for level in m.levels:
            # Backups (partial ones included: they are restore points), not restores of
            # the level nor its retention runs.
            action = level_action(level)
            states = ("succeeded",) if action == "verify" else ("succeeded", "partial")
            good = ctl.log.last_run(m.client, m.name, level.name, state=states, action=action)
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


def cmd_schema(ctl: Controller, args: argparse.Namespace) -> int:
    import json

    from recoverd.policy.schema import policy_schema

    text = json.dumps(policy_schema(ctl.secrets.schemes), indent=2) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def register(add: AddCommand) -> None:
    p = add("check", cmd_check, "validate every policy file")
    p.add_argument(
        "--online",
        action="store_true",
        help="also reach every machine and, from it, every repository (read-only): what "
        "would fail tonight",
    )
    p.add_argument("--client", help="with --online: only this client's machines")
    p.add_argument(
        "--notify", action="store_true", help="also send a test message through every route"
    )
    p = add("machines", cmd_machines, "inventory of machines and their last good runs")
    p.add_argument("--client", help="only this client")
    add("plugins", cmd_plugins, "loaded plugins, their kinds and versions")
    p = add(
        "schema",
        cmd_schema,
        "the JSON Schema of policy files, for editors (Taplo / Even Better TOML)",
        state_option=False,
    )
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it to FILE")
