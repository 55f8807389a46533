"""The CLI's commands, one module per area; each module has ``register(add)``.

``add(name, handler, help_text)`` creates the subcommand (with the global options) and returns
its parser for the command's own arguments. A handler gets the :class:`Controller` and the
parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol

from recoverd.controller import Controller

Handler = Callable[[Controller, argparse.Namespace], int]


class AddCommand(Protocol):
    def __call__(
        self, name: str, handler: Handler, help_text: str, *, state_option: bool = True
    ) -> argparse.ArgumentParser: ...


MODULES = (
    "recoverd.commands.inventory",
    "recoverd.commands.backup",
    "recoverd.commands.log",
    "recoverd.commands.schedule",
    "recoverd.commands.accept",
    "recoverd.commands.report",
    "recoverd.commands.restore",
    "recoverd.commands.verify",
    "recoverd.commands.vault",
)
"""The command modules, in the order their commands appear in ``recoverd --help``."""
