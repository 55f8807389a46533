"""Disk images and one-click restores end to end: the real sshd, restic, partclone and ext4.

One module-wide site: a policy, a repository, an ext4 "disk" made with ``mkfs.ext4 -d`` (no
mount), a files tree, and one backup of each level (image via the machine, image via the
controller, files). The tests then break things and restore them with ``recoverd restore``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.people import operator
from recoverd.testing import ThrowawaySSHD
from recoverd_plugins.files_restore import FilesInPlace
from recoverd_plugins.image import DeviceInfo, ImageEngine, ImageToDevice

PASSWORD = "image-Pa55word-never-shown"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
restore_sla = "4h"

[repositories.nas]
url = "{root}/repo"
password = "env:TEST_IMAGE_PASSWORD"

[machines.ws-042]
{ssh}
asset_tag = "ACME-PC-042"
mac = "52:54:00:12:34:56"
restore = "image"

[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{root}/home"]

[[machines.ws-042.levels]]
name = "weekly-image"
kind = "image"
repository = "nas"
device = "{root}/disk.img"

[[machines.ws-042.levels]]
name = "agentless-image"
kind = "image"
repository = "nas"
device = "{root}/disk.img"
via = "controller"

[[machines.ws-042.levels]]
name = "raw-image"
kind = "image"
repository = "nas"
device = "{root}/blob.raw"
{extra}
"""

DISK_FILES = {
    "docs/report.txt": b"quarterly report\n" * 100,
    "bin/tool": os.urandom(1_500_000),
    "中文/数据.txt": "备份恢复\n".encode(),
}
HOME_FILES = {
    "wang/notes.txt": b"meeting at 10\n",
    "wang/photo.jpg": os.urandom(300_000),
    "wang/new\nline.txt": b"a hostile name\n",
    "li/budget.xlsx": os.urandom(50_000),
}


class Site:
    """The policy, state, repository, disk image and files tree of this module's tests."""

    def __init__(self, root: Path, sshd: ThrowawaySSHD) -> None:
        self.root = root
        self.sshd = sshd
        self.policies = root / "policies"
        self.state = root / "state"
        self.disk = root / "disk.img"
        self.raw = root / "blob.raw"
        self.home = root / "home"
        self.policies.mkdir()

    def write_policy(self, extra: str = "") -> None:
        (self.policies / "acme.toml").write_text(
            POLICY.format(
                root=self.root,
                ssh=self.sshd.policy_lines,
                extra=extra,
            )
        )

    def recoverd(self, *argv: str) -> int:
        return main([*argv, "--policies", str(self.policies), "--state", str(self.state)])

    def runs(self, capsys: pytest.CaptureFixture[str]) -> list[dict]:
        capsys.readouterr()
        assert (
            main(["--state", str(self.state), "log", "--json", "--policies", str(self.policies)])
            == 0
        )
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    def write_home(self) -> None:
        for rel, data in HOME_FILES.items():
            path = self.home / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partclone_sha256(image: Path) -> str:
    stream = subprocess.run(
        ["partclone.ext4", "-c", "-s", str(image), "-o", "-"], capture_output=True, check=True
    ).stdout
    return hashlib.sha256(stream).hexdigest()


def assert_disk_intact(image: Path) -> None:
    """e2fsck finds nothing to fix and debugfs reads every file back byte for byte."""
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
    for rel, data in DISK_FILES.items():
        read = subprocess.run(
            ["debugfs", "-R", f"cat /{rel}", str(image)], capture_output=True, check=True
        )
        assert read.stdout == data, rel


def zero(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.write(bytes(size))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sshd: ThrowawaySSHD) -> Iterator[Site]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_IMAGE_PASSWORD", PASSWORD)
        site = Site(tmp_path_factory.mktemp("site"), sshd)
        src = site.root / "disk-src"
        for rel, data in DISK_FILES.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", str(src), str(site.disk), "64M"],
            check=True,
            capture_output=True,
        )
        site.raw.write_bytes(os.urandom(3 * 1024 * 1024 + 123))  # no file system: raw
        site.write_home()
        site.write_policy()
        assert site.recoverd("backup", "ws-042") == 0
        yield site


def test_image_backup_records_size_sha256_and_throughput_in_log_and_format_in_tags(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {r["level"]: r for r in site.runs(capsys) if r["action"] == "backup"}
    expected = partclone_sha256(site.disk)
    for level in ("weekly-image", "agentless-image"):
        stats = runs[level]["stats"]
        assert runs[level]["state"] == "succeeded", runs[level]["error"]
        assert stats["image_format"] == "pcl" and stats["fs_type"] == "ext4"
        assert stats["image_sha256"] == expected
        assert stats["consistency"] == "unmounted"
        assert stats["image_size"] > 1_500_000 and stats["throughput_bytes_s"] > 0
        assert stats["device_size"] == 64 * 1024 * 1024
    assert runs["weekly-image"]["stats"]["via"] == "machine"
    assert runs["agentless-image"]["stats"]["via"] == "controller"
    # The second image of the same disk deduplicates against the first.
    agentless = runs["agentless-image"]["stats"]
    assert agentless["bytes_added"] < agentless["image_size"] / 10
    raw = runs["raw-image"]["stats"]
    assert raw["image_format"] == "raw" and raw["image_sha256"] == sha256(site.raw)

    assert site.recoverd("snapshots", "ws-042", "--level", "weekly-image", "--json") == 0
    (snap,) = json.loads(capsys.readouterr().out)
    listed = subprocess.run(
        ["restic", "-r", str(site.root / "repo"), "snapshots", "--json", snap["id"]],
        env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
        capture_output=True,
        check=True,
    )
    (found,) = json.loads(listed.stdout)
    # Written with the backup (no `restic tag` afterwards, which would rewrite the snapshot):
    # what was known before the stream. What was measured is in the record of that snapshot.
    assert "original" not in found and runs["weekly-image"]["snapshot"] == found["short_id"]
    assert {"image-format=pcl", "image-fs=ext4", f"image-device-size={64 * 1024 * 1024}"} <= set(
        found["tags"]
    )
    assert not any(t.startswith("image-sha256=") for t in found["tags"])
    assert runs["weekly-image"]["stats"]["restic_version"].startswith("0.")


def test_restore_image_in_place_after_zeroing_the_disk(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    zero(site.disk)
    code = site.recoverd(
        "restore", "ws-042", "--yes", "--symptom", "PC does not boot", "--reported-by", "Ms Li"
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "level weekly-image (image)" in out and f"to         {site.disk}" in out
    assert_disk_intact(site.disk)
    run = site.runs(capsys)[-1]
    assert (run["action"], run["state"], run["level"]) == ("restore", "succeeded", "weekly-image")
    assert run["symptom"] == "PC does not boot" and run["reported_by"] == "Ms Li"
    assert run["engineer"] == operator() == run["operator"]  # who ran it, not the client's
    stats = run["stats"]
    assert stats["verification"] == "passed" and stats["mismatches"] == 0
    assert stats["time_to_restore_s"] > 0 and stats["bytes_restored"] > 1_500_000


def test_restore_image_via_controller_into_a_file(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = site.root / "copy of disk.img"
    code = site.recoverd(
        "restore", "ws-042", "--level", "agentless-image", "--to", str(copy), "--yes"
    )
    assert code == 0, capsys.readouterr()
    assert_disk_intact(copy)
    run = site.runs(capsys)[-1]
    assert run["stats"]["target"] == "image-to-file" and run["stats"]["verification"] == "passed"


def test_restore_raw_image_onto_another_device_gives_identical_bytes(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    other = site.root / "other-device.raw"
    other.write_bytes(bytes(4 * 1024 * 1024))  # larger than the image: a bigger disk
    assert (
        site.recoverd("restore", "ws-042", "--level", "raw-image", "--device", str(other), "--yes")
        == 0
    )
    assert other.stat().st_size == 4 * 1024 * 1024
    assert other.read_bytes()[: site.raw.stat().st_size] == site.raw.read_bytes()


def test_restore_image_onto_a_symlink_shows_and_writes_the_real_device(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    other = site.root / "other-device.raw"
    other.write_bytes(bytes(4 * 1024 * 1024))
    link = site.root / "by-id-disk"
    link.symlink_to(other)
    capsys.readouterr()
    args = ("restore", "ws-042", "--level", "raw-image", "--device", str(link))
    assert site.recoverd(*args, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"to         {other}  [image-to-device]" in out and f"given as {link}" in out
    assert site.recoverd(*args, "--yes") == 0
    assert (
        link.is_symlink() and other.read_bytes()[: site.raw.stat().st_size] == site.raw.read_bytes()
    )


def test_restore_image_to_too_small_device_refuses_before_writing(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    small = site.root / "small.img"
    small.write_bytes(b"keep me" * 1000)
    before = len(site.runs(capsys))
    assert site.recoverd("restore", "ws-042", "--device", str(small), "--yes") == 1
    captured = capsys.readouterr()
    assert "too small" in captured.err and "67108864" in captured.err
    assert small.read_bytes() == b"keep me" * 1000
    assert len(site.runs(capsys)) == before  # nothing happened, nothing recorded


def test_restore_onto_a_mounted_device_refuses_before_writing(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No mounts in tests: the probe reports the target mounted, as it would a real one.
    real_probe = ImageEngine.probe

    def mounted_probe(self: ImageEngine, path: str) -> DeviceInfo:
        info = real_probe(self, path)
        return DeviceInfo(info.path, info.kind, info.size, info.fstype, (("ro", "/mnt"),), True)

    monkeypatch.setattr(ImageEngine, "probe", mounted_probe)
    target = site.root / "mounted.img"
    target.write_bytes(bytes(64 * 1024 * 1024))
    assert site.recoverd("restore", "ws-042", "--device", str(target), "--yes") == 1
    assert f"{target} is mounted on /mnt" in capsys.readouterr().err
    assert target.read_bytes() == bytes(64 * 1024 * 1024)


def test_image_of_a_device_mounted_read_write_is_refused(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    mounted = [
        line.split()
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.startswith("/dev/") and line.split()[3].startswith("rw")
    ]
    mounted = [m for m in mounted if Path(m[0]).exists()]
    if not mounted:
        pytest.skip("no block device is mounted read-write here")
    device = mounted[0][0]
    site.write_policy(
        f'\n[[machines.ws-042.levels]]\nname = "root"\nkind = "image"\n'
        f'repository = "nas"\ndevice = "{device}"\n'
    )
    try:
        assert site.recoverd("backup", "ws-042", "--level", "root") == 1
    finally:
        site.write_policy()
    run = site.runs(capsys)[-1]
    assert run["state"] == "failed"
    assert f"{device} is mounted read-write" in run["error"] and "allow_mounted" in run["error"]


def test_failed_image_is_recorded_failed_and_its_partial_snapshot_forgotten(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    # An ext4 file system cut short: partclone streams what it can read, then fails.
    broken = site.root / "broken.img"
    broken.write_bytes(site.disk.read_bytes()[: 8 * 1024 * 1024])
    site.write_policy(
        '\n[[machines.ws-042.levels]]\nname = "broken"\nkind = "image"\n'
        f'repository = "nas"\ndevice = "{broken}"\n'
    )
    try:
        assert site.recoverd("backup", "ws-042", "--level", "broken") == 1
        run = site.runs(capsys)[-1]
        assert run["state"] == "failed"
        assert "partclone.extfs failed with exit status 1" in run["error"]
        assert site.recoverd("snapshots", "ws-042", "--level", "broken", "--json") == 0
        assert json.loads(capsys.readouterr().out) == []
    finally:
        site.write_policy()


def test_wrong_password_fails_both_image_routes_with_the_reason(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_IMAGE_PASSWORD", "not-the-password")
    for level in ("weekly-image", "agentless-image"):
        assert site.recoverd("backup", "ws-042", "--level", level) == 1
        run = site.runs(capsys)[-1]
        assert (run["level"], run["state"]) == (level, "failed")
        assert "wrong repository password" in run["error"]


def test_allow_mounted_takes_a_crash_consistent_image(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No mounts in tests: the probe reports the image file mounted, as it would a real one.
    real_probe = ImageEngine.probe

    def mounted_probe(self: ImageEngine, path: str, **options: bool) -> DeviceInfo:
        info = real_probe(self, path, **options)
        return dataclasses.replace(info, mounts=(("rw", "/srv"),), parent_exists=True)

    monkeypatch.setattr(ImageEngine, "probe", mounted_probe)
    site.write_policy("allow_mounted = true")
    try:
        assert site.recoverd("backup", "ws-042", "--level", "raw-image") == 0
    finally:
        site.write_policy()
    run = [r for r in site.runs(capsys) if r["action"] == "backup"][-1]
    assert run["stats"]["consistency"] == "crash-consistent"


def test_restore_files_in_place_after_deleting_and_corrupting(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (site.home / "wang/notes.txt").unlink()
    (site.home / "wang/photo.jpg").write_bytes(b"corrupted")
    code = site.recoverd("restore", "ws-042", "--in-place", "--yes", "--symptom", "lost files")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "replaces   1 existing file(s) that differ" in out
    assert str(site.home / "wang/photo.jpg") in out
    assert "creates    1 file(s) missing now" in out
    for rel, data in HOME_FILES.items():
        assert (site.home / rel).read_bytes() == data, rel
    run = site.runs(capsys)[-1]
    assert run["state"] == "succeeded" and run["stats"]["files_verified"] == len(HOME_FILES)


def test_restore_files_to_another_path(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = site.root / "restored here"
    assert (
        site.recoverd("restore", "ws-042", "--level", "nightly", "--to", str(elsewhere), "--yes")
        == 0
    )
    for rel, data in HOME_FILES.items():
        assert (elsewhere / str(site.home / rel).lstrip("/")).read_bytes() == data


def tree_digest(*paths: Path) -> dict[str, str]:
    found = {}
    for top in paths:
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if path.is_file():
                found[str(path)] = sha256(path)
    return found


def test_dry_run_and_missing_terminal_change_nothing(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (site.home / "wang/notes.txt").write_bytes(b"edited since the backup")
    zero(site.raw)
    before = tree_digest(site.home, site.disk, site.raw)
    runs_before = len(site.runs(capsys))
    assert site.recoverd("restore", "ws-042", "--dry-run") == 0
    assert site.recoverd("restore", "ws-042", "--in-place", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was changed" in out and "wang/notes.txt" in out
    assert site.recoverd("restore", "ws-042", "--in-place", "--dry-run", "--json") == 0
    (line,) = capsys.readouterr().out.splitlines()
    plan = json.loads(line)["plan"]
    assert plan["target"] == "files-in-place" and plan["level"] == "nightly"
    assert plan["replaced"] == [str(site.home / "wang/notes.txt")]
    # pytest's stdin is no terminal: without --yes nothing may be overwritten.
    assert site.recoverd("restore", "ws-042", "--in-place") == 1
    assert "pass --yes" in capsys.readouterr().err
    assert tree_digest(site.home, site.disk, site.raw) == before
    assert len(site.runs(capsys)) == runs_before
    site.write_home()


def restore_on_a_terminal(site: Site, answer: bytes, *argv: str) -> tuple[int, str]:
    """Run `recoverd restore` with a pseudo-terminal as stdin and stderr, answer the
    question, and return the exit code and what the terminal showed."""
    controller, terminal = pty.openpty()
    command = [sys.executable, "-c", "import sys; from recoverd.cli import main; sys.exit(main())"]
    process = subprocess.Popen(
        [
            *command,
            "restore",
            "ws-042",
            *argv,
            "--policies",
            str(site.policies),
            "--state",
            str(site.state),
        ],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "TEST_IMAGE_PASSWORD": PASSWORD},
    )
    os.close(terminal)
    shown = b""
    try:
        while b"[y/N]" not in shown:
            ready, _, _ = select.select([controller], [], [], 60)
            assert ready, f"no question within 60 s; the terminal showed {shown!r}"
            shown += os.read(controller, 4096)
        os.write(controller, answer)
        process.stdout.read()  # type: ignore[union-attr]
        code = process.wait(timeout=120)
    finally:
        process.kill()
        os.close(controller)
    return code, shown.decode(errors="replace")


def test_restore_asks_on_a_terminal_and_no_changes_nothing(site: Site) -> None:
    (site.home / "wang/notes.txt").write_bytes(b"edited since the backup")
    code, shown = restore_on_a_terminal(site, b"n\n", "--in-place")
    assert code == 1 and "Restore now?" in shown
    assert (site.home / "wang/notes.txt").read_bytes() == b"edited since the backup"
    code, _ = restore_on_a_terminal(site, b"y\n", "--in-place")
    assert code == 0
    assert (site.home / "wang/notes.txt").read_bytes() == HOME_FILES["wang/notes.txt"]


def test_restore_that_fails_verification_is_recorded_failed(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = site.home / "li/budget.xlsx"
    real_write = FilesInPlace.write

    def write_then_corrupt(self, request, plan, progress):  # type: ignore[no-untyped-def]
        stats = real_write(self, request, plan, progress)
        victim.write_bytes(b"bit rot after the restore")
        return stats

    monkeypatch.setattr(FilesInPlace, "write", write_then_corrupt)
    assert site.recoverd("restore", "ws-042", "--in-place", "--yes", "--verify", "full") == 1
    run = site.runs(capsys)[-1]
    assert run["state"] == "failed" and run["stats"]["verification"] == "failed"
    assert run["stats"]["verify"] == "full" and run["stats"]["mismatches"] == 1
    assert f"{victim}: sha256 differs" in run["error"]


def test_verify_modes_are_for_files_restores_only(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.recoverd("restore", "ws-042", "--verify", "full", "--dry-run") == 2
    assert "--verify full is for files restores" in capsys.readouterr().err
    assert site.recoverd("restore", "ws-042", "--in-place", "--verify", "full", "--dry-run") == 0


def test_image_restore_that_fails_verification_is_recorded_failed(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = ImageToDevice.write

    def write_then_corrupt(self, request, plan, progress):  # type: ignore[no-untyped-def]
        stats = real_write(self, request, plan, progress)
        subprocess.run(
            ["debugfs", "-w", "-R", "rm /docs/report.txt", str(site.disk)],
            check=True,
            capture_output=True,
        )
        return stats

    monkeypatch.setattr(ImageToDevice, "write", write_then_corrupt)
    assert site.recoverd("restore", "ws-042", "--yes") == 1
    run = site.runs(capsys)[-1]
    assert run["state"] == "failed"
    assert f"{site.disk}: image sha256" in run["error"] and "differs" in run["error"]


def test_password_is_in_no_argv_log_or_record_while_imaging(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(
                subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            )

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert site.recoverd("backup", "ws-042", "--level", "weekly-image") == 0
        assert site.recoverd("backup", "ws-042", "--level", "agentless-image") == 0
    finally:
        stop.set()
        watcher.join()
    listing = "\n".join(seen)
    assert "restic" in listing and "partclone" in listing  # the watcher saw the pipeline
    assert PASSWORD not in listing
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    for path in site.state.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD.encode() not in Path(site.sshd.log_path).read_bytes()


def test_card_shows_identity_restore_points_and_the_restore_command(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert site.recoverd("card", "ws-042") == 0
    out = capsys.readouterr().out
    for text in (
        "ACME-PC-042",
        "52:54:00:12:34:56",
        "127.0.0.1",
        "Acme Trading Co.",
        "weekly-image",
    ):
        assert text in out
    assert "recoverd restore ws-042" in out
    assert site.recoverd("card", "ws-042", "--json") == 0
    card = json.loads(capsys.readouterr().out)
    assert card["restores"]["level"] == "weekly-image"
    assert {p["level"] for p in card["restore_points"]} >= {"nightly", "weekly-image"}
