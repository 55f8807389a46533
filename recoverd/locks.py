"""Lock files in the state directory, shared by every recoverd process that uses it.

``flock`` locks belong to an open file and vanish with the process that holds them, so a
``kill -9`` never leaves a stale lock behind. The file holds the holder's pid for messages.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from recoverd.errors import DaemonRunning, MachineBusy, RecoverdError
from recoverd.policy.model import Machine


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "another process"


@contextmanager
def _exclusive(path: Path, busy: type[RecoverdError], message: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block. Raise ``busy`` if it is held."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(message.format(holder=_holder(path))) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def machine_lock(state_dir: Path, machine: Machine) -> AbstractContextManager[None]:
    """Hold the machine's lock: one run per machine at a time, across processes.

    Raise MachineBusy (transient) if another run holds it.
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{machine.client}--{machine.name}")
    return _exclusive(
        state_dir / "locks" / f"{name}.lock",
        MachineBusy,
        f"{machine.qualified_name} is busy with another run ({{holder}}); it runs one at a time",
    )


def daemon_lock(state_dir: Path) -> AbstractContextManager[None]:
    """Hold the state directory's daemon lock. Raise DaemonRunning if a daemon holds it."""
    return _exclusive(
        state_dir / "daemon.lock",
        DaemonRunning,
        f"a recoverd daemon ({{holder}}) already runs for the state directory {state_dir}; "
        "stop it first, or give this one another --state",
    )
