"""`recoverd daemon` as a real process: signals, locks, kill -9, and runs over the real sshd."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD

PASSWORD = "daemon-Pa55word-nas"
OFFSITE_PASSWORD = "daemon-Pa55word-offsite"

CLIENT = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
[repositories.nas]
url = "{root}/nas"
password = "env:TEST_NAS_PASSWORD"
[repositories.offsite]
url = "{root}/offsite"
password = "env:TEST_OFFSITE_PASSWORD"
"""


class Daemon:
    """A `recoverd daemon` child process with its stderr in a file."""

    def __init__(self, root: Path, *args: str) -> None:
        self.stderr_path = root / f"daemon-{time.monotonic_ns()}.err"
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from recoverd.cli import main; "
                 "sys.exit(main())", "daemon", "--tick", "0.5", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "policies").mkdir()
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("TEST_NAS_PASSWORD", PASSWORD)
    monkeypatch.setenv("TEST_OFFSITE_PASSWORD", OFFSITE_PASSWORD)
    return tmp_path


def log(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def wait_for(
    capsys: pytest.CaptureFixture[str], done: Callable[[list[dict]], bool], timeout: float = 30
) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = log(capsys)
        if done(runs):
            return runs
        time.sleep(0.2)
    raise AssertionError(f"timed out; the log holds {log(capsys)}")


def slow_restic(root: Path) -> Path:
    """A restic on the "machine" whose first backup hangs until killed; later ones are quick."""
    script = root / "slow-restic"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = backup ] && [ ! -e {root}/hung ]; then\n'
        f"  echo $$ > {root}/hung\n  sleep 60\nfi\n"
        'exec restic "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def local_machine(root: Path, restic: str = "restic") -> str:
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "report.txt").write_text("quarterly numbers\n")
    return CLIENT.format(root=root) + (
        f'[machines.ws-1]\ntransport = "local"\nrestic = "{restic}"\n'
        '[[machines.ws-1.levels]]\nname = "nightly"\nkind = "files"\nrepository = "nas"\n'
        f'paths = ["{root}/data"]\nevery = "day at 01:30"\n'
    )


def kill_hung_restic(root: Path) -> None:
    pid = int((root / "hung").read_text())
    try:
        os.killpg(pid, signal.SIGKILL)  # the local transport starts each command in its session
    except ProcessLookupError:
        pass


def test_kill_9_mid_run_then_restart_records_interrupted_and_redoes_once(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (place / "policies" / "acme.toml").write_text(local_machine(place, str(slow_restic(place))))
    first = Daemon(place)
    try:
        deadline = time.monotonic() + 30
        while not (place / "hung").exists():  # the backup is running on the machine
            assert time.monotonic() < deadline and first.process.poll() is None, first.stderr
            time.sleep(0.1)
        first.stop(signal.SIGKILL)
    finally:
        kill_hung_restic(place)
    second = Daemon(place)
    try:
        runs = wait_for(capsys, lambda rs: any(r["state"] == "succeeded" for r in rs))
        time.sleep(1.5)  # a few more ticks: nothing else may start
        assert second.stop() == 0
    finally:
        second.process.kill()
    runs = log(capsys)
    assert [(r["action"], r["state"]) for r in runs] == [
        ("backup", "interrupted"),
        ("backup", "succeeded"),
    ]
    assert f"pid {first.process.pid}" in runs[0]["error"]
    assert runs[1]["trigger"] == "schedule" and runs[1]["engineer"] == "Wang Lei"
    assert "daemon stopped" in second.stderr


def test_sigterm_lets_runs_finish_within_grace_then_records_them_interrupted(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (place / "policies" / "acme.toml").write_text(local_machine(place, str(slow_restic(place))))
    daemon = Daemon(place, "--grace", "1")
    try:
        deadline = time.monotonic() + 30
        while not (place / "hung").exists():
            assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.stderr
            time.sleep(0.1)
        started = time.monotonic()
        assert daemon.stop() == 130
        assert time.monotonic() - started < 10
    finally:
        daemon.process.kill()
        kill_hung_restic(place)
    (run,) = log(capsys)
    assert run["state"] == "interrupted"
    assert "daemon was stopped" in run["error"] and "1s" in run["error"]
    assert "interrupted run(s): " + run["id"] in daemon.stderr


VERIFY_ONLY = """
[machines.ws-1]
transport = "local"
[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/srv"]
[[machines.ws-1.levels]]
name = "{drill}"
kind = "verify"
of = "nightly"
every = "{every}"
"""


def test_second_daemon_refuses_and_sighup_reloads_only_a_valid_policy(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = place / "policies" / "acme.toml"
    policy.write_text(
        CLIENT.format(root=place) + VERIFY_ONLY.format(drill="drill", every="day at 05:00")
    )
    daemon = Daemon(place)
    try:
        wait_for(capsys, lambda rs: len(rs) == 1)
        started = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-c", "import sys; from recoverd.cli import main; sys.exit(main())",
             "daemon"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert refused.returncode == 1 and time.monotonic() - started < 10
        assert f"a recoverd daemon (pid {daemon.process.pid}) already runs" in refused.stderr

        policy.write_text(
            CLIENT.format(root=place) + VERIFY_ONLY.format(drill="drill", every="dayly at 05:00")
        )
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "policy reload refused" not in daemon.stderr:
            assert time.monotonic() < deadline, daemon.stderr
            time.sleep(0.1)
        assert "did you mean 'day at 05:00'" in daemon.stderr
        assert daemon.process.poll() is None

        policy.write_text(
            CLIENT.format(root=place) + VERIFY_ONLY.format(drill="drill-2", every="day at 05:00")
        )
        daemon.process.send_signal(signal.SIGHUP)
        runs = wait_for(capsys, lambda rs: len(rs) == 2 and rs[-1]["state"] != "running")
        assert daemon.stop() == 0
    finally:
        daemon.process.kill()
    # Both drills ran and failed: nightly never made a repository to restore from.
    assert [(r["level"], r["action"], r["state"]) for r in runs] == [
        ("drill", "verify", "failed"),
        ("drill-2", "verify", "failed"),
    ]
    assert "the repository does not exist" in runs[0]["error"]
    assert "policies reloaded" in daemon.stderr and "daemon stopped" in daemon.stderr


def test_scheduled_files_and_copy_levels_run_over_ssh_and_are_recorded(
    place: Path, sshd: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    (place / "data").mkdir()
    (place / "data" / "ledger.csv").write_bytes(os.urandom(20000))
    (place / "policies" / "acme.toml").write_text(
        CLIENT.format(root=place)
        + f"""
[machines.srv-1]
address = "127.0.0.1"
port = {sshd.port}
user = "{sshd.user}"
identity = "{sshd.client_key}"
host_key = "{sshd.host_key_line}"
[[machines.srv-1.levels]]
name = "offsite"
kind = "copy"
of = "nightly"
to = "offsite"
every = "sunday at 04:00"
[[machines.srv-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{place}/data"]
every = "day at 01:30"
keep = {{ last = 7 }}
"""
    )
    daemon = Daemon(place)
    try:
        runs = wait_for(
            capsys, lambda rs: any(r["action"] == "copy" for r in rs if r["finished_at"])
        )
        assert daemon.stop() == 0
    finally:
        daemon.process.kill()
    assert [(r["level"], r["action"], r["state"]) for r in runs] == [
        ("nightly", "backup", "succeeded"),
        ("nightly", "prune", "succeeded"),
        ("offsite", "copy", "succeeded"),  # waited for the level it copies
    ]
    assert {(r["trigger"], r["engineer"]) for r in runs} == {("schedule", "Wang Lei")}
    assert runs[2]["stats"]["snapshots_copied"] == 1 and runs[2]["repository"] == "offsite"
    env = {**os.environ, "RESTIC_PASSWORD": OFFSITE_PASSWORD}
    listed = subprocess.run(
        ["restic", "-r", str(place / "offsite"), "snapshots", "--json"],
        env=env, capture_output=True, check=True,
    )  # fmt: skip
    (copied,) = json.loads(listed.stdout)
    assert "level=nightly" in copied["tags"] and copied["paths"] == [str(place / "data")]
    for secret in (PASSWORD, OFFSITE_PASSWORD):
        assert secret not in daemon.stderr
        assert secret.encode() not in Path(sshd.log_path).read_bytes()
        assert secret.encode() not in (place / "state" / "maintenance.db").read_bytes()
