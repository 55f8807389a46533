"""Fixtures shared by the test suite: real parts, started once per session."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverd.policy.model import Machine
from recoverd.testing import ThrowawaySSHD

RESTIC_UNDER_TEST = "RECOVERD_TEST_RESTIC"
"""Environment variable: the restic binary the suite runs, on the controller and on every test
machine (``./setup.sh test`` runs the suite once per supported restic). Unset: ``restic`` on
PATH."""


def pytest_configure(config: pytest.Config) -> None:
    """Put the restic under test first on PATH before any sshd starts: test machines are this
    host, and ThrowawaySSHD hands its PATH to the commands it runs."""
    chosen = os.environ.get(RESTIC_UNDER_TEST)
    if not chosen:
        return
    binary = Path(chosen).resolve()
    if not os.access(binary, os.X_OK):
        raise pytest.UsageError(f"{RESTIC_UNDER_TEST}={chosen}: not an executable file")
    folder = Path(tempfile.mkdtemp(prefix="recoverd-restic-"))
    (folder / "restic").symlink_to(binary)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_report_header(config: pytest.Config) -> str:
    found = subprocess.run(["restic", "version"], capture_output=True, text=True, check=False)
    return f"restic under test: {found.stdout.strip() or 'not found'}"


@pytest.fixture(scope="session")
def sshd() -> Iterator[ThrowawaySSHD]:
    """A real OpenSSH server on 127.0.0.1, shared by the whole session."""
    with ThrowawaySSHD() as server:
        yield server


@pytest.fixture
def ssh_machine(sshd: ThrowawaySSHD) -> Machine:
    """A machine reached over ssh as root on the session's sshd, host key pinned."""
    return Machine(
        name="ws-test",
        client="acme",
        transport="ssh",
        address="127.0.0.1",
        port=sshd.port,
        user="root",
        identity=sshd.client_key,
        host_key=sshd.host_key_line,
        connect_timeout=5,
    )


@pytest.fixture(autouse=True)
def fresh_redactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is its own recoverd process: secrets resolved by one test are not masked in
    the next (a test's password "wrong password" would otherwise hide that very message)."""
    import recoverd.secrets

    monkeypatch.setattr(recoverd.secrets, "_known", set())
