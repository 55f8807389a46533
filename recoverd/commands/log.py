"""The maintenance-log commands: ``log`` and its sub-actions ``verify``, ``pubkey``, ``export``."""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from recoverd.commands import AddCommand, global_options
from recoverd.controller import Controller
from recoverd.errors import RecoverdError, UsageError
from recoverd.log import RunFilter
from recoverd.log.anchors import anchor_text, parse_anchor
from recoverd.log.record import STATES, VIEW_FIELDS
from recoverd.log.signing import key_fingerprint, load_public_key, public_pem
from recoverd.output import (
    emit_json,
    format_table,
    local_time,
    run_result,
    shorten,
    write_data,
)
from recoverd.policy.load import client_zones
from recoverd.text import CSVWriter, json_text

MAX_SINCE_AGE = timedelta(days=100 * 366)
"""The oldest ``--since`` age: a century (older ones overflow dates)."""


def parse_since(text: str) -> datetime:
    """Given ``2026-11-01``, ``2026-11-01T08:00``, ``7d`` or ``12h``, return an aware instant.

    Raise UsageError if the text is none of those.
    """
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1].lstrip("0") or "0", text[-1:]
    if number.isascii() and number.isdigit() and unit in units:
        age = timedelta(**{units[unit]: int(number)}) if len(number) < 9 else None
        if age is None or age > MAX_SINCE_AGE:
            raise UsageError(f"--since {text!r}: an age of at most {MAX_SINCE_AGE.days}d")
        return datetime.now().astimezone() - age
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: use a date (2026-11-01), a time (2026-11-01T08:00) or an age (7d)"
        ) from None
    if not 1970 <= moment.year <= 9998:  # and a local time in year 1 overflows
        raise UsageError(f"--since {text!r}: the year must be 1970..9998")
    return moment if moment.tzinfo else moment.astimezone()


RESULT_WIDTH = 80
"""Characters of a run's result in a ``recoverd log`` row (``--wide``: all of it)."""


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
    # Only the zones, not the validated policies: the log stays quick and readable while a
    # policy is broken.
    zones = client_zones(ctl.policy_dir, {v["client"] for v in views})
    print(
        format_table(
            [
                "TIME",
                "CLIENT",
                "MACHINE",
                "ACTION",
                "LEVEL",
                "STATE",
                "ENGINEER",
                "RESULT",
                "ACCEPTED",
                "RUN",
            ],
            [
                [
                    local_time(v["started_at"], zones.get(v["client"], "UTC")),
                    v["client"],
                    v["machine"],
                    v["action"],
                    v["level"],
                    v["state"],
                    v["engineer"],
                    run_result(v) if args.wide else shorten(run_result(v), RESULT_WIDTH),
                    accepted_text(v, zones.get(v["client"], "UTC")),
                    v["id"],
                ]
                for v in views
            ],
        )
    )
    return 0


def accepted_text(view: dict[str, Any], zone: str) -> str:
    """Return a run's sign-offs as ``Li Na 2026-11-03 10:00 (note); ...``, or ``-``."""
    parts = []
    for a in view.get("acceptances") or ():
        note = f" ({a['note']})" if a.get("note") else ""
        parts.append(f"{a['by']} {local_time(a['at'], zone)}{note}")
    return "; ".join(parts) or "-"


def cmd_log_verify(ctl: Controller, args: argparse.Namespace) -> int:
    key = None
    if args.pubkey:
        try:
            key = load_public_key(args.pubkey.read_bytes(), str(args.pubkey))
        except OSError as exc:
            raise UsageError(f"--pubkey: {exc}") from None
    anchors = [anchor for argument in args.anchor or () for anchor in parse_anchor(argument)]
    warnings: list[str] = []
    if args.witness:
        from recoverd.witness import witness_anchors  # transports only when asked for

        found, warnings = witness_anchors(ctl)
        anchors += found
    verdict = ctl.log.verify(key, signatures=args.signatures, anchors=anchors, warnings=warnings)
    summary = {
        "intact": verdict.intact,
        "signatures": "every entry" if verdict.every_signature else "last entry and head",
        "entries": verdict.entries,
        "runs": verdict.runs,
        "first": verdict.first.at if verdict.first else None,
        "last": verdict.last.at if verdict.last else None,
        "head": {"seq": verdict.head.seq, "hash": verdict.head.hash} if verdict.head else None,
        "problem": None,
        "anchors": [
            {
                "source": c.anchor.source,
                "seq": c.anchor.seq,
                "hash": c.anchor.hash,
                "ok": c.ok,
                "kind": c.kind,
                "message": c.message,
            }
            for c in verdict.anchors
        ],
        "warnings": list(verdict.warnings),
    }
    if verdict.problem:
        problem = verdict.problem
        summary["problem"] = {"seq": problem.seq, "kind": problem.kind, "message": problem.message}
    elif verdict.failed_anchors:
        check = verdict.failed_anchors[0]
        summary["problem"] = {"seq": check.anchor.seq, "kind": check.kind, "message": check.message}
    if args.json:
        emit_json(summary)
        return 0 if verdict.intact else 1
    for warning in verdict.warnings:
        print(f"recoverd: warning: {warning}", file=sys.stderr)
    if verdict.problem:
        print(f"recoverd: maintenance log NOT intact: {verdict.problem.message}", file=sys.stderr)
    for check in verdict.failed_anchors:
        print(f"recoverd: maintenance log NOT intact: {check.message}", file=sys.stderr)
    if not verdict.intact:
        return 1
    held = len(verdict.anchors)
    anchored = f"; {held} anchor(s) held unchanged" if held else ""
    if not verdict.entries:
        print(
            "maintenance log intact: it is empty (no anchor, no key record, no witness says "
            "it held entries)"
            if not held
            else "maintenance log intact: it is empty"
        )
    else:
        head = verdict.head
        signed = "every entry's signature" if verdict.every_signature else "the last signature"
        print(
            f"maintenance log intact: {verdict.entries} entries, {verdict.runs} runs, "
            f"{verdict.first.at if verdict.first else '-'} .. "
            f"{verdict.last.at if verdict.last else '-'}; "
            f"signed head: entry {head.seq if head else '-'} {head.hash if head else ''}".rstrip()
            + f" (hash chain, signed head and {signed} checked{anchored})"
        )
    return 0


def head_data(ctl: Controller) -> dict[str, Any]:
    """Return the signed head with its entry's time and the key's fingerprint (``log head``).

    Raise RecoverdError if the log has no head or its signature is not the key's.
    """
    key_file = ctl.log.store.key
    with ctl.log.store.snapshot() as snapshot:
        head = snapshot.head
        if head is None:
            raise RecoverdError(
                f"the maintenance log in {ctl.state_dir} has no signed head: nothing has been "
                "written to it yet (or the head file was removed; see `recoverd log verify`)"
            )
        at = snapshot.at_of(head.seq)
    public = key_file.public()
    if not head.valid(public):
        raise RecoverdError(
            f"the signed head {key_file.head_path} does not verify with the log's key "
            f"{key_file.path}: run `recoverd log verify`"
        )
    return {
        "seq": head.seq,
        "hash": head.hash,
        "at": at,
        "signature": head.signature,
        "key": key_fingerprint(public),
        "anchor": anchor_text(head),
    }


def cmd_log_head(ctl: Controller, args: argparse.Namespace) -> int:
    data = head_data(ctl)
    if args.json:
        emit_json(data)
        return 0
    print(data["anchor"])
    print(
        f"entry {data['seq']} of {data['at'] or '-'}, signed with {data['key']}; keep this line "
        "outside the controller and check it later with `recoverd log verify --anchor FILE`"
    )
    return 0


def cmd_log_pubkey(ctl: Controller, args: argparse.Namespace) -> int:
    pem = public_pem(ctl.log.store.key.public())
    if args.output:
        args.output.write_text(pem, encoding="ascii")
    else:
        write_data(pem)
    return 0


def export_runs(views: list[dict[str, Any]], fmt: str, head: dict[str, Any] | None = None) -> str:
    """Given run views, return them as JSON lines or CSV (``stats`` as a JSON cell).

    CSV cells that a spreadsheet would run as a formula (a symptom ``=HYPERLINK(...)``) start
    with ``'``; JSON lines are the exact data. With ``head`` (see :func:`head_data`) the
    export ends with the log's signed head: a last line ``{"log_head": {...}}``, or in CSV a
    last row whose ``id`` cell holds the anchor text, so that the export is itself an anchor
    (`log verify --anchor FILE`).
    """
    if fmt == "jsonl":
        lines = [
            json_text({f: v.get(f) for f in VIEW_FIELDS}, ensure_ascii=False) + "\n" for v in views
        ]
        if head:
            lines.append(json_text({"log_head": head}) + "\n")
        return "".join(lines)
    out = io.StringIO()
    writer = CSVWriter(out)
    writer.writerow(VIEW_FIELDS)
    for view in views:
        writer.writerow(
            [
                json.dumps(view.get(f), ensure_ascii=False, sort_keys=True)
                if f in ("stats", "acceptances")
                else ("" if view.get(f) is None else view.get(f))
                for f in VIEW_FIELDS
            ]
        )
    if head:
        writer.writerow([head["anchor"] if f == "id" else "" for f in VIEW_FIELDS])
    return out.getvalue()


def cmd_log_export(ctl: Controller, args: argparse.Namespace) -> int:
    from recoverd.actions.report import Month  # the report's modules only when exporting

    client = ctl.policies.clients.get(args.client)
    if client is None:
        known = ", ".join(sorted(ctl.policies.clients)) or "none"
        raise UsageError(f"no client {args.client!r} in the policies (clients: {known})")
    month = Month.parse(args.month, client.timezone)
    views = [
        v
        for v in ctl.log.runs(RunFilter(client=client.id, since=month.start))
        if month.contains(v["started_at"])
    ]
    text = export_runs(views, args.format, head_data(ctl))
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"{len(views)} run(s) of {client.id} in {month} written to {args.output}")
    else:
        write_data(text)
    return 0


def register(add: AddCommand) -> None:
    # `log --state S` filters by run state (SPEC); the state directory goes before `log`.
    p = add("log", cmd_log, "the maintenance log, one line per run", state_option=False)
    p.description = (
        "The maintenance log, one line per run (filters below), or one of the actions "
        "verify, pubkey, export. The state directory goes before `log`: "
        "`recoverd --state DIR log verify`."
    )
    p.add_argument("--client", help="only this client")
    p.add_argument("--machine", help="only this machine (name or client/machine)")
    p.add_argument("--since", help="from this date, time or age (2026-11-01, 7d)")
    p.add_argument("--state", dest="run_state", choices=STATES, help="only runs in this state")
    p.add_argument(
        "--wide",
        action="store_true",
        help=f"show each run's whole result (else the first ~{RESULT_WIDTH} characters)",
    )
    actions = p.add_subparsers(dest="log_action", metavar="ACTION")

    def action(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        # The global options are also accepted after the action, as after any command; there
        # --state is the state directory again (before the action it filters runs by state).
        sub = actions.add_parser(
            name, parents=[global_options(state=True)], help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        return sub

    verify = action(
        "verify",
        cmd_log_verify,
        "check every entry's hash and link, the signed head and the last entry's signature "
        "(which vouches for the whole chain)",
    )
    verify.add_argument(
        "--pubkey", type=Path, help="the log's public key (PEM) as exported by `log pubkey`"
    )
    verify.add_argument(
        "--anchor",
        action="append",
        metavar="FILE|SEQ:HASH",
        help="an anchor kept outside the controller (`log head` output, a report, an export, "
        "or SEQ:HASH): the log must still hold its entry unchanged; any number of times",
    )
    verify.add_argument(
        "--witness",
        action="store_true",
        help="also compare the log with the heads kept by the witness machines ([audit] witness)",
    )
    verify.add_argument(
        "--signatures",
        action="store_true",
        help="also check every entry's own signature (thorough and slow: about 2 minutes per "
        "million entries)",
    )
    action(
        "head",
        cmd_log_head,
        "print the signed head (seq, hash, time, signature): an anchor to keep outside the "
        "controller",
    )
    pubkey = action("pubkey", cmd_log_pubkey, "print the log's public key (PEM) for auditors")
    pubkey.add_argument("-o", "--output", type=Path, help="write it to this file")
    export = action("export", cmd_log_export, "the customer's copy of a month's runs")
    export.add_argument("--client", required=True, help="the client")
    export.add_argument("--month", required=True, help="YYYY-MM, in the client's time zone")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="write to this file")
