"""The monthly report for a client: ``report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recoverd.actions.report import build_report
from recoverd.actions.report_render import FORMATS, render, report_data
from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.errors import RecoverdError
from recoverd.log.maintenance import utc_now
from recoverd.output import emit_json


def integrity_line(ctl: Controller) -> str:
    """Return one line on the log's integrity for the report's footer (never raises)."""
    try:
        verdict = ctl.log.verify()
    except RecoverdError as exc:
        return f"Maintenance log not verified: {exc}"
    if not verdict.intact and verdict.problem:
        return f"WARNING — maintenance log NOT intact: {verdict.problem.message}"
    head = f", signed head {verdict.head.hash}" if verdict.head else ""
    return (
        "Maintenance log verified intact when this report was made: "
        f"{verdict.entries} entries{head}."
    )


def cmd_report(ctl: Controller, args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        suffix = args.output.suffix.lstrip(".").lower() if args.output else ""
        fmt = {"htm": "html", "markdown": "md"}.get(suffix, suffix)
        fmt = fmt if fmt in FORMATS else "md"
    report = build_report(ctl.policies, ctl.log, args.client, args.month, utc_now())
    if args.json:
        emit_json(report_data(report))
        return 0
    text = render(report, fmt, integrity_line(ctl))
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"{fmt} report of {args.client} for {report.month} written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def register(add: AddCommand) -> None:
    p = add("report", cmd_report, "the monthly report for a client")
    p.description = "The monthly report for a client; with --json, its figures as one object."
    p.add_argument("--client", required=True, help="the client")
    p.add_argument("--month", required=True, help="YYYY-MM, in the client's time zone")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="html, md or csv (default: from the -o file's suffix, else md)",
    )
    p.add_argument("-o", "--output", type=Path, help="write to this file")
