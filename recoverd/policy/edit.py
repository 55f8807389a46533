"""Edit a policy file in place and keep what a person wrote: comments, order, layout.

Only ``recoverd enroll`` writes policy files. It changes one value at a time through tomlkit
(a TOML library that round-trips documents), checks that the result still loads, and swaps the
file in atomically with its permissions kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tomlkit
import tomlkit.exceptions

from recoverd.errors import UsageError


def set_machine_key(path: Path, machine: str, key: str, value: str) -> None:
    """Given a policy file, set ``key = value`` in its ``[machines.MACHINE]`` table.

    Raise UsageError if the file has no such table or cannot be written.
    """
    text = path.read_text(encoding="utf-8")
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise UsageError(f"{path}: cannot edit it: {exc}") from None
    machines = document.get("machines")
    table = machines.get(machine) if isinstance(machines, dict) else None
    if not isinstance(table, dict):
        raise UsageError(f"{path}: has no [machines.{machine}] table to write {key} into")
    table[key] = value
    replace_text(path, tomlkit.dumps(document))


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it), keeping the
    file's mode. Raise UsageError if it cannot be written."""
    mode = path.stat().st_mode & 0o7777
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
