"""Onboarding a machine with `recoverd enroll` and `check --online`, against a real sshd and
real restic: the host key is shown, pinned with the policy's comments kept, repositories are
created from the machine, and what the machine cannot reach is reported with its fix."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD

pytestmark = pytest.mark.slow


def write_policy(directory: Path, sshd: ThrowawaySSHD, repo: Path, *, pinned: str = "") -> Path:
    policy = directory / "acme.toml"
    policy.write_text(
        f"""# Acme's machines: kept by the engineers, comments matter.
[client]
name = "Acme Trading Co."   # the customer
timezone = "Asia/Shanghai"

[repositories.nas]
url = "{repo}"
password = "env:ENROLL_TEST_PASSWORD"

[repositories.offsite]
# reached by restic on the machine through the machine's own ssh
url = "sftp://{sshd.user}@127.0.0.1:{sshd.port}/{repo.parent}/offsite"
password = "env:ENROLL_TEST_PASSWORD"

[machines.ws-042]
address = "127.0.0.1"   # the workstation
port = {sshd.port}
user = "{sshd.user}"
identity = "{sshd.client_key}"
{pinned}
[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/etc/hostname"]

[[machines.ws-042.levels]]
name = "offsite"
kind = "copy"
of = "nightly"
to = "offsite"
""",
        encoding="utf-8",
    )
    return policy


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENROLL_TEST_PASSWORD", "enroll-test-password")
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    (tmp_path / "policies").mkdir()
    return tmp_path


def test_enroll_pins_the_host_key_keeps_comments_and_creates_the_repository(
    place: Path, sshd: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = place / "repos" / "nas"
    repo.parent.mkdir()
    policy = write_policy(place / "policies", sshd, repo)
    before = policy.read_text()

    code = main(["enroll", "ws-042", "--yes"])
    out = capsys.readouterr().out

    after = policy.read_text()
    pinned = tomllib.loads(after)["machines"]["ws-042"]["host_key"]
    assert pinned == sshd.host_key_line
    fingerprint = sshd.host_key_line.split()[0]
    assert f"pinned just now in {policy}: {fingerprint} SHA256:" in out
    # Every line the engineer wrote is still there, in order; one line was added.
    kept = [line for line in after.splitlines() if not line.startswith("host_key =")]
    assert kept == before.splitlines()
    assert "# Acme's machines: kept by the engineers, comments matter." in after
    assert 'address = "127.0.0.1"   # the workstation' in after
    assert (repo / "config").is_file(), "the repository was created from the machine"
    assert "repository nas" in out and "created just now" in out
    # The sftp repository: restic on the machine runs the machine's ssh, which does not know
    # the NAS's host key. That is reported with the exact fix, and nothing is accepted blindly.
    assert "repository offsite" in out and "FAILED" in out
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> ~/.ssh/known_hosts" in out
    assert code == 1

    # A second run finds the key pinned and the repository there: nothing changes.
    assert main(["enroll", "ws-042", "--yes", "--json"]) == 1
    steps = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_what = {step["what"]: step for step in steps}
    assert by_what["host key"]["state"] == "ok"
    assert "pinned in the policy" in by_what["host key"]["detail"]
    assert by_what["repository nas"]["state"] == "ok"
    assert by_what["repository offsite"]["state"] == "failed"
    assert policy.read_text() == after


def test_enroll_never_accepts_a_changed_host_key_with_yes(
    place: Path, sshd: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    other = ThrowawaySSHD()
    try:
        other.start()
        wrong = other.host_key_line
    finally:
        other.stop()
    policy = write_policy(place / "policies", sshd, place / "nas", pinned=f'host_key = "{wrong}"')
    before = policy.read_text()
    assert main(["enroll", "ws-042", "--yes"]) == 1
    out = capsys.readouterr().out
    assert "CHANGED" in out and f'host_key = "{sshd.host_key_line}"' in out
    assert policy.read_text() == before
    assert not (place / "nas").exists(), "nothing ran on a machine whose key is not trusted"


def test_enroll_without_a_terminal_or_yes_asks_for_yes(
    place: Path, sshd: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(place / "policies", sshd, place / "nas")
    before = policy.read_text()
    assert main(["enroll", "ws-042"]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert policy.read_text() == before


def test_check_online_reports_an_unknown_host_key_with_the_line_to_pin_and_changes_nothing(
    place: Path, sshd: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(place / "policies", sshd, place / "nas")
    before = policy.read_text()
    assert main(["check", "--online"]) == 1
    out = capsys.readouterr().out
    assert "unknown: the machine offers" in out
    assert f'host_key = "{sshd.host_key_line}"' in out
    assert policy.read_text() == before

    pinned = f'host_key = "{sshd.host_key_line}"'
    write_policy(place / "policies", sshd, place / "nas", pinned=pinned)
    assert main(["check", "--online"]) == 1  # the sftp repository is out of reach
    out = capsys.readouterr().out
    assert "reachable, but it does not exist yet" in out
    assert not (place / "nas").exists(), "check --online creates nothing"
    assert "ssh-keyscan" in out


def test_check_warns_about_a_machine_whose_host_key_nothing_vouches_for(
    place: Path, sshd: ThrowawaySSHD, capsys: pytest.CaptureFixture[str]
) -> None:
    known_hosts = place / "known_hosts"
    known_hosts.write_text("")
    policy = write_policy(
        place / "policies", sshd, place / "nas", pinned=f'known_hosts = "{known_hosts}"'
    )
    assert main(["check"]) == 0
    err = capsys.readouterr().err
    assert f"{policy}: machines.ws-042: no host key is pinned" in err
    assert "recoverd enroll acme/ws-042" in err

    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
    assert main(["check"]) == 0
    assert "no host key is pinned" not in capsys.readouterr().err


def test_daemon_leaves_a_machine_alone_until_it_is_enrolled(
    place: Path, sshd: ThrowawaySSHD, caplog: pytest.LogCaptureFixture
) -> None:
    """Its first runs would be refused and reach the customer's report as failures."""
    import logging

    from recoverd.actions.daemon import Daemon
    from recoverd.controller import Controller

    policy = write_policy(place / "policies", sshd, place / "nas")
    scheduled = 'paths = ["/etc/hostname"]\nevery = "day at 01:30"'
    policy.write_text(policy.read_text().replace('paths = ["/etc/hostname"]', scheduled))
    ctl = Controller(place / "policies", place / "state")
    daemon = Daemon(ctl)
    with caplog.at_level(logging.WARNING):
        daemon.tick()
        daemon.tick()
    assert daemon.started == 0
    assert ctl.log.runs() == []
    waits = [r.getMessage() for r in caplog.records if "waits" in r.getMessage()]
    assert waits == [
        f"acme/ws-042 waits: no host key is pinned and {Path('~/.ssh/known_hosts').expanduser()} "
        f"has none for [127.0.0.1]:{sshd.port}: the first run would be refused; run "
        "`recoverd enroll acme/ws-042` to check and pin it"
    ]
    daemon.shutdown(grace=1)
