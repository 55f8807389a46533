"""The ``recoverd`` command line: global options, the commands of :mod:`recoverd.commands`,
and the SPEC's exit codes.

Exit codes: 0 success; 1 a run failed; 2 usage or policy error; 3 partial; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from recoverd import __version__
from recoverd.commands import MODULES, Handler, global_options
from recoverd.controller import Controller
from recoverd.errors import PolicyError, RecoverdError, unexpected
from recoverd.output import TerminalText
from recoverd.secrets import redact
from recoverd.text import visible


def default_state_dir() -> Path:
    """Return ``$XDG_STATE_HOME/recoverd``, by default ``~/.local/state/recoverd``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "recoverd"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the parser of every command, or only of the command module that has
    ``command`` (the others are not imported)."""
    common = global_options(state=False)
    with_state = global_options(state=True)
    parser = argparse.ArgumentParser(
        prog="recoverd",
        parents=[with_state],
        description="Backups, disk images, restores and a maintenance log for client machines.",
    )
    parser.add_argument("--version", action="version", version=f"recoverd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_command(
        name: str, handler: Handler, help_text: str, *, state_option: bool = True
    ) -> argparse.ArgumentParser:
        parent = with_state if state_option else common
        p = sub.add_parser(name, parents=[parent], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    wanted = [m for m, names in MODULES.items() if command in names] or list(MODULES)
    for module in wanted:
        importlib.import_module(module).register(add_command)
    return parser


GLOBAL_VALUE_OPTIONS = ("--policies", "--state")
"""The global options that take a value (argparse also accepts unambiguous abbreviations)."""


def command_in(argv: Sequence[str]) -> str | None:
    """Return the first word of ``argv`` that is neither a global option nor its value: the
    command, if it is one. Return None if there is none."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
        if (
            len(word) > 2
            and "=" not in word
            and any(option.startswith(word) for option in GLOBAL_VALUE_OPTIONS)
        ):
            next(words, None)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_in(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    args.json = getattr(args, "json", False)
    policy_dir = getattr(args, "policies", None) or os.environ.get("RECOVERD_POLICIES", "policies")
    state_dir = getattr(args, "state_dir", None) or os.environ.get("RECOVERD_STATE")
    # SIGTERM stops a command as Ctrl-C does: the run is recorded interrupted and what it
    # started on the machine is stopped. (The daemon sets its own handler.)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    # What people read shows control characters from machines and users escaped.
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = TerminalText(sys.stdout), TerminalText(sys.stderr)  # type: ignore[assignment]
    try:
        ctl = Controller(Path(policy_dir), Path(state_dir) if state_dir else default_state_dir())
        return args.handler(ctl, args)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"recoverd: {len(exc.problems)} policy problem(s)", file=sys.stderr)
        return exc.exit_code
    except RecoverdError as exc:
        # One line: a remote message cannot add lines that look like ours.
        print(f"recoverd: {visible(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recoverd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if _stdout_closed():
            return SIGPIPE_EXIT
        print(f"recoverd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a state directory on a full or read-only disk
        print(f"recoverd: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # unforeseen: its reason, never a traceback (runs are recorded)
        reason = redact(str(unexpected(exc, "internal error")))
        print(f"recoverd: {visible(reason)}", file=sys.stderr)
        return 1
    finally:
        sys.stdout, sys.stderr = streams
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


SIGPIPE_EXIT = 128 + signal.SIGPIPE
"""The exit code of ``recoverd plan | head`` once head has read enough: what a program that
SIGPIPE stopped returns, without a traceback or message."""


def _stdout_closed() -> bool:
    """Return True if stdout is a pipe whose reader went away (``| head``); then point it at
    /dev/null, so that Python's own flush at exit stays quiet too."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # The write end of a pipe without a reader polls as an error (Linux, BSD, macOS).
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
