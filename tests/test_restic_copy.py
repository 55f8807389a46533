"""Copy levels: `restic copy` between two repositories with two passwords, on the controller."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from recoverd.engine import BackupRequest, CopyRequest
from recoverd.errors import WrongPassword
from recoverd.policy.model import Level, Machine, Repository
from recoverd.secrets import SecretResolver
from recoverd_plugins.local import LocalTransport
from recoverd_plugins.restic import ResticEngine
from recoverd_plugins.secrets import resolve_env

NAS_PASSWORD = "nas password for the copy test"
OFFSITE_PASSWORD = "offsite password for the copy test"


@pytest.fixture(scope="module")
def engine() -> Iterator[ResticEngine]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TEST_NAS", NAS_PASSWORD)
        monkeypatch.setenv("TEST_OFFSITE", OFFSITE_PASSWORD)
        secrets = SecretResolver({"env": resolve_env})
        machine = Machine(name="ws-local", client="acme", transport="local")
        yield ResticEngine(LocalTransport(machine, secrets), secrets)


@pytest.fixture(scope="module")
def nas(engine: ResticEngine, tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """A repository holding one snapshot of the level ``nightly``."""
    root = tmp_path_factory.mktemp("copy")
    (root / "data").mkdir()
    (root / "data" / "ledger.csv").write_bytes(os.urandom(5000))
    nas = Repository("nas", str(root / "nas"), "env:TEST_NAS")
    nightly = replace(NIGHTLY, paths=(str(root / "data"),))
    engine.backup(BackupRequest("acme", engine.transport.machine, nightly, nas))
    return nas


NIGHTLY = Level(name="nightly", kind="files", repository="nas")
OFFSITE = Level(name="offsite", kind="copy", of="nightly", to="offsite")


def test_copy_sends_new_snapshots_once_with_no_secret_in_argv_or_env(
    engine: ResticEngine, nas: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offsite = Repository("offsite", str(tmp_path / "offsite"), "env:TEST_OFFSITE")
    seen: list[tuple[list[str], str]] = []
    real_popen = subprocess.Popen

    def spy(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((list(argv), str(kwargs.get("env"))))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    request = CopyRequest("acme", engine.transport.machine, OFFSITE, NIGHTLY, nas, offsite)
    first = engine.copy(request)
    assert first.state == "succeeded" and first.stats["snapshots_copied"] == 1
    assert first.stats["repository_created"] is True
    again = engine.copy(request)
    assert again.stats == {**again.stats, "snapshots_copied": 0, "snapshots_already_copied": 1}
    for secret in (NAS_PASSWORD, OFFSITE_PASSWORD, nas.url, offsite.url):
        assert not any(secret in arg or secret in env for argv, env in seen for arg in argv)


def test_copy_with_a_wrong_source_password_says_so(
    engine: ResticEngine, nas: Repository, tmp_path: Path
) -> None:
    wrong = Repository("nas", nas.url, "env:TEST_OFFSITE")
    offsite = Repository("offsite", str(tmp_path / "offsite"), "env:TEST_OFFSITE")
    request = CopyRequest("acme", engine.transport.machine, OFFSITE, NIGHTLY, wrong, offsite)
    with pytest.raises(WrongPassword, match="wrong repository password"):
        engine.copy(request)


def test_backup_of_a_machine_runs_its_copy_level_only_when_due_or_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from recoverd.cli import main

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ledger.csv").write_bytes(os.urandom(3000))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.toml").write_text(
        f"""[client]
name = "Acme"
[repositories.nas]
url = "{tmp_path / "nas"}"
password = "env:TEST_NAS"
[repositories.offsite]
url = "{tmp_path / "offsite"}"
password = "env:TEST_OFFSITE"
[machines.ws-local]
transport = "local"
[[machines.ws-local.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{tmp_path / "data"}"]
every = "day at 01:30"
[[machines.ws-local.levels]]
name = "offsite"
kind = "copy"
of = "nightly"
to = "offsite"
every = "month on day 1 at 05:00"
"""
    )
    monkeypatch.setenv("TEST_NAS", NAS_PASSWORD)
    monkeypatch.setenv("TEST_OFFSITE", OFFSITE_PASSWORD)
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))

    def actions() -> list[str]:
        assert main(["log", "--json"]) == 0
        return [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()]

    # The copy never succeeded: it is due, so the first backup of the machine runs it.
    assert main(["backup", "ws-local"]) == 0
    capsys.readouterr()
    assert actions() == ["backup", "copy"]
    # The next manual backup leaves the monthly copy alone, and says how to run it.
    assert main(["backup", "ws-local"]) == 0
    err = capsys.readouterr().err
    assert "ws-local offsite copy: not due (next " in err
    assert "`recoverd backup acme/ws-local --level offsite`" in err
    assert actions() == ["backup", "copy", "backup"]
    assert main(["backup", "ws-local", "--level", "offsite"]) == 0
    capsys.readouterr()
    assert actions() == ["backup", "copy", "backup", "copy"]
