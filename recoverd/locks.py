"""Lock files in the state directory, shared by every recoverd process that uses it.

``flock`` locks belong to an open file and vanish with the process that holds them, so a
``kill -9`` never leaves a stale lock behind. The file holds the holder's pid for messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from recoverd.errors import DaemonRunning, MachineBusy, RecoverdError, RepositoryLocked
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


TURN_POLL_S = 0.2
"""How often a drill waiting for its turn on a repository looks again."""
TURN_WAIT_S = 6 * 3600.0
"""Longest wait for a turn: a drill that waited this long records its check as not run."""


class RepositoryTurns:
    """Drills of one repository (``client/repository``) taking turns, across processes.

    Restores hold the turn shared; ``restic check``, which locks the repository exclusively
    (and then fails every other restic command on it), holds it alone. The turn's file also
    keeps the repository's ``--read-data-subset`` rotation, so that the checks of every
    machine's drills read the next part of the repository, one after the other.
    """

    def __init__(self, state_dir: Path, key: str, first: Callable[[], int]) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "--"))
        self.path = state_dir / "locks" / f"repository--{name}.turn"
        self.key = key
        self._first = first
        """Checks done before the rotation was kept here (counted from the log)."""

    @contextmanager
    def turn(self, *, alone: bool) -> Iterator[None]:
        """Hold the turn for the block, shared or ``alone``; wait for it up to TURN_WAIT_S.

        Raise RepositoryLocked (transient) if the wait was longer.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = fcntl.LOCK_EX if alone else fcntl.LOCK_SH
            deadline = time.monotonic() + TURN_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RepositoryLocked(
                            f"another drill of {self.key} held the repository for more than "
                            f"{TURN_WAIT_S:g}s"
                        ) from None
                    time.sleep(TURN_POLL_S)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def checks_done(self) -> int:
        """Return how many checks of the repository ran (hold the turn alone)."""
        try:
            return int(json.loads(self.path.read_text() or "{}")["checks"])
        except (OSError, ValueError, KeyError, TypeError):
            return self._first()

    def checked(self, done: int) -> None:
        """Remember that ``done`` checks ran (hold the turn alone)."""
        self.path.write_text(json.dumps({"checks": done}) + "\n")
