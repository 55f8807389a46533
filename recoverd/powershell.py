"""Command lines and PowerShell scripts for Windows machines, quoted so that values arrive intact.

Windows has no argv: a program receives one command line and splits it itself. Every program
recoverd starts there (restic.exe, wbadmin.exe, powershell.exe) splits it with the Microsoft C
runtime's rules (``CommandLineToArgvW``), which :func:`command_line` quotes for. No ``cmd.exe``
takes part (the WinRM transport asks for none), so ``%``, ``^``, ``&`` and ``|`` mean nothing.

PowerShell travels as ``-EncodedCommand`` (base64 of UTF-16LE: nothing to quote on the command
line), and every value inside a script is a single-quoted literal (:func:`literal`), in which
PowerShell expands nothing: ``$``, backticks and double quotes stay what they are.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Mapping, Sequence

SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
"""What PowerShell takes for a single quote: the ASCII one and four typographic ones."""

POWERSHELL = [
    "powershell.exe",
    "-NoLogo",
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
]


def command_line(argv: Sequence[str]) -> str:
    """Given an argv, return the Windows command line that CommandLineToArgvW splits back into it.

    Raise ValueError if an argument holds a NUL (a command line cannot carry one).
    """
    if any("\0" in arg for arg in argv):
        raise ValueError("a Windows command line cannot carry a NUL character")
    # list2cmdline implements exactly the Microsoft C runtime rules (backslashes before quotes).
    return subprocess.list2cmdline(argv)


def literal(text: str) -> str:
    """Given any text, return it as a PowerShell single-quoted string literal."""
    # Doubling each quote character escapes it, whichever of the five it is (what PowerShell's
    # own CodeGeneration.EscapeSingleQuotedStringContent does).
    return "'" + "".join(c + c if c in SINGLE_QUOTES else c for c in text) + "'"


def encoded(script: str) -> list[str]:
    """Given a PowerShell script, return the argv that runs it (``-EncodedCommand``)."""
    payload = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return [*POWERSHELL, "-EncodedCommand", payload]


def decode(argv: Sequence[str]) -> str | None:
    """Given an argv, return the script it runs with ``-EncodedCommand``, or None."""
    lowered = [a.lower() for a in argv]
    for flag in ("-encodedcommand", "-enc", "-e"):
        if flag in lowered[1:-1]:
            payload = argv[lowered.index(flag) + 1]
            return base64.b64decode(payload).decode("utf-16-le")
    return None


def start_process(
    program: str,
    args: Sequence[str],
    *,
    env_from_stdin: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> str:
    """Return a PowerShell script that runs ``program ARGS`` and exits with its exit code.

    The names in ``env_from_stdin`` become environment variables of the program only, their
    values read from the first lines of stdin, so a secret is in no command line and no process
    list. The program inherits the script's stdout and stderr: its bytes reach the caller as it
    wrote them, not re-encoded by PowerShell. A program that cannot be started ends the script
    with exit code 127 and ``PROGRAM: not found or cannot start (reason)`` on stderr.
    """
    lines = [
        "$ErrorActionPreference = 'Stop'",
        "$start = New-Object System.Diagnostics.ProcessStartInfo",
        f"$start.FileName = {literal(program)}",
        f"$start.Arguments = {literal(command_line(args))}",
        "$start.UseShellExecute = $false",
    ]
    for name in env_from_stdin:
        lines.append(f"$start.EnvironmentVariables[{literal(name)}] = [Console]::In.ReadLine()")
    for name, value in (env or {}).items():
        lines.append(f"$start.EnvironmentVariables[{literal(name)}] = {literal(value)}")
    lines += [
        "try { $process = [System.Diagnostics.Process]::Start($start) }",
        "catch {",
        "  [Console]::Error.WriteLine($start.FileName + ': not found or cannot start ('"
        " + $_.Exception.InnerException.Message + ')')",
        "  exit 127",
        "}",
        "$process.WaitForExit()",
        "exit $process.ExitCode",
    ]
    return "\n".join(lines) + "\n"
