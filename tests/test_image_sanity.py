"""Image sanity: a wiped or reformatted disk is not imaged, and never the default restore point.

Real parts: the throwaway sshd, restic, partclone and ext4 images made with ``mkfs.ext4 -d``
(no mount), imaged through both routes (``via = "machine"`` and ``via = "controller"``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.controller import Controller
from recoverd.restore_points import default_restore_points
from recoverd.testing import ThrowawaySSHD
from recoverd_plugins.image import DeviceState, device_change

PASSWORD = "sanity-Pa55word-never-shown"
UUID = "0b9c2f4e-5d1a-4c3b-9e8f-7a6b5c4d3e2f"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"

[repositories.nas]
url = "{root}/repo"
password = "env:TEST_SANITY_PASSWORD"

[machines.ws-042]
{ssh}
restore = "image"

[[machines.ws-042.levels]]
name = "weekly-image"
kind = "image"
repository = "nas"
device = "{root}/disk.img"
keep = {{ last = 2 }}

[[machines.ws-042.levels]]
name = "agentless-image"
kind = "image"
repository = "nas"
device = "{root}/disk.img"
via = "controller"
keep = {{ last = 2 }}

[[machines.ws-042.levels]]
name = "blank-raw"
kind = "image"
repository = "nas"
device = "{root}/blank.raw"

[[machines.ws-042.levels]]
name = "blank-raw-agentless"
kind = "image"
repository = "nas"
device = "{root}/blank.raw"
via = "controller"

[[machines.ws-042.levels]]
name = "drill-image"
kind = "verify"
of = "weekly-image"
"""

IMAGE_LEVELS = ("weekly-image", "agentless-image")


class Site:
    def __init__(self, root: Path, sshd: ThrowawaySSHD) -> None:
        self.root = root
        self.policies = root / "policies"
        self.state = root / "state"
        self.disk = root / "disk.img"
        self.blank = root / "blank.raw"
        self.policies.mkdir()
        (self.policies / "acme.toml").write_text(POLICY.format(root=root, ssh=sshd.policy_lines))

    def recoverd(self, *argv: str) -> int:
        return main([*argv, "--policies", str(self.policies), "--state", str(self.state)])

    def runs(self, capsys: pytest.CaptureFixture[str]) -> list[dict]:
        capsys.readouterr()
        argv = ["--state", str(self.state), "log", "--json", "--policies", str(self.policies)]
        assert main(argv) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    def last(self, capsys: pytest.CaptureFixture[str], level: str, action: str = "backup") -> dict:
        return [r for r in self.runs(capsys) if r["level"] == level and r["action"] == action][-1]

    def make_disk(self, data: int, *, uuid: str = UUID, label: str = "data") -> None:
        """An ext4 image of 64 MiB holding ``data`` bytes of random data in a few files."""
        src = self.root / "src"
        subprocess.run(["rm", "-rf", str(src)], check=True)
        (src / "docs").mkdir(parents=True)
        (src / "docs" / "report.txt").write_bytes(b"quarterly report\n" * 100)
        for i in range(data // 4_000_000):
            (src / f"blob{i}.bin").write_bytes(os.urandom(4_000_000))
        self.disk.unlink(missing_ok=True)
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-U",
                uuid,
                "-L",
                label,
                "-d",
                str(src),
                str(self.disk),
                "64M",
            ],
            check=True,
            capture_output=True,
        )

    def snapshots(self) -> list[dict]:
        listed = subprocess.run(
            ["restic", "-r", str(self.root / "repo"), "snapshots", "--json"],
            env={**os.environ, "RESTIC_PASSWORD": PASSWORD},
            capture_output=True,
            check=True,
        )
        return json.loads(listed.stdout)

    def plan(self, capsys: pytest.CaptureFixture[str], level: str) -> tuple[int, dict]:
        capsys.readouterr()
        code = self.recoverd("restore", "ws-042", "--level", level, "--dry-run", "--json")
        out = capsys.readouterr().out.splitlines()
        return code, json.loads(out[0])["plan"] if out else {}


@pytest.fixture
def site(tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("TEST_SANITY_PASSWORD", PASSWORD)
    site = Site(tmp_path, sshd)
    site.make_disk(24_000_000)
    site.blank.write_bytes(bytes(2 * 1024 * 1024 + 4096))
    return site


def zero(path: Path, length: int | None = None) -> None:
    """Write zeros over the first ``length`` bytes of ``path`` (all of it by default)."""
    size = path.stat().st_size if length is None else length
    with path.open("r+b") as f:
        f.write(bytes(size))


@pytest.mark.slow
def test_zeroed_disk_is_not_imaged_and_stays_out_of_restores_and_drills(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    for level in IMAGE_LEVELS:
        assert site.recoverd("backup", "ws-042", "--level", level) == 0
    good = {level: site.last(capsys, level) for level in IMAGE_LEVELS}
    stored = len(site.snapshots())

    zero(site.disk)
    for level in IMAGE_LEVELS:
        capsys.readouterr()
        assert site.recoverd("backup", "ws-042", "--level", level) == 1
        out = capsys.readouterr().out
        run = site.last(capsys, level)
        assert run["state"] == "failed"
        error = run["error"]
        assert "was not imaged: it has lost its ext4 file system" in error
        assert f"last good (image {good[level]['snapshot']} of " in error
        assert f"ext4, {error.split('ext4, ')[1].split(' used')[0]} used, UUID {UUID}" in error
        assert "now: no file system, all zeros in 16 samples across 64.0 MiB" in error
        assert f"recoverd backup acme/ws-042 --level {level} --accept-change" in error
        assert "--accept-change" in out
    # What the comparison used: recorded with each good image.
    for run in good.values():
        stats = run["stats"]
        assert stats["fs_uuid"] == UUID and stats["fs_label"] == "data"
        assert 20_000_000 < stats["fs_used_bytes"] < 40_000_000
        assert stats["all_zeros"] is False and stats["compared_with"] is None
    # Nothing stored, and no retention after a refusal.
    assert len(site.snapshots()) == stored
    assert [r["state"] for r in site.runs(capsys) if r["action"] == "prune"] == ["succeeded"] * 2

    # The engineer says the change is intended: imaged, recorded so, and still never a default.
    capsys.readouterr()
    assert site.recoverd("backup", "ws-042", "--level", "weekly-image", "--accept-change") == 0
    accepted = site.last(capsys, "weekly-image")
    assert accepted["state"] == "succeeded"
    assert accepted["stats"]["fs_type"] is None and accepted["stats"]["all_zeros"] is True
    assert "it has lost its ext4 file system" in accepted["stats"]["accepted_change"]
    code, plan = site.plan(capsys, "weekly-image")
    assert code == 0 and plan["snapshot"] == good["weekly-image"]["snapshot"]
    # The drill's default is the good image too, and it passes.
    assert site.recoverd("verify", "ws-042", "--level", "drill-image", "--json") == 0
    drill = site.last(capsys, "drill-image", "verify")
    assert drill["state"] == "succeeded" and drill["snapshot"] == good["weekly-image"]["snapshot"]


@pytest.mark.slow
def test_disk_whose_superblock_is_wiped_is_not_imaged_on_either_route(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    for level in IMAGE_LEVELS:
        assert site.recoverd("backup", "ws-042", "--level", level) == 0
    zero(site.disk, 1024 * 1024)  # the primary superblock and group descriptors are gone
    assert site.recoverd("backup", "ws-042") == 1
    runs = [r for r in site.runs(capsys) if r["action"] == "backup"][-len(IMAGE_LEVELS) - 3 :]
    by_level = {r["level"]: r for r in runs}
    for level in IMAGE_LEVELS:
        error = by_level[level]["error"]
        assert by_level[level]["state"] == "failed"
        assert "it has lost its ext4 file system" in error
        assert "now: no file system recognised (data in the samples, 64.0 MiB)" in error
    # The blank raw device has no good image yet: all zeros is refused on both routes too.
    for level in ("blank-raw", "blank-raw-agentless"):
        assert by_level[level]["state"] == "failed"
        assert (
            "was not imaged: it is all zeros. no good image of this level yet"
            in (by_level[level]["error"])
        )
        assert (
            "now: no file system, all zeros (every byte of 2.0 MiB read)"
            in (by_level[level]["error"])
        )
    # What restic stored of the zeros was forgotten: only the two good images are left.
    assert len(site.snapshots()) == len(IMAGE_LEVELS)


@pytest.mark.slow
def test_blank_raw_device_accepted_is_imaged_but_no_default(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    for level in ("blank-raw", "blank-raw-agentless"):
        assert site.recoverd("backup", "ws-042", "--level", level, "--accept-change") == 0
        run = site.last(capsys, level)
        assert run["state"] == "succeeded" and run["stats"]["all_zeros"] is True
        assert "it is all zeros" in run["stats"]["accepted_change"]
        code, _ = site.plan(capsys, level)
        assert code == 2
    capsys.readouterr()
    site.recoverd("restore", "ws-042", "--level", "blank-raw", "--dry-run")
    assert "never taken by default" in capsys.readouterr().err
    # A raw device with data is imaged as before, and is a default.
    site.blank.write_bytes(os.urandom(1024 * 1024))
    assert site.recoverd("backup", "ws-042", "--level", "blank-raw") == 0
    run = site.last(capsys, "blank-raw")
    assert run["stats"]["all_zeros"] is False and "accepted_change" not in run["stats"]
    code, plan = site.plan(capsys, "blank-raw")
    assert code == 0 and plan["snapshot"] == run["snapshot"]


@pytest.mark.slow
def test_reformatted_disk_is_refused_and_a_big_clean_up_is_a_warning(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.recoverd("backup", "ws-042", "--level", "weekly-image") == 0
    good = site.last(capsys, "weekly-image")
    site.make_disk(24_000_000, uuid="5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d")
    assert site.recoverd("backup", "ws-042", "--level", "weekly-image") == 1
    run = site.last(capsys, "weekly-image")
    assert "it holds a new ext4 file system (it was formatted again)" in run["error"]
    assert f"UUID {UUID}" in run["error"] and "UUID 5a4b3c2d-1e0f" in run["error"]

    # The same file system (same UUID) with most of its data deleted: imaged, with a warning.
    site.make_disk(0, label="data2")
    capsys.readouterr()
    assert site.recoverd("backup", "ws-042", "--level", "weekly-image") == 0
    out = capsys.readouterr().out
    run = site.last(capsys, "weekly-image")
    assert run["state"] == "succeeded" and run["stats"]["compared_with"] == good["snapshot"]
    warnings = run["stats"]["warnings"]
    assert any(
        w.startswith("used space fell from ") and "since the last good" in w for w in warnings
    )
    assert 'the file system label changed from "data" to "data2"' in warnings
    assert "warning: used space fell from" in out
    code, plan = site.plan(capsys, "weekly-image")
    assert code == 0 and plan["snapshot"] == run["snapshot"]


def test_accept_change_needs_a_level(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert site.recoverd("backup", "ws-042", "--accept-change") == 2
    assert "--level" in capsys.readouterr().err
    assert site.runs(capsys) == []


@pytest.mark.slow
def test_image_of_a_wiped_disk_recorded_before_the_check_is_no_default(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images that older versions recorded as succeeded (raw, no file system) after a good
    one: the restore and the next image's comparison skip them."""
    assert site.recoverd("backup", "ws-042", "--level", "weekly-image") == 0
    good = site.last(capsys, "weekly-image")
    ctl = Controller(site.policies, site.state)
    for snapshot in ("deadbeef", "feedface"):
        run = ctl.log.start(
            client="acme",
            machine="ws-042",
            level="weekly-image",
            kind="image",
            action="backup",
            trigger="schedule",
            repository="nas",
        )
        stats = {"image_format": "raw", "fs_type": None, "image_size": 67108864, "via": "machine"}
        ctl.log.finish(run, "succeeded", snapshot=snapshot, stats=stats)
    code, plan = site.plan(capsys, "weekly-image")
    assert code == 0 and plan["snapshot"] == good["snapshot"]
    # The disk is still wiped: the next image is compared with the good one, not the raw ones.
    zero(site.disk)
    assert site.recoverd("backup", "ws-042", "--level", "weekly-image") == 1
    run = site.last(capsys, "weekly-image")
    assert "it has lost its ext4 file system" in run["error"]
    assert f"image {good['snapshot']}" in run["error"]


def state(**fields: object) -> DeviceState:
    return DeviceState(**{"fs_type": "ext4", **fields})  # type: ignore[arg-type]


def test_device_change_rules() -> None:
    ext4 = state(uuid="a", label="x", used=400 << 20, size=1 << 30)
    assert device_change(None, state(fs_type=None, sampled=16, sample_nonzero=0)) == (None, [])
    assert device_change(None, state(fs_type=None, all_zeros=True))[0] == "it is all zeros"
    assert device_change(ext4, state(fs_type=None))[0] == "it has lost its ext4 file system"
    assert device_change(ext4, state(fs_type="xfs"))[0] == (
        "its file system changed from ext4 to xfs"
    )
    assert "formatted again" in (device_change(ext4, state(uuid="b"))[0] or "")
    assert device_change(ext4, state(uuid="a", label="x", used=300 << 20)) == (None, [])
    change, warnings = device_change(ext4, state(uuid="a", label="x", used=100 << 20))
    assert change is None and warnings == [
        "used space fell from 400.0 MiB to 100.0 MiB (-75%) since the last good image"
    ]
    # An older record knows only the file system type.
    assert device_change(DeviceState.recorded({"fs_type": "ext4"}), state(uuid="c")) == (None, [])
    assert DeviceState.recorded({"fs_type": None}).fs_type is None
    label = DeviceState.of(
        type("Info", (), {"fstype": "ext4", "size": 1, "signature": {"label": "a\x1b[2Jb"}})()  # type: ignore[arg-type]
    ).label
    assert label == "a?[2Jb"


def test_default_restore_points_leave_out_wiped_images() -> None:
    def image(n: int, fs: str | None, **stats: object) -> dict:
        return {
            "id": str(n),
            "snapshot": f"s{n}",
            "stats": {"image_format": "raw", "fs_type": fs, **stats},
        }

    files = {"id": "f", "snapshot": "sf", "stats": {"files_new": 1}}
    views = [
        image(1, "ext4"),
        image(2, None),  # an old record: the disk lost its file system
        image(3, None, all_zeros=True, accepted_change="it is all zeros"),
        files,
        image(4, "ext4"),
        image(5, None, all_zeros=False, accepted_change="it has lost its ext4 file system"),
        image(6, None, all_zeros=False),  # raw after an accepted raw: the device is raw now
    ]
    assert [v["id"] for v in default_restore_points(views)] == ["1", "f", "4", "5", "6"]
