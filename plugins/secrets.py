"""Secret resolvers for ``env:NAME``, ``file:/path``, ``command:...`` and ``vault:NAME``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import recoverd
from recoverd.errors import SecretError
from recoverd.vault import VaultResolver

COMMAND_TIMEOUT = 30
MAX_SECRET_BYTES = 64 * 1024
"""How much of a secret file or command output is read: a password is a line, not a disk
(``file:/dev/zero`` must not fill the memory)."""


def _first_line(data: bytes, what: str) -> str:
    """Return the first line of a secret's bytes. Raise SecretError if it is not UTF-8 text
    (restic and the remote shell take the password as text; the bytes are never shown)."""
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if len(line) >= MAX_SECRET_BYTES:
        raise SecretError(f"{what} has no line break in its first {MAX_SECRET_BYTES} bytes")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretError(
            f"{what} is not UTF-8 text (byte {exc.start} of its first line); write the "
            "password as UTF-8"
        ) from None


def resolve_env(name: str) -> str:
    """Return the environment variable ``name``. Raise SecretError if it is unset."""
    try:
        return os.environ[name]
    except KeyError:
        raise SecretError(f"environment variable {name} is not set") from None


def resolve_file(path: str) -> str:
    """Return the first line of the file at ``path``. Raise SecretError if it is unreadable
    or not UTF-8 text."""
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_SECRET_BYTES)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SecretError(
            f"cannot read secret file {path!r}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return _first_line(data, f"secret file {path!r}")


def resolve_command(command: str) -> str:
    """Run ``command`` with the shell and return the first line it prints.

    Raise SecretError if it fails or runs longer than 30 s. Its stderr is passed through to
    ours (a password manager may ask for a PIN); its stdout, the secret, is never shown.
    """
    try:
        done = subprocess.run(
            command,
            shell=True,  # the policy author wrote a shell command on purpose
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SecretError(f"secret command did not finish within {COMMAND_TIMEOUT}s") from None
    if done.returncode != 0:
        raise SecretError(f"secret command exited with status {done.returncode}")
    return _first_line(done.stdout[:MAX_SECRET_BYTES], "the output of the secret command")


@recoverd.hookimpl
def recoverd_add_secret_resolvers(register: Any) -> None:
    register.add("env", resolve_env)
    register.add("file", resolve_file)
    register.add("command", resolve_command)
    register.add("vault", VaultResolver)
