"""The monthly report for a client: ``report``."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from recoverd import witness
from recoverd.actions.report import Report, build_report
from recoverd.actions.report_render import FORMATS, render, report_data
from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.errors import RecoverdError
from recoverd.log.anchors import anchor_text
from recoverd.log.maintenance import utc_now
from recoverd.output import emit_json, write_data


def integrity_line(report: Report) -> str:
    """Return the report's footer line on the log's integrity, from its ``log_check``.

    What was checked is what the report rests on: the entries from the month's start to the
    end of the log (their hash chain, the signed head and the last signature, which vouches
    for every entry before it), not the log's whole history; the line says which entries.
    """
    verdict, month = report.log_check, report.month
    if isinstance(verdict, RecoverdError):
        return f"Maintenance log not verified: {verdict}"
    if verdict is None:
        return "Maintenance log not verified."
    unreached = "".join(f" Warning: {w}." for w in verdict.warnings)
    if not verdict.intact and verdict.problem:
        return f"WARNING — maintenance log NOT intact: {verdict.problem.message}"
    if not verdict.intact:
        return f"WARNING — maintenance log NOT intact: {verdict.failed_anchors[0].message}"
    if verdict.first is None or verdict.last is None:
        return "Maintenance log verified intact when this report was made: it is empty."
    # The head as an anchor line: the report file is itself an anchor (`log verify --anchor`).
    head = f"; signed head: {anchor_text(verdict.head)}" if verdict.head else ""
    if datetime.fromisoformat(verdict.first.at) >= month.start:
        span = (
            f"entries {verdict.first.seq}..{verdict.last.seq}, from "
            f"{month.start:%Y-%m-%d} to the end of the log"
        )
    else:  # nothing dated in the month or later: the last entry and the head were checked
        span = f"entry {verdict.last.seq}, the last of the log (none is dated {month} or later)"
    witnessed = len({c.anchor.source for c in verdict.anchors})
    held = (
        f" {len(verdict.anchors)} head(s) kept by {witnessed} witness(es) held unchanged."
        if verdict.anchors
        else ""
    )
    return (
        f"Maintenance log verified intact when this report was made: {span}, hash-chained "
        f"and signed{head}.{held}{unreached}"
    )


def cmd_report(ctl: Controller, args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        suffix = args.output.suffix.lstrip(".").lower() if args.output else ""
        fmt = {"htm": "html", "markdown": "md"}.get(suffix, suffix)
        fmt = fmt if fmt in FORMATS else "md"
    anchors, warnings = [], []
    if not args.json and witness.places(ctl.policies, args.client):
        anchors, warnings = witness.witness_anchors(ctl, args.client)
    report = build_report(
        ctl.policies,
        ctl.log,
        args.client,
        args.month,
        utc_now(),
        check_log=not args.json,
        anchors=anchors,
        warnings=warnings,
    )
    if args.json:
        # The head as an anchor line here too (not verified: --json stays quick).
        emit_json({**report_data(report), "log_head": ctl.log.head_anchor()})
        return 0
    text = render(report, fmt, integrity_line(report))
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"{fmt} report of {args.client} for {report.month} written to {args.output}")
    else:
        write_data(text)
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
