"""A real sftp repository: restic on the machine reaches a storage server over the machine's own
ssh. The repository does not exist at first; enrolling creates it from the machine, a backup
into another fresh one creates that one, and a restore from it gives back the original bytes,
on every supported restic (0.14 says ``Lstat: file does not exist``, 0.17+ exits 10).

The "machine" is a throwaway sshd whose commands find an ``ssh`` first on PATH that uses the
machine user's known_hosts and key (both in the test's folder): the part of the machine's
``~/.ssh`` that sftp relies on, without touching the real one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD
from recoverd_plugins.restic import repository_missing

PASSWORD = "sftp-test-password-not-a-real-one"


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    """An sshd on 127.0.0.1 whose commands' ``ssh`` knows the storage server (itself)."""
    tools = tmp_path_factory.mktemp("machine-ssh")
    known_hosts = tools / "known_hosts"
    wrapper = tools / "bin" / "ssh"
    wrapper.parent.mkdir()
    server = ThrowawaySSHD(path=f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    with server:
        known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_key_line}\n")
        wrapper.write_text(
            "#!/bin/sh\n"
            f"exec /usr/bin/ssh -o UserKnownHostsFile={known_hosts} -o BatchMode=yes "
            f'-o IdentitiesOnly=yes -i {server.client_key} "$@"\n'
        )
        wrapper.chmod(0o755)
        yield server


@pytest.fixture
def place(
    tmp_path: Path, machine: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """(policy file, storage folder): one machine, a nightly level to a fresh sftp repository
    and a second level to another."""
    monkeypatch.setenv("SFTP_TEST_PASSWORD", PASSWORD)
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    storage, tree = tmp_path / "nas", tmp_path / "docs"
    storage.mkdir()
    (tree / "sub").mkdir(parents=True)
    (tree / "report.txt").write_bytes(b"quarterly figures\n")
    (tree / "sub" / "data.bin").write_bytes(os.urandom(100_000))
    (tree / "link").symlink_to("report.txt")
    (tmp_path / "policies").mkdir()
    policy = tmp_path / "policies" / "beta.toml"
    url = f"sftp://{machine.user}@127.0.0.1:{machine.port}/"
    policy.write_text(
        f"""[client]
name = "Beta Logistics"

[repositories.nas]
url = "{url}{storage}/beta"
password = "env:SFTP_TEST_PASSWORD"

[repositories.second]
url = "{url}{storage}/second"
password = "env:SFTP_TEST_PASSWORD"

[machines.ws-01]
{machine.policy_lines}

[[machines.ws-01.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{tree}"]

[[machines.ws-01.levels]]
name = "weekly"
kind = "files"
repository = "second"
paths = ["{tree}"]
""",
        encoding="utf-8",
    )
    return policy, storage


def newest_run(capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


@pytest.mark.slow
def test_enroll_creates_a_missing_sftp_repository_from_the_machine(
    place: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _policy, storage = place
    assert main(["check", "--online"]) == 0, capsys.readouterr()
    assert "does not exist yet" in capsys.readouterr().out
    assert main(["enroll", "ws-01", "--yes", "--json"]) == 0
    steps = {s["what"]: s for s in map(json.loads, capsys.readouterr().out.splitlines())}
    assert steps["repository nas"]["state"] == "ok", steps["repository nas"]
    assert "created just now" in steps["repository nas"]["detail"]
    assert (storage / "beta" / "config").is_file() and (storage / "second" / "config").is_file()


@pytest.mark.slow
def test_first_backup_creates_the_sftp_repository_and_restores_the_bytes(
    place: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _policy, storage = place
    assert main(["backup", "ws-01", "--level", "nightly"]) == 0, capsys.readouterr()
    run = newest_run(capsys)
    assert run["state"] == "succeeded" and run["stats"]["repository_created"] is True
    assert (storage / "beta" / "config").is_file()
    assert not (storage / "second").exists()  # only the level that ran created its repository

    target = tmp_path / "restored"
    assert main(["restore", "ws-01", "--to", str(target), "--yes"]) == 0, capsys.readouterr()
    restored = target / str(tmp_path / "docs").lstrip("/")
    for name in ("report.txt", "sub/data.bin"):
        assert (restored / name).read_bytes() == (tmp_path / "docs" / name).read_bytes()
    assert os.readlink(restored / "link") == "report.txt"
    assert newest_run(capsys)["state"] == "succeeded"


@pytest.mark.parametrize(
    ("status", "stderr", "missing"),
    [
        (1, "Fatal: unable to open config file: stat /r/config: no such file or directory", True),
        (1, "Fatal: unable to open config file: Lstat: file does not exist", True),
        (10, "Fatal: repository does not exist: unable to open config file: Lstat /r/config", True),
        (1, "Fatal: wrong password or no key found", False),
        (1, "subprocess ssh: Host key verification failed.\nFatal: unable to open repo", False),
        (12, "Fatal: wrong password or no key found", False),
    ],
)
def test_what_counts_as_no_repository_yet(status: int, stderr: str, missing: bool) -> None:
    assert repository_missing(status, stderr) is missing
