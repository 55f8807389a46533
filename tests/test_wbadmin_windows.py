"""Windows Server Backup (wbadmin) on a Windows machine over WinRM: backups, failures, check
warnings, file recovery and the bare-metal preparation, against the simulated Windows host."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverd.actions.bare_metal import prepare_bare_metal
from recoverd.cli import main
from recoverd.controller import Controller
from recoverd.policy import load_policies
from recoverd.secrets import SecretResolver
from recoverd.testing_wsman import WSManServer
from recoverd_plugins.wbadmin import WbadminEngine, parse_versions
from recoverd_plugins.winrm import WinRMTransport

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"

[machines.srv-win]
transport = "winrm"
address = "127.0.0.1"
port = {port}
auth = "basic"
user = "{user}"
password = "env:TEST_WINRM_PASSWORD"
ca = "{ca}"
role = "server"

[[machines.srv-win.levels]]
name = "weekly-image"
kind = "image"
target = '{target}'
device = "{device}"
every = "sunday at 03:00"
keep = {{ last = 2 }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WSManServer]:
    with WSManServer(tmp_path_factory.mktemp("windows") / "drives") as s:
        yield s


class Place:
    """A policy directory and a state directory for one Windows server."""

    def __init__(self, root: Path, server: WSManServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.server = root, server
        self.policies = root / "policies"
        self.policies.mkdir()
        self.state = root / "state"
        monkeypatch.setenv("TEST_WINRM_PASSWORD", server.password)
        monkeypatch.setenv("RECOVERD_POLICIES", str(self.policies))
        monkeypatch.setenv("RECOVERD_STATE", str(self.state))
        server.host.wbadmin.cmdlets = True
        server.host.wbadmin.fail_next = None

    def write_policy(self, target: str = "E:", device: str = "all-critical") -> None:
        (self.policies / "acme.toml").write_text(
            POLICY.format(
                port=self.server.port,
                user=self.server.user,
                ca=self.server.ca_path,
                target=target,
                device=device,
            )
        )

    def log(self, capsys: pytest.CaptureFixture[str]) -> list[dict]:
        capsys.readouterr()
        assert main(["log", "--json"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    def controller(self) -> Controller:
        return Controller(self.policies, self.state)


@pytest.fixture
def place(tmp_path: Path, server: WSManServer, monkeypatch: pytest.MonkeyPatch) -> Place:
    return Place(tmp_path, server, monkeypatch)


def test_windows_image_backup_records_wbadmin_version(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    place.write_policy(target="E:", device="all-critical")
    lines = len(place.server.host.command_lines)
    assert main(["backup", "srv-win"]) == 0
    runs = place.log(capsys)
    backup = next(r for r in runs if r["action"] == "backup")
    assert backup["state"] == "succeeded" and backup["kind"] == "image"
    assert backup["stats"]["result_from"] == "Get-WBJob"
    assert backup["stats"]["target"] == "E:"
    versions = parse_versions(_versions_text(place.server))
    assert backup["snapshot"] == versions[-1]["Version identifier"]
    sent = place.server.host.command_lines[lines:]
    assert "wbadmin start backup -backupTarget:E: -allCritical -quiet" in sent
    retention = next(r for r in runs if r["action"] == "prune")
    assert retention["state"] == "succeeded" and retention["stats"]["versions_kept"] == 2
    capsys.readouterr()
    assert main(["snapshots", "srv-win", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[-1]["short_id"] == backup["snapshot"] and listed[-1]["repository"] == "E:"


def _versions_text(server: WSManServer) -> str:
    from recoverd.testing_windows import WBADMIN_VERSION_BLOCK, version_id

    return "".join(
        WBADMIN_VERSION_BLOCK.format(
            time=when, kind="Disk", target=where, version=version_id(when), snapshot="0"
        )
        for when, where in server.host.wbadmin.versions
    )


@pytest.mark.parametrize("cmdlets", [True, False], ids=["Get-WBJob", "wbadmin-text"])
def test_windows_failing_wbadmin_run_is_recorded_failed_with_its_message(
    place: Place, capsys: pytest.CaptureFixture[str], cmdlets: bool
) -> None:
    place.write_policy(target="\\\\nas\\wsb", device="C:, D:")
    place.server.host.wbadmin.cmdlets = cmdlets
    place.server.host.wbadmin.fail_next = "The network path was not found."
    assert main(["backup", "srv-win"]) == 1
    (run,) = place.log(capsys)  # no retention after a failed backup
    assert run["state"] == "failed" and run["action"] == "backup"
    assert run["error"] == "wbadmin backup to \\\\nas\\wsb failed: The network path was not found."
    sent = "wbadmin start backup -backupTarget:\\\\nas\\wsb -include:C:,D: -quiet"
    assert sent in place.server.host.command_lines


def test_windows_check_warns_that_a_share_keeps_one_version(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    place.write_policy(target="\\\\nas\\wsb")
    assert main(["check"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "machines.srv-win: level weekly-image" in err
    assert "keeps only one version" in err
    place.write_policy(target="E:")
    assert main(["check"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_windows_image_level_needs_a_target_not_a_repository(place: Place) -> None:
    text = POLICY.format(
        port=1, user="u", ca="/ca.pem", target="E:", device="all-critical"
    ).replace("target = 'E:'", 'repository = "nas"')
    text += '[repositories.nas]\nurl = "/srv/restic"\npassword = "env:X"\n'
    (place.policies / "acme.toml").write_text(text)
    with pytest.raises(Exception) as caught:
        load_policies(place.policies)
    problems = "\n".join(caught.value.problems)  # type: ignore[attr-defined]
    assert "levels[0].repository: image levels of winrm machines write to a 'target'" in problems


def test_windows_wbadmin_recovers_files_with_hostile_path(
    place: Place, server: WSManServer
) -> None:
    place.write_policy(target="E:")
    item = "C:\\Users\\O'Brien $HOME `x` 100% & co\\文件.docx"
    original = server.host.local_path(item)
    original.parent.mkdir(parents=True, exist_ok=True)
    original.write_bytes(b"quarterly figures")
    assert main(["backup", "srv-win"]) == 0
    machine = load_policies(place.policies).find_machine("srv-win")
    secrets = SecretResolver({"env": lambda name: os.environ[name]})
    with WinRMTransport(machine, secrets) as transport:
        engine = WbadminEngine(transport, secrets)
        version = engine.versions("E:")[-1]["Version identifier"]
        outcome = engine.recover("E:", version, "File", [item], "D:\\Restored files")
    assert outcome.state == "succeeded" and outcome.stats["files_restored"] == 1
    assert (
        server.host.local_path("D:\\Restored files\\文件.docx").read_bytes() == b"quarterly figures"
    )
    line = server.host.command_lines[-1]
    assert f'"-items:{item}"' in line and '"-recoveryTarget:D:\\Restored files"' in line


def test_windows_bare_metal_restore_prepares_exact_winre_steps_and_records_it(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    place.write_policy(target="\\\\nas\\wsb")
    assert main(["backup", "srv-win"]) == 0
    ctl = place.controller()
    machine = ctl.policies.find_machine("srv-win")
    plan = prepare_bare_metal(
        ctl, machine, symptom="disk failed, no boot", reported_by="Ms. Li (front desk)"
    )
    latest = place.server.host.wbadmin.versions[-1][0].strftime("%m/%d/%Y-%H:%M")
    assert plan.version == latest and plan.run["state"] == "succeeded"
    steps = "\n".join(plan.steps)
    assert "net use \\\\nas\\wsb /user:recoverd" in steps
    assert (
        f"wbadmin start sysrecovery -version:{latest} -backupTarget:\\\\nas\\wsb "
        "-machine:WIN-RECOVERD01 -restoreAllVolumes -recreateDisks -quiet"
    ) in steps
    run = place.log(capsys)[-1]
    assert run["action"] == "restore" and run["kind"] == "image"
    assert run["snapshot"] == latest and run["stats"]["bare_metal"] == "prepared"
    assert run["symptom"] == "disk failed, no boot" and run["reported_by"] == "Ms. Li (front desk)"

    unknown = prepare_bare_metal(ctl, machine, version="01/01/2020-00:00")
    assert unknown.run["state"] == "failed" and unknown.steps == []
    assert "no backup version 01/01/2020-00:00" in unknown.run["error"]
