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


def resolve_env(name: str) -> str:
    """Return the environment variable ``name``. Raise SecretError if it is unset."""
    try:
        return os.environ[name]
    except KeyError:
        raise SecretError(f"environment variable {name} is not set") from None


def resolve_file(path: str) -> str:
    """Return the first line of the file at ``path``. Raise SecretError if it is unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    return text.splitlines()[0] if text else ""


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
    text = done.stdout.decode("utf-8", "replace")
    return text.splitlines()[0] if text else ""


@recoverd.hookimpl
def recoverd_add_secret_resolvers(register: Any) -> None:
    register.add("env", resolve_env)
    register.add("file", resolve_file)
    register.add("command", resolve_command)
    register.add("vault", VaultResolver)
