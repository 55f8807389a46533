"""Onboarding: ``enroll`` (and the online part of ``check``, which shares its steps)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from recoverd.actions.enroll import FAILED, OK, Step, check_online, confirm_with, enroll
from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.output import emit_json

MARKS = {OK: "ok", "warning": "warning", FAILED: "FAILED"}


def print_steps(steps: Iterable[Step], *, as_json: bool, machine: str) -> bool:
    """Print each step as it comes (a line, or a JSON object); return True if none failed."""
    good = True
    for step in steps:
        good = good and step.state != FAILED
        if as_json:
            emit_json({"machine": machine, **step.__dict__})
            continue
        print(f"  {MARKS[step.state]:<8} {step.what:<18} {step.detail}", flush=True)
        if step.fix:
            print(f"  {'':<8} {'':<18} fix: {step.fix}", flush=True)
    return good


def _prompt(question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline()


def cmd_enroll(ctl: Controller, args: argparse.Namespace) -> int:
    machine = ctl.policies.find_machine(args.machine)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    confirm = confirm_with(args.yes, _prompt if interactive else None)
    if not args.json:
        print(
            f"enrolling {machine.qualified_name} ({machine.transport}, "
            f"{machine.address or 'this controller'})",
            flush=True,
        )
    good = print_steps(
        enroll(ctl, machine, confirm), as_json=args.json, machine=machine.qualified_name
    )
    if not args.json:
        print(
            f"{machine.qualified_name} is ready for its first backup"
            if good
            else f"{machine.qualified_name} is not ready: do the fixes above and run enroll again"
        )
    return 0 if good else 1


def cmd_check_online(ctl: Controller, args: argparse.Namespace) -> int:
    """``check --online``: every machine (or those of ``--client``), read-only."""
    good = True
    for machine in ctl.policies.machines(getattr(args, "client", None)):
        if not args.json:
            print(f"{machine.qualified_name}:", flush=True)
        good = (
            print_steps(
                check_online(ctl, machine), as_json=args.json, machine=machine.qualified_name
            )
            and good
        )
    return 0 if good else 1


def register(add: AddCommand) -> None:
    p = add(
        "enroll",
        cmd_enroll,
        "onboard a machine: pin its host key, check restic and its repositories from the machine",
    )
    p.add_argument("machine", metavar="MACHINE", help="ws-042 or acme/ws-042")
    p.add_argument(
        "--yes",
        action="store_true",
        help="answer yes: pin a host key the policy does not know yet and create missing "
        "repositories (a CHANGED host key is never accepted this way)",
    )
