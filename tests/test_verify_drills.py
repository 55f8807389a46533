"""Restore drills (``recoverd verify``) end to end: the real sshd, restic, partclone and ext4.

One module-wide site: a files tree and an ext4 "disk" (``mkfs.ext4 -d``, no mount), each backed
up once into its own repository. The tests drill them, change live files, damage pack files
(and put the original bytes back afterwards), move the clock past the schedule, and run a drill
from the daemon; the monthly report then shows the drills.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from recoverd.actions.daemon import Daemon
from recoverd.actions.due import machine_duties
from recoverd.cli import main
from recoverd.clock import FakeClock, use_clock
from recoverd.controller import Controller
from recoverd.log.maintenance import utc_now
from recoverd.testing import ThrowawaySSHD
from recoverd.testing_wsman import WSManServer
from recoverd_plugins.drills import choose_sample, include_pattern, sample_size

PASSWORD = "drill-Pa55word-never-shown"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
restore_sla = "4h"

[repositories.nas]
url = "{root}/repo"
password = "env:TEST_DRILL_PASSWORD"

[repositories.images]
url = "{root}/images"
password = "env:TEST_DRILL_PASSWORD"

[repositories.offsite]
url = "{root}/offsite"
password = "env:TEST_DRILL_PASSWORD"

[machines.ws-042]
{ssh}

[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{root}/home"]
every = "day at 01:30"

[[machines.ws-042.levels]]
name = "weekly-image"
kind = "image"
repository = "images"
device = "{root}/disk.img"

[[machines.ws-042.levels]]
name = "drill"
kind = "verify"
of = "nightly"
sample = "all"
every = "month on day 1 at 05:00"

[[machines.ws-042.levels]]
name = "drill-half"
kind = "verify"
of = "nightly"
sample = "50%"

[[machines.ws-042.levels]]
name = "drill-here"
kind = "verify"
of = "nightly"
sample = "all"
where = "controller"

[[machines.ws-042.levels]]
name = "drill-daily"
kind = "verify"
of = "nightly"
sample = "1"
every = "day at 05:00"

[[machines.ws-042.levels]]
name = "drill-image"
kind = "verify"
of = "weekly-image"

[[machines.ws-042.levels]]
name = "drill-image-here"
kind = "verify"
of = "weekly-image"
where = "controller"

[[machines.ws-042.levels]]
name = "image-offsite"
kind = "copy"
of = "weekly-image"
to = "offsite"

[[machines.ws-042.levels]]
name = "drill-image-offsite"
kind = "verify"
of = "image-offsite"
"""

HOME_FILES = {
    "li/budget.xlsx": os.urandom(50_000),
    "wang/notes.txt": b"meeting at 10\n",
    "wang/photo.jpg": os.urandom(300_000),
    "wang/new\nline.txt": b"a hostile name\n",
    "wang/star*[1].txt": b"glob characters in a name\n",
}
DISK_FILES = {"docs/report.txt": b"quarterly report\n" * 100, "bin/tool": os.urandom(500_000)}


class Site:
    """The policy, state, repositories, files tree and disk image of this module's tests."""

    def __init__(self, root: Path, sshd: ThrowawaySSHD) -> None:
        self.root = root
        self.sshd = sshd
        self.policies = root / "policies"
        self.state = root / "state"
        self.home = root / "home"
        self.disk = root / "disk.img"
        self.policies.mkdir()
        (self.policies / "acme.toml").write_text(
            POLICY.format(
                root=root,
                ssh=sshd.policy_lines,
            )
        )

    def recoverd(self, *argv: str) -> int:
        return main([*argv, "--policies", str(self.policies), "--state", str(self.state)])

    def drill(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
        """Run ``recoverd verify ws-042 ARGV --json``; return its exit code and run view."""
        capsys.readouterr()
        code = self.recoverd("verify", "ws-042", *argv, "--json")
        (line,) = capsys.readouterr().out.splitlines()
        return code, json.loads(line)


def scratch_folders(site: Site) -> set[str]:
    """The drill scratch folders that exist now, on the machine (the sshd's TMPDIR) and on
    the controller (this module's TMPDIR): this suite's own, whatever else runs."""
    places = (site.sshd.tmp, Path(os.environ["TMPDIR"]))
    return {p.name for place in places for p in place.glob("recoverd-drill.*")}


@contextmanager
def damaged(repository: Path) -> Iterator[None]:
    """Flip bytes in the middle of the repository's largest pack file for the block, then put
    the original bytes back."""
    pack = max((repository / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    original = pack.read_bytes()
    broken = bytearray(original)
    middle = len(broken) // 2
    broken[middle : middle + 64] = bytes(b ^ 0xFF for b in broken[middle : middle + 64])
    pack.chmod(0o600)
    pack.write_bytes(bytes(broken))
    try:
        yield
    finally:
        pack.write_bytes(original)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sshd: ThrowawaySSHD) -> Iterator[Site]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_DRILL_PASSWORD", PASSWORD)
        site = Site(tmp_path_factory.mktemp("drills"), sshd)
        (site.root / "tmp").mkdir()
        mp.setenv("TMPDIR", str(site.root / "tmp"))  # the controller's drills scratch here
        for rel, data in HOME_FILES.items():
            (site.home / rel).parent.mkdir(parents=True, exist_ok=True)
            (site.home / rel).write_bytes(data)
        src = site.root / "disk-src"
        for rel, data in DISK_FILES.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", str(src), str(site.disk), "32M"],
            check=True,
            capture_output=True,
        )
        assert site.recoverd("backup", "ws-042") == 0
        yield site


def test_sample_is_reproducible_and_sized_by_the_policy() -> None:
    paths = [f"/home/u/file-{i}" for i in range(1000)]
    assert choose_sample(paths, "10%", 7) == choose_sample(list(reversed(paths)), "10%", 7)
    assert choose_sample(paths, "10%", 7) != choose_sample(paths, "10%", 8)
    assert len(choose_sample(paths, "10%", 7)) == 100
    assert (sample_size("200", 1000), sample_size("200", 50), sample_size("all", 9)) == (200, 50, 9)
    assert sample_size("1%", 3) == 1 and sample_size("10%", 0) == 0
    assert include_pattern("/a/star*[1]?.txt") == "/a/star[*][[]1][?].txt"


def test_drill_of_a_healthy_backup_passes_with_rto_evidence(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    before = scratch_folders(site)
    code, run = site.drill(capsys, "--level", "drill")
    assert code == 0, run["error"]
    stats = run["stats"]
    assert (run["action"], run["state"], run["trigger"]) == ("verify", "succeeded", "manual")
    assert stats["files_verified"] == stats["files_in_snapshot"] == len(HOME_FILES)
    assert stats["mismatches"] == 0 and stats["verification"] == "passed"
    assert stats["bytes_restored"] == sum(map(len, HOME_FILES.values()))
    assert stats["duration_s"] > 0 and stats["time_to_restore_s"] == stats["duration_s"]
    assert stats["check"] == "passed" and stats["check_subset"].endswith("/12")
    assert isinstance(stats["seed"], int) and stats["of"] == "nightly"
    assert scratch_folders(site) == before


def test_drill_on_the_controller_passes_and_prints_its_figures(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert site.recoverd("verify", "ws-042", "--level", "drill-here") == 0
    out = capsys.readouterr().out
    assert "ws-042 drill-here verify: succeeded" in out
    assert f"{len(HOME_FILES)} of {len(HOME_FILES)} file(s) verified, 0 mismatch(es)" in out
    argv = ["--state", str(site.state), "log", "--json", "--policies", str(site.policies)]
    assert main(argv) == 0
    run = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert run["level"] == "drill-here"
    assert run["stats"]["where"] == "controller"
    assert run["stats"]["files_verified"] == len(HOME_FILES)


def test_live_file_changed_after_the_backup_is_not_a_mismatch(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = site.home / "wang" / "notes.txt"
    notes.write_bytes(b"edited after the backup\n")
    try:
        code, run = site.drill(capsys, "--level", "drill")
    finally:
        notes.write_bytes(HOME_FILES["wang/notes.txt"])
    assert code == 0, run["error"]
    assert run["stats"]["mismatches"] == 0


def test_same_seed_draws_the_same_sample(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    _, first = site.drill(capsys, "--level", "drill-half", "--seed", "1234")
    _, again = site.drill(capsys, "--level", "drill-half", "--seed", "1234")
    assert first["state"] == again["state"] == "succeeded", first["error"]
    assert first["stats"]["seed"] == again["stats"]["seed"] == 1234
    assert first["stats"]["sample_size"] == 3  # 50% of 5 files, rounded up
    assert first["stats"]["sampled_files"] == again["stats"]["sampled_files"]
    assert len(first["stats"]["sampled_files"]) == 3
    # The check reads the next part of the repository each drill.
    n1, n2 = (int(r["stats"]["check_subset"].split("/")[0]) for r in (first, again))
    assert n2 == n1 % 12 + 1


def test_damaged_pack_fails_the_drill_and_names_the_file(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    before = scratch_folders(site)
    with damaged(site.root / "repo"):
        code, run = site.drill(capsys, "--level", "drill")
    assert code == 1 and run["state"] == "failed"
    stats = run["stats"]
    assert stats["mismatches"] >= 1 and stats["verification"] == "failed"
    assert any("wang/photo.jpg" in m for m in stats["mismatched"]), stats["mismatched"]
    assert "verification failed" in run["error"] and "photo.jpg" in run["error"]
    assert scratch_folders(site) == before  # cleaned up after a failure too


def test_stale_backup_fails_the_drill(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    with use_clock(FakeClock(utc_now() + timedelta(days=3))):
        code, run = site.drill(capsys, "--level", "drill")
    assert code == 1 and run["state"] == "failed"
    assert run["error"].startswith("stale backup: the newest good snapshot of nightly")
    assert run["stats"]["stale"] is True and run["stats"]["mismatches"] == 0
    assert run["stats"]["snapshot_age_s"] >= 3 * 86400


def test_image_drill_passes_and_a_damaged_image_fails(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    before = scratch_folders(site)
    code, run = site.drill(capsys, "--level", "drill-image")
    assert code == 0, run["error"]
    stats = run["stats"]
    assert stats["files_verified"] == 1 and stats["mismatches"] == 0
    assert stats["stream_sha256"] == stats["image_sha256"]
    assert stats["fs_check"] == "e2fsck -fn: exit 0" and stats["fs_type"] == "ext4"
    assert stats["bytes_restored"] > 500_000 and stats["check"] == "passed"
    code, run = site.drill(capsys, "--level", "drill-image-here")
    assert code == 0, run["error"]
    assert run["stats"]["where"] == "controller" and run["stats"]["fs_check"].endswith("exit 0")
    # The copy has a new id; its sha256 is the one recorded for the image it was copied from.
    code, run = site.drill(capsys, "--level", "drill-image-offsite")
    assert code == 0, run["error"]
    assert run["stats"]["stream_sha256"] == run["stats"]["image_sha256"] == stats["image_sha256"]

    with damaged(site.root / "images"):
        code, run = site.drill(capsys, "--level", "drill-image")
    assert code == 1 and run["state"] == "failed"
    assert "restore of image" in run["error"] and "ciphertext" in run["error"]
    assert scratch_folders(site) == before


def test_daemon_runs_a_due_drill_and_status_stops_flagging_it(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = Controller(site.policies, site.state)
    machine = ctl.policies.find_machine("ws-042")
    zone = "Asia/Shanghai"
    daemon = Daemon(ctl, max_parallel=1)
    try:
        # Due: drill-daily only (it never ran; nightly and the monthly drill are served).
        daemon.tick()
        assert daemon.wait_idle(120)
    finally:
        daemon.shutdown(5)
    runs = [r for r in ctl.log.runs() if r["trigger"] == "schedule"]
    assert [(r["level"], r["state"]) for r in runs if r["action"] == "verify"] == [
        ("drill-daily", "succeeded")
    ]
    duties = machine_duties(ctl.log, machine, zone, utc_now())
    duty = next(d for d in duties if d.level.name == "drill-daily")
    assert not duty.due and not duty.overdue


def test_monthly_report_shows_the_drills(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    month = utc_now().astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    capsys.readouterr()
    assert site.recoverd("report", "--client", "acme", "--month", month, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    (machine,) = report["machines"]
    assert any(d["state"] == "succeeded" and d["within_sla"] for d in machine["drills"])
    assert report["without_passed_drill"] == []
    assert site.recoverd("report", "--client", "acme", "--month", month, "--format", "md") == 0
    markdown = capsys.readouterr().out
    # A drill row: level, result, files verified, mismatches.
    assert f"| drill | succeeded | {len(HOME_FILES)} | 0 |" in markdown
    assert "| drill-image | succeeded | 1 | 0 |" in markdown


WINDOWS_POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"

[repositories.nas]
url = 'D:\\Backups\\restic'
password = "env:TEST_DRILL_PASSWORD"

[machines.fin-pc]
transport = "winrm"
address = "127.0.0.1"
port = {port}
auth = "basic"
user = "{user}"
password = "env:TEST_WINRM_PASSWORD"
ca = "{ca}"
restic = 'C:\\Program Files\\restic\\restic.exe'

[[machines.fin-pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ['C:\\Users\\Wang Lei']

[[machines.fin-pc.levels]]
name = "drill"
kind = "verify"
of = "nightly"
sample = "all"
"""


def test_windows_files_drill_restores_to_a_temp_folder_and_compares_file_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with WSManServer(tmp_path / "drives", operation_timeout=0.3) as server:
        tree = server.host.local_path("C:\\Users\\Wang Lei")
        names = ["it's $HOME & 100%.txt", "中文 Ünïcødé.txt", "sub dir/big.bin", "star*[1].txt"]
        for i, name in enumerate(names):
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(f"content {i}\n".encode() + os.urandom(i * 50_000))
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "acme.toml").write_text(
            WINDOWS_POLICY.format(port=server.port, user=server.user, ca=server.ca_path)
        )
        monkeypatch.setenv("TEST_DRILL_PASSWORD", PASSWORD)
        monkeypatch.setenv("TEST_WINRM_PASSWORD", server.password)
        argv = ["--policies", str(policies), "--state", str(tmp_path / "state")]
        assert main(["backup", "fin-pc", *argv]) == 0
        (tree / names[0]).write_bytes(b"changed on the live machine after the backup")
        capsys.readouterr()
        assert main(["verify", "fin-pc", "--json", *argv]) == 0
        run = json.loads(capsys.readouterr().out)
        with damaged(server.host.local_path("D:\\Backups\\restic")):
            assert main(["verify", "fin-pc", "--json", *argv]) == 1
        broken = json.loads(capsys.readouterr().out)
        temp = server.host.local_path("C:\\Windows\\Temp")
        hashed = [line for line in server.host.command_lines if "powershell" in line.lower()]
    assert run["state"] == "succeeded", run["error"]
    assert run["stats"]["files_verified"] == len(names) and run["stats"]["mismatches"] == 0
    assert run["stats"]["target"] == "files-drill-windows"
    assert hashed  # the scratch folder, Get-FileHash and Remove-Item ran through PowerShell
    assert temp.is_dir() and not list(temp.glob("recoverd-drill.*"))  # cleaned up, twice
    assert broken["state"] == "failed" and broken["stats"]["mismatches"] >= 1
    # Each difference names a file of the tree.
    assert all(any(n in m for n in names) for m in broken["stats"]["mismatched"])
