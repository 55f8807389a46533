"""Runs that cannot wedge: a silent command, a machine that stops answering, endless output.

Real parts throughout: the session's OpenSSH server on 127.0.0.1, real processes on the
"machine" (this host), the real daemon with its repository gate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_backup_e2e import POLICY, Workplace
from test_ssh_transport import NO_SECRETS, live_processes_with

from recoverd.actions.daemon import Daemon
from recoverd.cli import main
from recoverd.controller import Controller
from recoverd.errors import ConnectionLost, Stalled
from recoverd.policy.model import Machine
from recoverd.testing import ThrowawaySSHD
from recoverd.transport import CommandRequest
from recoverd_plugins.ssh import SSHTransport


def test_run_silent_command_is_stopped_after_stall_after(ssh_machine: Machine) -> None:
    tag = f"300.{secrets.randbelow(10**9):09}"
    with SSHTransport(ssh_machine, NO_SECRETS) as transport:
        transport.stall_after = 1.5
        started = time.monotonic()
        with pytest.raises(Stalled) as raised:
            transport.run(CommandRequest(["sh", "-c", f"echo working; exec sleep {tag}"]))
        took = time.monotonic() - started
        assert 1.5 <= took < 10
        message = str(raised.value)
        assert message.startswith("stalled: sh -c") and "made no progress for 1.5s" in message
        assert "it was stopped on the machine (SIGTERM to process group" in message
        assert Stalled.transient
        assert live_processes_with(tag) == []
        # The connection is fine: the next command runs.
        assert transport.run(CommandRequest(["true"])).exit_status == 0


def test_run_command_that_keeps_printing_is_not_stalled(ssh_machine: Machine) -> None:
    with SSHTransport(ssh_machine, NO_SECRETS) as transport:
        transport.stall_after = 1.0
        argv = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.3; done"]
        outcome = transport.run(CommandRequest(argv))
        assert outcome.exit_status == 0 and outcome.stdout.split()[-1] == b"10"


def _session_processes(sshd: ThrowawaySSHD, shell_pid: int) -> list[int]:
    """Return the sshd processes between the listener and the command's shell."""
    chain, pid = [], shell_pid
    while True:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        parent = int(stat[1])
        if parent == sshd.pid:
            return chain
        chain.append(parent)
        pid = parent


def test_run_connection_that_stops_answering_is_lost_within_the_bound_and_stopped(
    ssh_machine: Machine, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop that leaves the network: its sshd no longer answers anything (SIGSTOP), the
    command keeps running. The run gives up within DEAD_AFTER_S and stops the command over a
    new connection."""
    monkeypatch.setattr("recoverd_plugins.ssh.PROBE_AFTER_S", 1.0)
    monkeypatch.setattr("recoverd_plugins.ssh.DEAD_AFTER_S", 3.0)
    tag = f"0.2{secrets.randbelow(10**9):09}"
    # It prints while it runs: only the connection is dead, not the command.
    argv = ["sh", "-c", f"echo $$; while :; do sleep {tag}; echo tick; done"]
    stopped: list[int] = []
    result: list[BaseException | object] = []

    def freeze(chunk: bytes) -> None:
        if not stopped:
            for pid in _session_processes(sshd, int(chunk.split()[0])):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

    transport = SSHTransport(ssh_machine, NO_SECRETS)
    transport.connect()
    try:
        started = time.monotonic()
        try:
            transport.run(CommandRequest(argv, on_stdout=freeze))
        except BaseException as exc:
            result.append(exc)
        took = time.monotonic() - started
        assert stopped, "the session was never frozen"
        assert isinstance(result[0], ConnectionLost), result
        assert "the machine stopped answering" in str(result[0])
        assert "it was stopped on the machine" in str(result[0])
        assert took < 3.0 + 10, f"took {took:.1f}s"
        assert live_processes_with(tag) == []
    finally:
        transport.close()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)


FAKE_RESTIC = """#!/bin/sh
# A restic that reports its version, then hangs without a word (a dead NFS mount).
if [ "$1" = version ]; then echo "restic 0.14.0 compiled with go1.19 on linux/amd64"; exit 0; fi
exec sleep {tag}
"""


def test_daemon_stalled_backup_is_recorded_failed_transient_and_frees_its_slot(
    tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = Workplace(tmp_path, sshd, monkeypatch)
    tag = f"600.{secrets.randbelow(10**9):09}"
    fake = tmp_path / "restic"
    fake.write_text(FAKE_RESTIC.format(tag=tag))
    fake.chmod(0o755)
    extra = f'host_key = "{sshd.host_key_line}"\nrestic = "{fake}"\nstall_after = "2s"'
    (place.policies / "acme.toml").write_text(
        POLICY.format(
            repo=place.repo,
            port=sshd.port,
            identity=sshd.client_key,
            host_key_line=extra,
            timeout=5,
            paths=json.dumps(str(tmp_path)),
        )
    )
    ctl = Controller(place.policies, place.state)
    daemon = Daemon(ctl, max_parallel=2)
    started = time.monotonic()
    daemon.tick()
    assert daemon.gate.writers("acme/nas") == 1
    assert daemon.wait_idle(2 + 15), "the stalled run still holds its slot"
    assert time.monotonic() - started < 2 + 15
    assert daemon.gate.writers("acme/nas") == 0
    (run,) = ctl.log.runs()
    assert run["state"] == "failed"
    assert run["stats"] == {"transient": True, "stalled": True}
    assert run["error"].startswith("stalled: ")
    assert run["error"].startswith(f"stalled: {str(fake)[:60]}")  # restic's argv, no wrapper
    assert "made no progress for 2s" in run["error"]
    assert "stopped on the machine" in run["error"]
    assert live_processes_with(tag) == []
    daemon.shutdown(0)


RETRYING_RESTIC = """#!/bin/sh
# A restic that cannot write to its repository and retries: the same status every 0.2 s, and
# retry notices, for ever ({moving}: or its counters move, and it ends after 3 s).
if [ "$1" = version ]; then echo "restic 0.18.0 compiled with go1.24.4 on linux/amd64"; exit 0; fi
cat >/dev/null  # the credentials
i=0
while :; do
  i=$((i + 1))
  if [ {moving} = yes ]; then done=$i; else done=7; fi
  echo '{{"message_type":"status","percent_done":0.5,"total_files":9,'\\
'"files_done":'$done',"total_bytes":900,"bytes_done":'$done'00}}'
  echo 'Save(<data/1f2e3d4c5b>) returned error, retrying after 1.2s: no space left on device' >&2
  if [ {moving} = yes ] && [ $i -ge 15 ]; then
    echo '{{"message_type":"summary","files_new":9,"files_changed":0,'\\
'"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_added":900,'\\
'"total_files_processed":9,"total_bytes_processed":900,"snapshot_id":"{tag_hex}"}}'
    exit 0
  fi
  sleep 0.2
done
"""


@pytest.mark.parametrize("moving", ["no", "yes"])
def test_a_restic_that_repeats_its_status_while_retrying_is_stalled(
    tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch, moving: str
) -> None:
    """Output alone is no progress for a backup: restic retrying a full or unreachable
    repository repeats the same status line for up to 15 minutes (0.17+). A backup whose
    counters move is left alone, however many retry notices it prints."""
    place = Workplace(tmp_path, sshd, monkeypatch)
    fake = tmp_path / "restic"
    fake.write_text(RETRYING_RESTIC.format(moving=moving, tag_hex="ab" * 32))
    fake.chmod(0o755)
    extra = f'host_key = "{sshd.host_key_line}"\nrestic = "{fake}"\nstall_after = "2s"'
    (place.policies / "acme.toml").write_text(
        POLICY.format(
            repo=place.repo,
            port=sshd.port,
            identity=sshd.client_key,
            host_key_line=extra,
            timeout=5,
            paths=json.dumps(str(tmp_path)),
        )
    )
    ctl = Controller(place.policies, place.state)
    started = time.monotonic()
    main(["backup", "ws-042", "--level", "nightly", "--policies", str(place.policies),
          "--state", str(place.state)])  # fmt: skip
    took = time.monotonic() - started
    (run,) = [r for r in ctl.log.runs() if r["action"] == "backup"]
    if moving == "yes":
        assert run["state"] == "succeeded", run["error"]
    else:
        assert run["state"] == "failed" and run["stats"]["stalled"] is True
        assert "made no progress for 2s" in run["error"]
        assert "its own progress report unchanged" in run["error"]
        assert took < 15
    assert live_processes_with(str(fake)) == []


HOSTILE_RESTIC = """#!/bin/sh
# A hostile machine: one endless line on stdout, then a million short ones on stderr.
if [ "$1" = version ]; then echo "restic 0.14.0 compiled with go1.19 on linux/amd64"; exit 0; fi
head -c {size} /dev/zero | tr '\\0' x
yes 'a line restic never printed' | head -n {lines} >&2
exit 1
"""

CONTROLLER = """
import json, sys
from recoverd.engine import BackupRequest
from recoverd.errors import EngineError
from recoverd.policy.model import Level, Machine, Repository
from recoverd.secrets import SecretResolver
from recoverd_plugins.restic import ResticEngine
from recoverd_plugins.ssh import SSHTransport

machine = Machine(**json.loads(sys.argv[1]))
level = Level(name="nightly", kind="files", repository="nas", paths=("/srv",))
repository = Repository(name="nas", url="/nonexistent", password="env:PW")
secrets = SecretResolver({"env": lambda name: "a password"})
with SSHTransport(machine, secrets) as transport:
    engine = ResticEngine(transport, secrets)
    try:
        engine.backup(BackupRequest("acme", machine, level, repository))
    except EngineError as exc:
        message = str(exc)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(json.dumps({"peak_kib": int(line.split()[1]), "error": message}))
"""


def _peak_of_a_controller(machine: Machine) -> dict[str, Any]:
    fields = {f.name: getattr(machine, f.name) for f in dataclasses.fields(machine)}
    done = subprocess.run(
        [sys.executable, "-c", CONTROLLER, json.dumps(fields)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_controller_memory_stays_bounded_whatever_the_machine_prints(
    ssh_machine: Machine, tmp_path: Path
) -> None:
    """A machine prints one 300 MB line without a newline and a million lines: the controller
    that reads it (a process of its own, so that its peak RSS is its own) stays far below it."""
    quiet = tmp_path / "quiet-restic"
    quiet.write_text(HOSTILE_RESTIC.format(size=1, lines=1))
    hostile = tmp_path / "hostile-restic"
    hostile.write_text(HOSTILE_RESTIC.format(size=300_000_000, lines=1_000_000))
    for script in (quiet, hostile):
        script.chmod(0o755)
    baseline = _peak_of_a_controller(dataclasses.replace(ssh_machine, restic=str(quiet)))
    measured = _peak_of_a_controller(dataclasses.replace(ssh_machine, restic=str(hostile)))
    grown_mib = (measured["peak_kib"] - baseline["peak_kib"]) / 1024
    print(
        f"controller peak RSS: {baseline['peak_kib'] / 1024:.0f} MiB quiet, "
        f"{measured['peak_kib'] / 1024:.0f} MiB hostile (+{grown_mib:.0f} MiB)"
    )
    assert grown_mib < 40, f"the controller grew by {grown_mib:.0f} MiB"
    # The error still says what restic said last, briefly.
    assert "a line restic never printed" in measured["error"]
    assert len(measured["error"]) < 2000
