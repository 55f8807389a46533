"""Every run is recorded, whatever stops it: errors no transport foresaw, on real servers.

A WS-Management server on loopback that answers NTLM with a 401 and no challenge (requests_ntlm
raises a PermissionError, which the winrm transport now names), and a TCP server that speaks an
SSH banner, then a key exchange whose algorithm lists are not UTF-8 (paramiko raises a
UnicodeDecodeError, which no transport foresees): backup, verify and the daemon record their
runs failed with the reason and exit 1; restore exits 1 with it.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recoverd.actions.daemon import Daemon
from recoverd.cli import main
from recoverd.clock import FakeClock, use_clock
from recoverd.controller import Controller
from recoverd.log import MaintenanceLog
from recoverd.plugins import PluginHost
from recoverd.runs import exit_code, recorded_run
from recoverd.testing import ThrowawaySSHD
from recoverd.testing_wsman import WSManServer

WINDOWS = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "UTC"

[repositories.nas]
url = 'D:\\Backups\\restic'
password = "env:TEST_UNFORESEEN_PASSWORD"

[machines.fin-pc]
transport = "winrm"
address = "127.0.0.1"
port = {port}
https = false
auth = "ntlm"
user = "recoverd"
password = "env:TEST_UNFORESEEN_PASSWORD"
connect_timeout = 3

[[machines.fin-pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ['C:\\Users']
every = "day at 01:00"

[[machines.fin-pc.levels]]
name = "drill"
kind = "verify"
of = "nightly"
"""

POSIX = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "UTC"

[repositories.nas]
url = "{root}/repo"
password = "env:TEST_UNFORESEEN_PASSWORD"

[machines.ws-042]
address = "127.0.0.1"
port = {port}
user = "root"
host_key = "{host_key}"
connect_timeout = 3

[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{root}/home"]
every = "day at 01:00"

[[machines.ws-042.levels]]
name = "weekly-image"
kind = "image"
repository = "nas"
device = "{root}/disk.img"
every = "day at 01:00"

[[machines.ws-042.levels]]
name = "drill"
kind = "verify"
of = "nightly"
"""


def _packet(payload: bytes) -> bytes:
    padding = 8 - (len(payload) + 5) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">IB", len(payload) + padding + 1, padding) + payload + bytes(padding)


def _name_list(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


GARBAGE_KEXINIT = _packet(
    bytes([20]) + b"\x11" * 16 + _name_list(b"\xff\xfe\xfd") * 10 + b"\x00" + bytes(4)
)
"""An SSH key exchange whose algorithm name lists are not UTF-8."""


class GarbageSSHServer:
    """A TCP server on 127.0.0.1: an SSH banner, then a key exchange paramiko cannot read."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the server ends
                return
            self.connections += 1
            with conn:
                try:
                    conn.settimeout(5)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + GARBAGE_KEXINIT)
                    conn.recv(65536)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def garbage_ssh() -> Iterator[GarbageSSHServer]:
    server = GarbageSSHServer()
    yield server
    server.close()


@pytest.fixture
def no_challenge(tmp_path: Path) -> Iterator[WSManServer]:
    with WSManServer(tmp_path / "drives", https=False, auth="ntlm", ntlm_challenge=False) as s:
        yield s


@pytest.fixture
def site(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    sshd: ThrowawaySSHD,
) -> Path:
    monkeypatch.setenv("TEST_UNFORESEEN_PASSWORD", "Unforeseen-Pa55word")
    policies = tmp_path / "policies"
    policies.mkdir()
    if request.param == "winrm":
        server = request.getfixturevalue("no_challenge")
        text = WINDOWS.format(port=server.port)
    else:
        server = request.getfixturevalue("garbage_ssh")
        text = POSIX.format(root=tmp_path, port=server.port, host_key=sshd.host_key_line)
    (policies / "acme.toml").write_text(text)
    monkeypatch.setenv("RECOVERD_POLICIES", str(policies))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    return tmp_path


MACHINE = {"winrm": "fin-pc", "ssh": "ws-042"}
REASON = {
    "winrm": "answered HTTP 401 without an NTLM challenge (auth ntlm): WinRM there does not "
    "offer Negotiate",
    "ssh": "unexpected UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff",
}


def runs(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("site", ["winrm", "ssh"], indirect=True)
def test_backup_verify_and_restore_record_an_unforeseen_connection_error(
    site: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind = request.node.callspec.params["site"]
    machine = MACHINE[kind]
    # As in a new `recoverd` process: no logging handlers that an earlier test set up.
    monkeypatch.setattr(logging.root, "handlers", [])
    assert main(["backup", machine]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    backups = runs(capsys)
    levels = ["nightly"] + (["weekly-image"] if kind == "ssh" else [])
    assert [(r["level"], r["action"], r["state"]) for r in backups] == [
        (level, "backup", "failed") for level in levels
    ]
    for run in backups:
        assert REASON[kind] in run["error"]
        if kind == "ssh":  # paramiko's own exception, which no transport foresaw
            assert f"cannot connect to {machine} (root@127.0.0.1:" in run["error"]
        assert REASON[kind] in out  # the command's output says why, level by level

    assert main(["verify", machine, "--level", "drill"]) == 1
    (drill,) = [r for r in runs(capsys) if r["action"] == "verify"]
    assert drill["state"] == "failed" and REASON[kind] in drill["error"]

    to = "C:\\Restored" if kind == "winrm" else str(site / "restored")
    assert main(["restore", machine, "--level", "nightly", "--to", to, "--yes"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and REASON[kind] in err
    assert len(runs(capsys)) == len(backups) + 1  # nothing started: nothing more recorded


@pytest.mark.parametrize("site", ["winrm", "ssh"], indirect=True)
def test_daemon_records_an_unforeseen_connection_error(
    site: Path, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["site"]
    with use_clock(FakeClock(datetime(2026, 5, 1, 1, 0, 30, tzinfo=UTC))):
        ctl = Controller(site / "policies", site / "state")
        daemon = Daemon(ctl, tick_seconds=3600)
        daemon.tick()
        assert daemon.wait_idle(60)
        assert daemon.shutdown(5) == []
    backups = [v for v in ctl.log.runs() if v["action"] == "backup"]
    assert backups and {v["state"] for v in backups} == {"failed"}
    assert all(REASON[kind] in v["error"] for v in backups)


def test_recorded_run_records_an_unforeseen_error_like_a_foreseen_one(tmp_path: Path) -> None:
    host = PluginHost()
    mlog = MaintenanceLog(tmp_path / "state", host["log_sinks"], host["notifiers"])
    start = {"client": "acme", "machine": "ws-1", "level": "n", "kind": "files"}
    with recorded_run(mlog, **start, action="backup") as run:
        {}["missing"]  # a bug: not re-raised, the caller goes on to its next run
    assert run.view["state"] == "failed"
    assert run.view["error"] == "internal error: unexpected KeyError: 'missing'"
    assert run.view["stats"]["raised_at"].startswith("test_unforeseen_errors.py:")
    assert exit_code([run.view]) == 1
    with pytest.raises(SystemExit), recorded_run(mlog, **start, action="backup"):
        raise SystemExit(3)  # not an Exception: recorded, then on its way
    assert mlog.runs()[-1]["state"] == "failed"


def test_cli_prints_the_reason_of_an_unforeseen_error_without_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import recoverd.cli

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("bad\nvalue")

    monkeypatch.setattr(recoverd.cli, "Controller", broken)
    assert main(["status"]) == 1
    assert capsys.readouterr().err == "recoverd: internal error: unexpected ValueError: bad value\n"
