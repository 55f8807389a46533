"""Commands about schedules: ``plan``, ``status`` and ``daemon``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from datetime import datetime, timedelta
from typing import Any

from recoverd import clock
from recoverd.actions.daemon import DEFAULT_GRACE, DEFAULT_MAX_PARALLEL, DEFAULT_TICK, Daemon
from recoverd.actions.due import Duty, duties
from recoverd.alerts import drill_check_missing
from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.errors import UsageError
from recoverd.locks import daemon_lock
from recoverd.metrics import metrics_address
from recoverd.output import emit_json, format_table, json_time, local_time

MAX_PLAN_DAYS = 366
"""How far ahead ``plan --days`` looks at most: a year of runs."""


def planned_runs(duty: Duty, end: datetime) -> list[tuple[datetime, str]]:
    """Given a level's duty, return its coming runs up to ``end`` with a note on each.

    A due level comes first (now, or at its retry time); then its calendar slots, or for an
    interval form one run every interval after the previous one.
    """
    now = duty.now
    runs: list[tuple[datetime, str]] = []
    if duty.running:
        runs.append((now, "running now"))
    elif duty.runnable:
        runs.append((now, "due now" if duty.reason == "due" else f"due now: {duty.reason}"))
    elif duty.due and duty.run_at is not None:
        runs.append((duty.run_at, duty.reason))
    interval = duty.schedule.interval
    if interval is None:
        listed = {at for at, _ in runs}
        runs += [(slot, "") for slot in duty.schedule.slots(now, end) if slot not in listed]
    else:
        if not runs and duty.run_at is not None:
            runs.append((duty.run_at, ""))
        after = runs[-1][0] if runs else now
        while (after := after + interval) <= end:
            runs.append((after, ""))
    return [(at, note) for at, note in runs if at <= end]


def cmd_plan(ctl: Controller, args: argparse.Namespace) -> int:
    if not 0 <= args.days <= MAX_PLAN_DAYS:
        raise UsageError(f"--days must be 0..{MAX_PLAN_DAYS}")
    now = clock.now()
    end = now + timedelta(days=args.days)
    rows: list[dict[str, Any]] = []
    for duty in duties(ctl, now):
        zone = duty.schedule.zone
        for at, note in planned_runs(duty, end):
            rows.append(
                {
                    "at": json_time(at, str(zone)),
                    "client": duty.machine.client,
                    "machine": duty.machine.name,
                    "level": duty.level.name,
                    "kind": duty.level.kind,
                    "every": duty.level.every,
                    "timezone": str(zone),
                    "note": note or None,
                    "_sort": at,
                }
            )
    rows.sort(key=lambda r: (r.pop("_sort"), r["client"], r["machine"], r["level"]))
    if args.json:
        for row in rows:
            emit_json(row)
        return 0
    print(
        format_table(
            ["TIME (LOCAL)", "CLIENT", "MACHINE", "LEVEL", "KIND", "EVERY", "NOTE"],
            [
                [
                    local_time(r["at"], r["timezone"]),
                    r["client"],
                    r["machine"],
                    r["level"],
                    r["kind"],
                    r["every"],
                    r["note"],
                ]
                for r in rows
            ],
        )
    )
    return 0


def human_age(delta: timedelta) -> str:
    """Return a duration as ``2d 3h``, ``3h 5m`` or ``4m``."""
    minutes = max(0, int(delta.total_seconds()) // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


PROBLEM_FLAGS = ("overdue", "failing", "stalled", "retention-failed", "check-not-run")
"""Flags that make ``recoverd status`` exit 1."""


def level_status(duty: Duty, retention: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return what ``recoverd status --json`` prints for one level; ``retention`` is the
    level's newest retention (prune) run, if any."""
    good, last = duty.last_good, duty.last_attempt
    flags = [f for f, on in (("overdue", duty.overdue), ("failing", duty.failing)) if on]
    stats = (last or {}).get("stats") or {}
    if last is not None and last["state"] == "failed" and stats.get("stalled"):
        flags.append("stalled")
    if last is not None and last["state"] == "partial":
        flags.append("partial")
    if retention is not None and retention["state"] in ("failed", "interrupted"):
        flags.append("retention-failed")
    if drill_check_missing(last):
        flags.append("check-not-run")
    zone = str(duty.schedule.zone)
    age = duty.now - datetime.fromisoformat(good["started_at"]) if good else None
    return {
        "client": duty.machine.client,
        "machine": duty.machine.name,
        "level": duty.level.name,
        "kind": duty.level.kind,
        "every": duty.level.every,
        "timezone": zone,
        "last_good": json_time(good["started_at"], zone) if good else None,
        "last_good_run": good["id"] if good else None,
        "age_s": int(age.total_seconds()) if age is not None else None,
        "due": duty.due,
        "due_since": json_time(duty.due_since, zone),
        "last_attempt_state": last["state"] if last else None,
        "last_attempt_error": last["error"] if last else None,
        "next_due": json_time(duty.run_at, zone),
        "retention_state": retention["state"] if retention else None,
        "retention_error": retention["error"] if retention else None,
        "flags": flags,
    }


def newest_retention(ctl: Controller, duty: Duty) -> dict[str, Any] | None:
    """Return the newest retention run of a level with ``keep``, or None."""
    if not duty.level.keep:
        return None
    machine = duty.machine
    runs = ctl.log.level_runs(
        machine.client, machine.name, duty.level.name, "prune", duty.now, ("succeeded",)
    )
    return runs[-1] if runs else None


def cmd_status(ctl: Controller, args: argparse.Namespace) -> int:
    records = [level_status(d, newest_retention(ctl, d)) for d in duties(ctl, clock.now())]
    problems = [r for r in records if set(PROBLEM_FLAGS) & set(r["flags"])]
    if args.json:
        for record in records:
            emit_json(record)
    else:
        rows = []
        for r in records:
            age = human_age(timedelta(seconds=r["age_s"])) if r["age_s"] is not None else "never"
            state = r["last_attempt_state"] or "-"
            if r["last_attempt_state"] in ("failed", "interrupted") and r["last_attempt_error"]:
                state += f": {r['last_attempt_error'][:60]}"
            if "retention-failed" in r["flags"]:
                state += f"; retention {r['retention_state']}: {(r['retention_error'] or '')[:60]}"
            rows.append(
                [
                    " ".join(f.upper() for f in r["flags"]) or "ok",
                    r["client"],
                    r["machine"],
                    r["level"],
                    r["every"],
                    local_time(r["last_good"], r["timezone"]),
                    age,
                    local_time(r["next_due"], r["timezone"]),
                    state,
                ]
            )
        print(
            format_table(
                [
                    "STATUS",
                    "CLIENT",
                    "MACHINE",
                    "LEVEL",
                    "EVERY",
                    "LAST GOOD",
                    "AGE",
                    "NEXT DUE",
                    "LAST ATTEMPT",
                ],
                rows,
            )
        )
        if problems:
            found = sorted({f for r in problems for f in r["flags"] if f in PROBLEM_FLAGS})
            print(f"{len(problems)} level(s) with problems: {', '.join(found)}", file=sys.stderr)
    return 1 if problems else 0


def cmd_daemon(ctl: Controller, args: argparse.Namespace) -> int:
    if args.max_parallel < 1:
        raise UsageError("--max-parallel must be 1 or more")
    # nan and inf parse as floats; a wait of either ends in an error deep in a thread.
    if not (math.isfinite(args.tick) and 0 < args.tick <= 3600):
        raise UsageError("--tick must be a number of seconds, more than 0 and at most 3600")
    if not (math.isfinite(args.grace) and 0 <= args.grace <= 86400):
        raise UsageError("--grace must be a number of seconds, 0 to 86400")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",  # local time with its offset
        force=True,
    )
    # Libraries speak under their own names, and only when something is wrong.
    for chatty in ("paramiko", "apprise", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    machines = ctl.policies.machines()  # a broken policy stops the start with exit 2
    address = metrics_address(args.metrics, public=args.metrics_public) if args.metrics else None
    with daemon_lock(ctl.state_dir):
        daemon = Daemon(ctl, max_parallel=args.max_parallel, tick_seconds=args.tick)
        server = None
        if address is not None:
            try:
                server = daemon.metrics.serve(*address)
            except OSError as exc:
                raise UsageError(
                    f"--metrics {args.metrics}: cannot listen: {exc.strerror}"
                ) from None
            logging.info("serving metrics on http://%s/metrics", args.metrics)
        signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
        signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
        logging.info(
            "daemon started (pid %d): %d machine(s), max %d run(s) at once, state %s",
            os.getpid(),
            len(machines),
            args.max_parallel,
            ctl.state_dir,
        )
        try:
            daemon.serve()
        finally:
            if server is not None:
                server.shutdown()
        logging.info("stopping: no new runs; waiting up to %gs for running ones", args.grace)
        interrupted = daemon.shutdown(args.grace)
        if not interrupted:
            logging.info("daemon stopped")
            return 0
        logging.warning("daemon stopped; interrupted run(s): %s", ", ".join(interrupted))
        sys.stdout.flush()
        sys.stderr.flush()
        # Worker threads still wait on their machines: end the process, which drops their
        # connections, instead of joining them.
        os._exit(130)


def register(add: AddCommand) -> None:
    p = add("plan", cmd_plan, "the coming runs, per machine and level, in local time")
    p.add_argument("--days", type=int, default=7, help="how far ahead (default 7)")
    add("status", cmd_status, "last good run, age and next due per level; exit 1 on problems")
    p = add("daemon", cmd_daemon, "run all schedules until stopped (SIGTERM), reload on SIGHUP")
    p.add_argument(
        "--max-parallel",
        type=int,
        default=DEFAULT_MAX_PARALLEL,
        help=f"runs at once across all machines (default {DEFAULT_MAX_PARALLEL})",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help=f"seconds running runs may finish after SIGTERM (default {DEFAULT_GRACE:g})",
    )
    p.add_argument(
        "--metrics",
        metavar="ADDRESS:PORT",
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9150)",
    )
    p.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow --metrics on an address that is not loopback (the metrics name every machine)",
    )
    p.add_argument(
        "--tick",
        type=float,
        default=DEFAULT_TICK,
        help=f"seconds between looks at the schedules (default {DEFAULT_TICK:g})",
    )
