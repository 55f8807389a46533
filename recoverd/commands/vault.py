"""Keep secrets in the controller's vault: ``vault set``, ``vault list``, ``vault rm``.

A secret is never taken from the command line (it would show in ``ps`` and in shell history):
``vault set`` asks for it twice on a terminal, or reads the first line of its standard input.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from recoverd.commands import AddCommand, global_options
from recoverd.controller import Controller
from recoverd.errors import UsageError
from recoverd.output import emit_json
from recoverd.vault import Vault


def _read_secret(name: str) -> str:
    """Return the secret typed twice on a terminal, or the first line of piped input."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"secret for vault:{name}: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two entries differ; nothing was stored")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_vault(ctl: Controller, args: argparse.Namespace) -> int:
    vault = Vault(ctl.state_dir)
    if args.vault_command == "set":
        replaced = vault.set(args.name, _read_secret(args.name))
        what = "replaced" if replaced else "stored"
        print(f"vault:{args.name} {what} in {vault.path} (key {vault.key_path})")
    elif args.vault_command == "rm":
        vault.remove(args.name)
        print(f"vault:{args.name} removed")
    else:
        stored = vault.names()
        if args.json:
            emit_json([{"name": s.name, "set_at": s.set_at, "key_id": s.key_id} for s in stored])
        elif not stored:
            print(f"the vault {vault.path} is empty")
        for s in [] if args.json else stored:
            print(f"vault:{s.name}  set {s.set_at}  key {s.key_id}")
    return 0


def register(add: AddCommand) -> None:
    p = add("vault", cmd_vault, "keep secrets for `vault:NAME` references, encrypted")
    actions = p.add_subparsers(dest="vault_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        # The global options are also accepted after the action, as after any command.
        return actions.add_parser(
            name, parents=[global_options(state=True)], help=help_text, description=help_text
        )

    action("set", "store a secret (asked for twice, or the first line of stdin)").add_argument(
        "name", metavar="NAME", help="the name a policy uses as vault:NAME"
    )
    action("rm", "remove a secret").add_argument("name", metavar="NAME")
    action("list", "names and dates of the stored secrets (never their values)")
