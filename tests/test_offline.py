"""Offline workstations and Wake-on-LAN, against the real sshd and a loopback UDP receiver.

A sleeping machine is a throwaway sshd that is stopped; the test's UDP receiver on 127.0.0.1
plays the LAN: when the magic packet for the machine's MAC arrives, it starts the sshd again.
No packet ever goes to a real broadcast address.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from test_backup_e2e import PASSWORD

from recoverd.actions.backup import backup_machine
from recoverd.actions.due import machine_duties
from recoverd.cli import main
from recoverd.clock import FakeClock, use_clock
from recoverd.controller import Controller
from recoverd.log.maintenance import utc_now
from recoverd.testing import ThrowawaySSHD
from recoverd.wake import magic_packet

MAC = "52:54:00:12:34:56"

POLICY = """\
[client]
name = "Acme Trading Co."

[repositories.nas]
url = "{repo}"
password = "env:TEST_REPO_PASSWORD"

[machines.ws-042]
{ssh}
connect_timeout = 2
mac = "{mac}"
{extra}

[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{tree}"]
every = "day at 01:30"

[machines.srv-01]
{ssh}
connect_timeout = 2
role = "server"

[[machines.srv-01.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{tree}"]
"""


@pytest.fixture
def asleep() -> Iterator[ThrowawaySSHD]:
    """A machine that is asleep: its sshd was started once (keys, port) and stopped."""
    server = ThrowawaySSHD().start()
    server.stop(remove=False)
    yield server
    server.stop()


class LanReceiver:
    """A UDP socket on 127.0.0.1 that records packets and wakes ``sleeper`` on its magic one."""

    def __init__(self, sleeper: ThrowawaySSHD) -> None:
        self.sleeper = sleeper
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet = self.sock.recv(2048)
            except TimeoutError:
                continue
            self.packets.append(packet)
            if packet == magic_packet(MAC):
                self.sleeper.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def controller(tmp_path: Path, sshd: ThrowawaySSHD, extra: str = "") -> Controller:
    policies, tree = tmp_path / "policies", tmp_path / "data"
    policies.mkdir()
    tree.mkdir()
    (tree / "a").write_text("hello")
    (policies / "acme.toml").write_text(
        POLICY.format(
            repo=tmp_path / "repo", ssh=sshd.policy_lines, mac=MAC, extra=extra, tree=tree
        )
    )
    return Controller(policies, tmp_path / "state")


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REPO_PASSWORD", PASSWORD)


def test_unreachable_workstation_is_skipped_offline_and_alert_is_due_after_alert_after(
    tmp_path: Path, asleep: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = controller(tmp_path, asleep, extra='alert_after = "3d"')
    machine = ctl.policies.find_machine("ws-042")
    (first,) = backup_machine(ctl, machine, list(machine.levels), trigger="schedule")
    assert first["state"] == "skipped"
    assert first["error"].startswith("offline: cannot reach ws-042")
    stats = first["stats"]
    assert stats["offline"] is True and stats["transient"] is True
    assert stats["offline_for_s"] == 0 and stats["offline_alert"] is False
    assert stats["alert_after_s"] == 3 * 86400
    # The daemon tries a skipped workstation again within the slot, as after a failure.
    (duty,) = machine_duties(ctl.log, machine, "UTC", utc_now())
    assert duty.reason == "retry 1/3"

    with use_clock(FakeClock(utc_now() + timedelta(days=3, minutes=1))):
        (later,) = backup_machine(ctl, machine, list(machine.levels), trigger="schedule")
    assert later["state"] == "skipped"
    assert later["stats"]["offline_since"] == stats["offline_since"]  # the same incident
    assert later["stats"]["offline_for_s"] >= 3 * 86400
    assert later["stats"]["offline_alert"] is True

    capsys.readouterr()
    later_on = utc_now() + timedelta(days=3, minutes=2)
    where = ["--policies", str(ctl.policy_dir), "--state", str(ctl.state_dir)]
    month = ["--client", "acme", "--month", later_on.strftime("%Y-%m")]
    with use_clock(FakeClock(later_on)):
        assert main([*where, "report", *month]) == 0
    report = capsys.readouterr().out
    assert "| nightly | offline | unreachable, skipped; offline since " in report
    assert "longer than alert\\_after (3 d 0 h)" in report  # Markdown escapes the _


def test_unreachable_server_fails(tmp_path: Path, asleep: ThrowawaySSHD) -> None:
    ctl = controller(tmp_path, asleep)
    machine = ctl.policies.find_machine("srv-01")
    assert machine.offline == "fail"
    (run,) = backup_machine(ctl, machine, list(machine.levels))
    assert run["state"] == "failed" and run["stats"] == {"transient": True}
    assert "cannot reach srv-01" in run["error"]


def test_wake_sends_the_magic_packet_and_waits_for_ssh_before_the_run(
    tmp_path: Path, asleep: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recoverd.wake.WAKE_POLL_S", 0.5)
    lan = LanReceiver(asleep)
    try:
        extra = f'wake = true\nwake_to = "127.0.0.1:{lan.port}"\nwake_wait = "30s"'
        ctl = controller(tmp_path, asleep, extra=extra)
        machine = ctl.policies.find_machine("ws-042")
        (run,) = backup_machine(ctl, machine, list(machine.levels))
    finally:
        lan.close()
    assert lan.packets == [magic_packet(MAC)]
    assert len(lan.packets[0]) == 102
    assert run["state"] == "succeeded", run["error"]
    assert run["stats"]["wake"]["sent_to"] == f"127.0.0.1:{lan.port}"
    assert run["stats"]["wake"]["via"] == "controller"


def test_wake_via_another_machine_sends_the_packet_from_there(
    tmp_path: Path, asleep: ThrowawaySSHD, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recoverd.wake.WAKE_POLL_S", 0.5)
    lan = LanReceiver(asleep)
    try:
        extra = f'wake = true\nwake_via = "gw"\nwake_to = "127.0.0.1:{lan.port}"\nwake_wait = "30s"'
        ctl = controller(tmp_path, asleep, extra=extra)
        gateway = f'\n[machines.gw]\n{sshd.policy_lines}\nrole = "server"\n'
        policy = ctl.policy_dir / "acme.toml"
        policy.write_text(policy.read_text() + gateway)
        ctl = Controller(ctl.policy_dir, ctl.state_dir)
        machine = ctl.policies.find_machine("ws-042")
        (run,) = backup_machine(ctl, machine, list(machine.levels))
    finally:
        lan.close()
    assert lan.packets == [magic_packet(MAC)]
    assert run["state"] == "succeeded", run["error"]
    assert run["stats"]["wake"]["via"] == "gw"


def test_woken_machine_that_never_answers_is_skipped_saying_it_was_woken(
    tmp_path: Path, asleep: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recoverd.wake.WAKE_POLL_S", 0.5)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    try:
        port = receiver.getsockname()[1]
        extra = f'wake = true\nwake_to = "127.0.0.1:{port}"\nwake_wait = "2s"'
        ctl = controller(tmp_path, asleep, extra=extra)
        machine = ctl.policies.find_machine("ws-042")
        (run,) = backup_machine(ctl, machine, list(machine.levels))
        assert receiver.recv(2048) == magic_packet(MAC)
    finally:
        receiver.close()
    assert run["state"] == "skipped"
    assert "did not answer within 2s of a Wake-on-LAN packet to 52:54:00:12:34:56" in run["error"]
    json.dumps(run)
