"""Fixtures shared by the test suite: real parts, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recoverd.policy.model import Machine
from recoverd.testing import ThrowawaySSHD


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
