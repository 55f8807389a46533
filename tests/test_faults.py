"""Fault injection: cut connections, dead owners of locks, a full disk, a changed host key,
malformed policies, two shells at once, rekeys — what a fleet meets at night.

Each test injects one fault into real parts (a private sshd on 127.0.0.1, the real restic) and
asserts what the user relies on: the log says what happened, nothing is corrupt, the next run
works. ``pytest -k "fault or kill or interrupt or enospc or disk_full or rekey"`` selects them.

The controller killed with SIGKILL mid-run (the record becomes ``interrupted`` at the next start
and the daemon redoes the run once) is proven by
tests/test_daemon_process.py::test_kill_9_mid_run_then_restart_records_interrupted_and_redoes_once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_backup_e2e import PASSWORD, Workplace

from recoverd.cli import main
from recoverd.engine import Progress
from recoverd.testing import ThrowawaySSHD

BIG_FILES = 48
BIG_FILE_SIZE = 4 << 20
"""A 192 MiB tree of random data: restic needs a few seconds for it here."""


@pytest.fixture(scope="module")
def private_sshd() -> Iterator[ThrowawaySSHD]:
    """An sshd of this module alone: its sessions are cut and its host key replaced."""
    with ThrowawaySSHD() as server:
        yield server


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("big") / "data"
    tree.mkdir()
    for i in range(BIG_FILES):
        (tree / f"part-{i:03}.bin").write_bytes(os.urandom(BIG_FILE_SIZE))
    return tree


@pytest.fixture
def place(
    tmp_path: Path, private_sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> Workplace:
    return Workplace(tmp_path, private_sshd, monkeypatch)


def restic_env(repo: Path) -> dict[str, str]:
    return {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}


def restic(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["restic", *args], env=restic_env(repo), capture_output=True, text=True, check=check
    )


def restic_locks(repo: Path) -> list[str]:
    return restic(repo, "--no-lock", "list", "locks").stdout.split()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class CutOnFirstData:
    """A progress line stand-in that cuts every SSH session once restic reports data read."""

    def __init__(self, sshd: ThrowawaySSHD) -> None:
        self.sshd = sshd
        self.cuts: list[int] = []

    def __call__(self, label: str) -> Any:
        def report(progress: Progress) -> None:
            if progress.bytes_done and not self.cuts:
                self.cuts.extend(self.sshd.kill_sessions())

        return report


def test_fault_connection_killed_mid_backup_fails_repository_intact_next_run_succeeds(
    place: Workplace,
    big_tree: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    place.write_policy([big_tree])
    cutter = CutOnFirstData(place.sshd)
    monkeypatch.setattr("recoverd.commands.backup.ProgressLine", cutter)
    assert main(["backup", "ws-042"]) == 1
    assert cutter.cuts, "restic finished before the connection could be cut"
    (cut,) = place.log(capsys)
    assert cut["state"] == "failed" and cut["action"] == "backup"
    assert "connection to ws-042" in cut["error"] and "lost" in cut["error"]
    assert cut["stats"]["transient"] is True  # the daemon retries it

    # The cut leaves restic running on the machine (SSH cannot signal it, and it survives
    # its closed stdout): it may still finish its snapshot. Whatever it wrote is consistent
    # (restic writes packs, then the index, the snapshot last).
    wait_for(lambda: not _restic_running(place.repo), 60, "the orphaned restic to end")
    assert restic(place.repo, "--no-lock", "check").returncode == 0

    monkeypatch.undo()
    monkeypatch.setenv("TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("RECOVERD_POLICIES", str(place.policies))
    monkeypatch.setenv("RECOVERD_STATE", str(place.state))
    assert main(["backup", "ws-042"]) == 0
    runs = place.log(capsys)
    backup, prune = runs[-2:]
    assert backup["state"] == "succeeded" and backup["stats"]["files_processed"] == BIG_FILES
    assert prune["state"] == "succeeded"
    assert restic_locks(place.repo) == []
    assert restic(place.repo, "check").returncode == 0


def _restic_running(repo: Path) -> bool:
    """Return True while a restic process works on ``repo`` (its environment names it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() != "restic":
                continue
            if f"RESTIC_REPOSITORY={repo}".encode() in (proc / "environ").read_bytes():
                return True
    return False


def test_fault_stale_lock_removed_only_when_its_owner_is_dead(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(1000))
    place.write_policy([tree])
    restic(place.repo, "init")
    # A live restic of this machine holding a lock: a stdin backup whose stream never ends.
    holder = subprocess.Popen(
        ["restic", "backup", "--stdin"],
        env=restic_env(place.repo),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: restic_locks(place.repo), 10, "the lock of the live restic")
        # The backup shares the repository; retention needs it alone and must not get it.
        assert main(["backup", "ws-042"]) == 1
        backup, prune = place.log(capsys)
        assert backup["state"] == "succeeded"
        assert prune["state"] == "failed" and "locked" in prune["error"]
        assert len(restic_locks(place.repo)) == 1  # a live run's lock is never taken away

        holder.kill()  # SIGKILL: no cleanup, its lock stays behind with a dead pid
        holder.wait()
        assert len(restic_locks(place.repo)) == 1
        assert main(["backup", "ws-042"]) == 0
        prune = place.log(capsys)[-1]
        assert prune["action"] == "prune" and prune["state"] == "succeeded"
        assert prune["stats"]["stale_locks_removed"] == 1
        assert restic_locks(place.repo) == []
    finally:
        holder.kill()
        holder.wait()
