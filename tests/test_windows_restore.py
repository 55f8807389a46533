"""``recoverd restore`` on Windows machines, end to end through the CLI, the real pywinrm client,
the WS-Management test server and the simulated Windows host (the real restic behind
``restic.exe``; wbadmin imaging the simulated volumes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recoverd import powershell
from recoverd.cli import main
from recoverd.testing_windows import (
    Invocation,
    reporting_version,
    restic_version,
    split_command_line,
)
from recoverd.testing_wsman import WSManServer

REPO_PASSWORD = "Repo-s3cret-windows-restore"
USERS_DIR = "O'Brien $HOME `x` 100% & co; 中文"
SOURCE = f"C:\\Users\\{USERS_DIR}"
HOSTILE_NAMES = [
    "with space.txt",
    "it's quoted.txt",
    "\u2018typographic\u2019 quotes.txt",
    "$env:USERNAME $(whoami).txt",
    "`backtick` ``.txt",
    "semi;colon & ampersand | pipe.txt",
    "100% ^caret^ !bang!.txt",
    "中文文件名 Ünïcødé.txt",
    "-dash-first.txt",
    "[brackets] *star.txt",
]
RECOVERED_ITEM = f"{SOURCE}\\Finance\\文件 Q3.docx"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"

[repositories.nas]
url = 'D:\\Backups\\restic'
password = "env:TEST_REPO_PASSWORD"

[templates.windows]
transport = "winrm"
address = "127.0.0.1"
port = {port}
auth = "basic"
user = "{user}"
password = "env:TEST_WINRM_PASSWORD"
ca = "{ca}"
restic = 'C:\\Program Files\\restic\\restic.exe'

[machines.fin-pc]
template = "windows"

[[machines.fin-pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = [{source}]
every = "day at 20:00"

[machines.srv-win]
template = "windows"
role = "server"

[[machines.srv-win.levels]]
name = "weekly-image"
kind = "image"
target = 'E:'
device = "all-critical"
every = "sunday at 03:00"
"""


@dataclass
class Office:
    """One client with a Windows PC (restic files) and a Windows server (wbadmin images),
    backed up once; ``originals`` holds the PC's files as they were backed up."""

    server: WSManServer
    state: Path
    originals: dict[str, bytes]

    def run(self, *args: str) -> int:
        return main([*args, "--state", str(self.state)])

    def log(self, capsys: pytest.CaptureFixture[str]) -> list[dict]:
        capsys.readouterr()
        assert main(["--state", str(self.state), "log", "--json"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    def local(self, windows_path: str) -> Path:
        return self.server.host.local_path(windows_path)

    def restic_restores_since(self, mark: int) -> list[str]:
        """Return the restic restores the machine was asked to run since command ``mark``."""
        lines = self.server.host.command_lines[mark:]
        scripts = [powershell.decode(split_command_line(line)) or "" for line in lines]
        return [script for script in scripts if "$start.Arguments = 'restore " in script]


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Office]:
    root = tmp_path_factory.mktemp("windows-restore")
    with WSManServer(root / "drives") as server, pytest.MonkeyPatch.context() as env:
        tree = server.host.local_path(SOURCE)
        (tree / "Finance").mkdir(parents=True)
        for i, name in enumerate(HOSTILE_NAMES):
            (tree / name).write_bytes(f"content {i}\n".encode() + os.urandom(i * 300))
        (tree / "Finance" / "文件 Q3.docx").write_bytes(os.urandom(200_000))
        originals = {
            server.host.windows_path(str(p)): p.read_bytes() for p in tree.rglob("*") if p.is_file()
        }
        policies = root / "policies"
        policies.mkdir()
        (policies / "acme.toml").write_text(
            POLICY.format(
                port=server.port, user=server.user, ca=server.ca_path, source=json.dumps(SOURCE)
            )
        )
        env.setenv("TEST_WINRM_PASSWORD", server.password)
        env.setenv("TEST_REPO_PASSWORD", REPO_PASSWORD)
        env.setenv("RECOVERD_POLICIES", str(policies))
        office = Office(server, root / "state", originals)
        assert office.run("backup", "fin-pc") == 0
        assert office.run("backup", "srv-win") == 0
        yield office


def test_windows_restore_to_folder_with_hostile_names_gives_identical_bytes(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    target = "C:\\Restore\\fin-pc 'restored' $now `x` 100% & 中文"
    mark = len(office.server.host.command_lines)
    code = office.run(
        "restore",
        "fin-pc",
        "--to",
        target,
        "--yes",
        "--symptom",
        "user deleted the Finance folder",
        "--reported-by",
        "Ms. Li",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"creates    {len(office.originals)} file(s) missing now" in out
    assert len(office.restic_restores_since(mark)) == 1
    # restic for Windows recreates the source path below the folder: TARGET\C\Users\...
    for path, content in office.originals.items():
        assert office.local(target + "\\" + path.replace(":", "", 1)).read_bytes() == content
    run = office.log(capsys)[-1]
    assert run["action"] == "restore" and run["state"] == "succeeded", run["error"]
    assert run["stats"]["target"] == "windows-files-to-path"
    assert run["stats"]["verification"] == "passed"
    assert run["stats"]["files_verified"] == len(office.originals)
    assert run["symptom"] == "user deleted the Finance folder" and run["reported_by"] == "Ms. Li"


def test_windows_restore_in_place_on_restic_0_14_shows_plan_and_refuses(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupted, deleted = f"{SOURCE}\\{HOSTILE_NAMES[3]}", f"{SOURCE}\\{HOSTILE_NAMES[7]}"
    times = {path: office.local(path).stat() for path in (corrupted, deleted)}
    office.local(corrupted).write_bytes(b"ransomware was here")
    office.local(deleted).unlink()
    runs, mark = len(office.log(capsys)), len(office.server.host.command_lines)
    host = office.server.host
    restic = host.programs["restic.exe"]
    host.programs["restic.exe"] = reporting_version(restic, "0.14.0")
    try:
        assert office.run("restore", "fin-pc", "--in-place", "--yes") == 1
        captured = capsys.readouterr()
        assert f"replaces   1 existing file(s) that differ\n               {corrupted}\n" in (
            captured.out
        )
        assert "creates    1 file(s) missing now" in captured.out
        assert (
            "needs restic 0.16 or later on the machine (it has 0.14.0); restore to a folder "
            "instead (--to)"
        ) in captured.err
        assert office.local(corrupted).read_bytes() == b"ransomware was here"
        assert not office.local(deleted).exists()
        assert office.restic_restores_since(mark) == []
        assert len(office.log(capsys)) == runs  # a refused plan records nothing
    finally:
        host.programs["restic.exe"] = restic
        for path, stat in times.items():
            office.local(path).write_bytes(office.originals[path])
            os.utime(office.local(path), ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_windows_restore_in_place_on_restic_0_16_or_later_puts_deleted_and_corrupted_files_back(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    # The feature used, SNAPSHOT:/C restored into C:\, is restic restoring SNAPSHOT below the
    # folder that holds the drive folders with the includes put under /C: what this stand-in
    # runs. It says it is the restic behind it, or 0.16.4 when that is 0.14 (0.16 restores and
    # verifies every file as 0.14 does; 0.17+ leaves files that are right already).
    host = office.server.host
    restic = host.programs["restic.exe"]
    real = restic_version()
    reported = ".".join(map(str, real)) if real >= (0, 16, 0) else "0.16.4"

    received: list[list[str]] = []

    def restic_0_16(inv: Invocation) -> int:
        args = inv.argv[1:]
        received.append(list(args))
        if args == ["version"]:
            inv.stdout(f"restic {reported} compiled with go1.21.6 on windows/amd64\r\n".encode())
            return 0
        if args[:1] == ["restore"] and ":/" in args[1]:
            verify = [a for a in args if a == "--verify"]
            args = [a for a in args if a != "--verify"]
            snapshot, drive = args[1].split(":/")
            includes = [f"/{drive}{a}" for a in args[5::2]] or [f"/{drive}"]
            args = ["restore", snapshot, "--target", str(host.root), *verify]
            inv.argv[1:] = [*args, *(x for i in includes for x in ("--include", i))]
        return restic(inv)

    corrupted, deleted = f"{SOURCE}\\{HOSTILE_NAMES[5]}", f"{SOURCE}\\Finance\\文件 Q3.docx"
    office.local(corrupted).write_bytes(b"ransomware was here")
    office.local(deleted).unlink()
    host.programs["restic.exe"] = restic_0_16
    try:
        code = office.run("restore", "fin-pc", "--in-place", "--yes", "--symptom", "ransomware")
    finally:
        host.programs["restic.exe"] = restic
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"replaces   1 existing file(s) that differ\n               {corrupted}\n" in out
    assert "creates    1 file(s) missing now" in out
    for path, content in office.originals.items():
        assert office.local(path).read_bytes() == content, path
    run = office.log(capsys)[-1]
    assert run["state"] == "succeeded" and run["stats"]["target"] == "windows-files-in-place"
    assert run["stats"]["verification"] == "passed"
    assert run["stats"]["files_replaced"] == 1 and run["stats"]["files_created"] == 1
    (snapshot,) = {args[1].split(":")[0] for args in received if args[0] == "restore"}
    assert snapshot.startswith(run["snapshot"])
    restores = [args for args in received if args[0] == "restore"]
    assert restores == [
        [
            *["restore", f"{snapshot}:/C", "--target", "C:\\", "--verify"],
            *["--include", f"/Users/{USERS_DIR}"],
        ]
    ]
    assert run["stats"]["verify"] == "restic"


def test_windows_restore_dry_run_changes_nothing(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, mark = len(office.log(capsys)), len(office.server.host.command_lines)
    assert office.run("restore", "fin-pc", "--to", "C:\\Dry run", "--dry-run") == 0
    assert "dry run: nothing was changed" in capsys.readouterr().out
    assert not office.local("C:\\Dry run").exists()
    assert office.restic_restores_since(mark) == []
    assert len(office.log(capsys)) == runs


def test_windows_restore_without_yes_and_terminal_refuses(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = len(office.log(capsys))
    assert office.run("restore", "fin-pc", "--to", "C:\\Unasked") == 1
    assert "no terminal to confirm on: pass --yes" in capsys.readouterr().err
    assert not office.local("C:\\Unasked").exists()
    assert len(office.log(capsys)) == runs


@pytest.mark.parametrize(
    ("mode", "found"), [("restic", ": 7 bytes, the snapshot has"), ("full", ": sha256 differs")]
)
def test_windows_restore_that_writes_wrong_bytes_is_recorded_failed(
    office: Office, capsys: pytest.CaptureFixture[str], mode: str, found: str
) -> None:
    host = office.server.host
    restic = host.programs["restic.exe"]
    target, victim = "C:\\Bad disk", HOSTILE_NAMES[0]

    def faulty_disk(inv: Invocation) -> int:
        code = restic(inv)
        if inv.argv[1:2] == ["restore"]:
            office.local(f"{target}\\C\\Users\\{USERS_DIR}\\{victim}").write_bytes(b"bit rot")
        return code

    host.programs["restic.exe"] = faulty_disk
    try:
        assert office.run("restore", "fin-pc", "--to", target, "--yes", "--verify", mode) == 1
    finally:
        host.programs["restic.exe"] = restic
    run = office.log(capsys)[-1]
    assert run["state"] == "failed" and run["stats"]["verification"] == "failed"
    assert run["stats"]["verify"] == mode and run["stats"]["mismatches"] == 1
    assert f"{target}\\C\\Users\\{USERS_DIR}\\{victim}{found}" in run["error"]


def test_windows_wbadmin_file_recovery_is_recorded_with_its_result(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    item, folder = RECOVERED_ITEM, "D:\\Recovered files"
    assert office.run("restore", "srv-win", "--item", item, "--to", folder, "--yes") == 0
    assert "windows-image-recovery" in capsys.readouterr().out
    assert office.local(f"{folder}\\文件 Q3.docx").read_bytes() == office.originals[item]
    recovery = f'"-items:{item}" -backupTarget:E: "-recoveryTarget:{folder}" -recursive'
    assert any(recovery in line for line in office.server.host.command_lines)
    run = office.log(capsys)[-1]
    assert run["action"] == "restore" and run["kind"] == "image" and run["state"] == "succeeded"
    assert run["stats"]["files_restored"] == 1 and run["stats"]["files_failed"] == 0
    assert run["stats"]["verification"] == "passed"
    assert run["snapshot"] == office.server.host.wbadmin.versions[-1][0].strftime("%m/%d/%Y-%H:%M")

    # In place: the folder's damaged file is named in the plan and overwritten from the image.
    office.local(item).write_bytes(b"damaged")
    assert office.run("restore", "srv-win", "--item", f"{SOURCE}\\Finance", "--yes") == 0
    assert f"replaces   1 existing file(s) that differ\n               {item}\n" in (
        capsys.readouterr().out
    )
    assert office.local(item).read_bytes() == office.originals[item]


def test_windows_failing_wbadmin_recovery_is_recorded_failed_with_its_message(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    office.server.host.wbadmin.fail_next_recovery = "Access is denied."
    assert office.run("restore", "srv-win", "--item", RECOVERED_ITEM, "--yes") == 1
    run = office.log(capsys)[-1]
    assert run["action"] == "restore" and run["state"] == "failed"
    assert run["error"].startswith("wbadmin recovery of ")
    assert run["error"].endswith(" failed: Access is denied.")


def test_windows_image_recovery_refuses_items_that_do_not_fit(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = len(office.log(capsys))
    assert office.run("restore", "srv-win", "--item", "D:", "--to", "C:\\x", "--yes") == 2
    assert "volumes recover onto a volume like E: (--device), not 'C:\\\\x'" in (
        capsys.readouterr().err
    )
    assert office.run("restore", "srv-win", "--item", "D:", "--item", "C:\\x", "--yes") == 2
    assert "either volumes (D:) or files and folders, not both" in capsys.readouterr().err
    assert office.run("restore", "fin-pc", "--item", "C:\\x", "--yes") == 2
    assert "fin-pc has no image level to restore from" in capsys.readouterr().err
    assert office.run("restore", "srv-win", "--level", "weekly-image", "--yes") == 2
    assert "say what to recover from the system image with --item" in capsys.readouterr().err
    assert office.run("restore", "srv-win", "--item", "D:", "--device", "c:", "--yes") == 1
    captured = capsys.readouterr()
    assert "replaces   everything on c:" in captured.out
    assert "restore refused: C: is the volume Windows runs from on srv-win" in captured.err
    assert len(office.log(capsys)) == runs


def test_windows_bare_metal_prints_winre_steps_and_records_the_run(
    office: Office, capsys: pytest.CaptureFixture[str]
) -> None:
    code = office.run(
        "restore", "srv-win", "--bare-metal", "--symptom", "no boot", "--reported-by", "Mr. Zhao"
    )
    out = capsys.readouterr().out
    assert code == 0, out
    version = office.server.host.wbadmin.versions[-1][0].strftime("%m/%d/%Y-%H:%M")
    assert f"from backup version {version}" in out
    assert (
        f"4. Restore (this erases the machine's disks and recreates them as they were at backup "
        f"time): wbadmin start sysrecovery -version:{version} -backupTarget:E: "
        "-machine:WIN-RECOVERD01 -restoreAllVolumes -recreateDisks -quiet"
    ) in out
    run = office.log(capsys)[-1]
    assert f"Recorded as run {run['id']} (prepared)." in out
    assert run["action"] == "restore" and run["state"] == "succeeded"
    assert run["stats"]["bare_metal"] == "prepared" and run["snapshot"] == version
    assert run["symptom"] == "no boot" and run["reported_by"] == "Mr. Zhao"

    assert office.run("restore", "srv-win", "--bare-metal", "--snapshot", "01/01/2020-00:00") == 1
    assert "no backup version 01/01/2020-00:00 at E:" in capsys.readouterr().out
    assert office.log(capsys)[-1]["state"] == "failed"
    assert office.run("restore", "fin-pc", "--bare-metal") == 2
    assert "acme/fin-pc has no image level to restore bare metal from" in capsys.readouterr().err


def test_windows_items_are_refused_by_targets_that_restore_whole_snapshots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.toml").write_text(
        '[client]\nname = "Acme"\n[repositories.nas]\nurl = "/srv/restic"\npassword = "env:X"\n'
        '[machines.box]\ntransport = "local"\n'
        '[[machines.box.levels]]\nname = "image"\nkind = "image"\nrepository = "nas"\n'
        'device = "/dev/sdz"\nevery = "sunday at 03:00"\n'
    )
    args = ["--policies", str(policies), "--state", str(tmp_path / "state")]
    assert main(["restore", "box", "--item", "/etc", "--yes", *args]) == 2
    assert "--item is not for the image-to-device restore target" in capsys.readouterr().err
