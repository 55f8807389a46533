"""The CLI's commands, one module per area; each module has ``register(add)``.

``add(name, handler, help_text)`` creates the subcommand (with the global options) and returns
its parser for the command's own arguments. A handler gets the :class:`Controller` and the
parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from recoverd.controller import Controller

Handler = Callable[[Controller, argparse.Namespace], int]


def global_options(*, state: bool) -> argparse.ArgumentParser:
    """Return a parent parser with the global options: ``--policies``, ``--json`` and, with
    ``state``, ``--state``. Commands and their actions take it as a parent, so the options may
    stand before or after them; SUPPRESS keeps a later parser's defaults from overriding what
    was given earlier."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--policies",
        type=Path,
        default=argparse.SUPPRESS,
        help="policy directory (env RECOVERD_POLICIES, default ./policies)",
    )
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print data as JSON"
    )
    if state:
        options.add_argument(
            "--state",
            dest="state_dir",
            type=Path,
            default=argparse.SUPPRESS,
            help="state directory (env RECOVERD_STATE, default ~/.local/state/recoverd)",
        )
    return options


ENGINEER_HELP = (
    "who does this run, as the record names them (default: your login's name in "
    "[provider] engineers, else your login)"
)


class AddCommand(Protocol):
    def __call__(
        self, name: str, handler: Handler, help_text: str, *, state_option: bool = True
    ) -> argparse.ArgumentParser: ...


MODULES = {
    "recoverd.commands.inventory": ("check", "machines", "plugins", "schema"),
    "recoverd.commands.enroll": ("enroll",),
    "recoverd.commands.backup": ("backup", "snapshots"),
    "recoverd.commands.log": ("log",),
    "recoverd.commands.schedule": ("plan", "status", "daemon"),
    "recoverd.commands.service": ("service",),
    "recoverd.commands.accept": ("accept",),
    "recoverd.commands.report": ("report",),
    "recoverd.commands.restore": ("restore", "card"),
    "recoverd.commands.verify": ("verify",),
    "recoverd.commands.vault": ("vault",),
    "recoverd.commands.completion": ("completion",),
}
"""The command modules, in the order their commands appear in ``recoverd --help``, and the
commands each registers: the CLI imports only the module of the command it runs (the modules
import what their commands need, and a short command must not wait for the others)."""
