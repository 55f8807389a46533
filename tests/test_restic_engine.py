"""The restic engine against the real restic binary, on the controller (local transport)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from recoverd.engine import BackupRequest
from recoverd.errors import EngineError, RepositoryLocked, ToolMissing, WrongPassword
from recoverd.policy.model import Level, Machine, Repository
from recoverd.secrets import SecretResolver
from recoverd.transport import CommandOutcome
from recoverd_plugins.local import LocalTransport
from recoverd_plugins.restic import ResticEngine, classify_failure
from recoverd_plugins.secrets import resolve_env

PASSWORD = "correct horse battery staple"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> SecretResolver:
    monkeypatch.setenv("TEST_RESTIC_PASSWORD", PASSWORD)
    monkeypatch.setenv("OTHER_PASSWORD", "not the password")
    return SecretResolver({"env": resolve_env})


def make_engine(secrets: SecretResolver, restic: str = "restic") -> ResticEngine:
    machine = Machine(name="ws-local", client="acme", transport="local", restic=restic)
    return ResticEngine(LocalTransport(machine, secrets), secrets)


def request(
    engine: ResticEngine, repo: Path, paths: list[str], password: str = "env:TEST_RESTIC_PASSWORD"
) -> BackupRequest:
    level = Level(
        name="nightly", kind="files", repository="r", paths=tuple(paths), keep={"last": 2}
    )
    return BackupRequest(
        "acme", engine.transport.machine, level, Repository("r", str(repo), password)
    )


def test_backup_creates_repository_and_records_summary(tmp_path: Path, secrets) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "b.bin").write_bytes(os.urandom(10_000))
    engine = make_engine(secrets)
    first = engine.backup(request(engine, tmp_path / "repo", [str(src)]))
    assert first.state == "succeeded"
    assert first.stats["files_new"] == 2
    assert first.stats["repository_created"] is True
    assert first.snapshot
    second = engine.backup(request(engine, tmp_path / "repo", [str(src)]))
    assert second.stats["files_new"] == 0 and second.stats["files_unmodified"] == 2
    snaps = engine.snapshots(
        "acme",
        engine.transport.machine,
        Repository("r", str(tmp_path / "repo"), "env:TEST_RESTIC_PASSWORD"),
    )
    assert [s.level for s in snaps] == ["nightly", "nightly"]
    assert {first.snapshot, second.snapshot} <= {s.short_id for s in snaps} | {s.id for s in snaps}
    forgot = engine.forget(request(engine, tmp_path / "repo", [str(src)]))
    assert forgot.stats["snapshots_kept"] == 2 and forgot.stats["snapshots_removed"] == 0


def test_backup_missing_path_is_partial_and_names_it(tmp_path: Path, secrets) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    engine = make_engine(secrets)
    outcome = engine.backup(request(engine, tmp_path / "repo", [str(src), "/no/such/dir"]))
    assert outcome.state == "partial"
    assert "/no/such/dir" in outcome.error
    assert outcome.stats["unreadable_count"] == 1


def test_backup_wrong_password_is_reported_as_such(tmp_path: Path, secrets) -> None:
    src = tmp_path / "src"
    src.mkdir()
    engine = make_engine(secrets)
    engine.backup(request(engine, tmp_path / "repo", [str(src)]))
    with pytest.raises(WrongPassword, match="wrong repository password"):
        engine.backup(request(engine, tmp_path / "repo", [str(src)], "env:OTHER_PASSWORD"))


def test_backup_without_restic_says_it_is_not_installed(tmp_path: Path, secrets) -> None:
    engine = make_engine(secrets, restic="/opt/nowhere/restic")
    with pytest.raises(ToolMissing, match="not installed"):
        engine.backup(request(engine, tmp_path / "repo", [str(tmp_path)]))


def test_password_is_in_no_argv(tmp_path: Path, secrets, monkeypatch) -> None:
    seen: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(argv, *args, **kwargs):
        seen.append(list(argv))
        assert "env" not in kwargs or PASSWORD not in str(kwargs["env"])
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    src = tmp_path / "src"
    src.mkdir()
    engine = make_engine(secrets)
    assert engine.backup(request(engine, tmp_path / "repo", [str(src)])).state == "succeeded"
    assert seen and not any(PASSWORD in arg for argv in seen for arg in argv)
    assert not any(str(tmp_path / "repo") in arg for argv in seen for arg in argv)


@pytest.mark.parametrize(
    ("status", "stderr", "error"),
    [
        (
            1,
            "Fatal: unable to create lock in backend: repository is already locked "
            "exclusively by PID 4242 on ctl by root (UID 0, GID 0)",
            RepositoryLocked,
        ),
        (11, "Fatal: failed to lock", RepositoryLocked),
        (1, "Fatal: wrong password or no key found", WrongPassword),
        (12, "Fatal: ...", WrongPassword),
        (127, "sh: 1: exec: restic: not found", ToolMissing),
    ],
)
def test_classify_failure_maps_restic_text_and_codes(status, stderr, error) -> None:
    exc = classify_failure(CommandOutcome(status, b"", stderr.encode()), "backup", "restic")
    assert isinstance(exc, error)


def test_backup_asks_restic_version_in_the_backup_command_itself(tmp_path: Path, secrets) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    engine = make_engine(secrets)
    engine.backup(request(engine, tmp_path / "repo", [str(src)]))  # creates the repository
    engine = make_engine(secrets)  # a new run knows no version yet
    commands: list[list[str]] = []
    real_run = engine.transport.run

    def spy(req):
        commands.append(req.argv)
        return real_run(req)

    engine.transport.run = spy
    outcome = engine.backup(request(engine, tmp_path / "repo", [str(src)]))
    found = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
    assert outcome.state == "succeeded"
    assert len(commands) == 1 and "backup" in commands[0]
    assert f"restic {outcome.stats['restic_version']} " in found


def fake_restic(tmp_path: Path, version_line: str) -> Path:
    """Write a restic that prints ``version_line`` for `version` and notes any other call."""
    program = tmp_path / "old-restic"
    ran = tmp_path / "ran"
    program.write_text(
        f'#!/bin/sh\nif [ "$1" = version ]; then echo "{version_line}"; exit 0; fi\n'
        f'echo "$@" >> {ran}\nexit 1\n'
    )
    program.chmod(0o755)
    return program


@pytest.mark.parametrize("version_line", ["restic 0.13.1 compiled with go1.18", "restic 0.9.6"])
def test_backup_refuses_restic_older_than_0_14_before_it_runs(
    tmp_path: Path, secrets, version_line: str
) -> None:
    engine = make_engine(secrets, restic=str(fake_restic(tmp_path, version_line)))
    with pytest.raises(ToolMissing, match=r"restic 0\.(13\.1|9\.6) on the machine is too old"):
        engine.backup(request(engine, tmp_path / "repo", [str(tmp_path)]))
    assert not (tmp_path / "ran").exists()


def test_backup_with_unreadable_restic_version_says_so(tmp_path: Path, secrets) -> None:
    engine = make_engine(secrets, restic=str(fake_restic(tmp_path, "something else")))
    with pytest.raises(EngineError, match="cannot read restic's version from 'something else'"):
        engine.backup(request(engine, tmp_path / "repo", [str(tmp_path)]))
    assert not (tmp_path / "ran").exists()
