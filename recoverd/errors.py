"""The typed errors recoverd turns into states, messages and exit codes.

Every foreseeable problem is one of these; the CLI prints their message (never a traceback) and
maps them to the exit codes of the SPEC.
"""

from __future__ import annotations


class RecoverdError(Exception):
    """A foreseeable problem with a message meant for the user."""

    exit_code = 1
    transient = False
    """True when retrying later may succeed (host down, repository locked)."""


class UsageError(RecoverdError):
    """The command line or the policy is wrong: exit 2."""

    exit_code = 2


class PolicyError(UsageError):
    """One or more policy files are invalid; ``problems`` holds every message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PluginError(UsageError):
    """A plugin is broken or missing (duplicate name, unknown kind)."""


class SecretError(RecoverdError):
    """A secret reference cannot be resolved."""


class TransportError(RecoverdError):
    """Base of the errors a transport raises."""


class Unreachable(TransportError):
    """The machine cannot be reached (refused, timed out, name unknown)."""

    transient = True


class HostKeyRejected(TransportError):
    """The machine's host key is unknown or differs from the pinned or known one."""


class AuthenticationFailed(TransportError):
    """The machine refused our credentials."""


class CommandTimeout(TransportError):
    """A remote command ran longer than allowed and was stopped."""

    transient = True


class Stalled(CommandTimeout):
    """A command made no progress (no output, no input taken) for its ``stall_after`` and was
    stopped; the run is recorded failed with ``stats.stalled``, and retried."""


class ConnectionLost(TransportError):
    """The connection dropped while a command was running."""

    transient = True


class EngineError(RecoverdError):
    """A backup tool on the machine failed; the message says why and what to do."""


class RepositoryLocked(EngineError):
    """Another process holds the repository lock."""

    transient = True


class WrongPassword(EngineError):
    """The repository password does not open the repository."""


class ToolMissing(EngineError):
    """A program recoverd needs is not installed on the machine."""


class Interrupted(RecoverdError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM): exit 130."""

    exit_code = 130


class CertificateRejected(HostKeyRejected):
    """The machine's TLS certificate does not validate against the trusted CAs (WinRM)."""


class MachineBusy(RecoverdError):
    """Another run (in this or another recoverd process) is working on the machine."""

    transient = True


class DaemonRunning(RecoverdError):
    """Another ``recoverd daemon`` already serves this state directory: exit 1."""


class UnexpectedError(RecoverdError):
    """An exception recoverd did not foresee (a library's own, or a bug), carried with its type
    and message so that it ends a run ``failed`` with the reason, as a foreseen one does."""


def unexpected(exc: BaseException, doing: str) -> UnexpectedError:
    """Given an exception that is no RecoverdError and what was being done, return the
    UnexpectedError that says both (the message shortened to a few hundred characters)."""
    text = " ".join(str(exc).split()) or "no message"
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 3] + "..."
    return UnexpectedError(f"{doing}: unexpected {type(exc).__name__}: {text}")


MESSAGE_LIMIT = 300


class RestoreRefused(RecoverdError):
    """A restore was not started: its plan is unsafe, or nobody confirmed it. Nothing was
    written."""
