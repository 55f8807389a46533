"""Parts that need no repository: LVM snapshot commands, stream queues, target choice."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import recoverd
from recoverd.actions.restore import target_class
from recoverd.controller import Controller
from recoverd.engine import Snapshot
from recoverd.errors import EngineError, UsageError
from recoverd.plugins import Kind, PluginHost
from recoverd.policy.model import Level, Machine
from recoverd.secrets import SecretResolver
from recoverd.streams import ByteQueue, StreamAborted
from recoverd_plugins.files_restore import FilesInPlace, FilesToPath
from recoverd_plugins.image import DIGEST, ImageFormat, ImageToDevice, LvmSnapshot, image_facts
from recoverd_plugins.local import LocalTransport

FAKE_LVM = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$(basename "$0")" in
  lvs) [ "$4" = /dev/mapper/vg0-home ] && echo "  vg0 home" ;;
esac
exit 0
"""


@pytest.fixture
def fake_lvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """lvs, lvcreate and lvremove that record their arguments (no LVM in tests)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "lvm.log"
    bin_dir.mkdir()
    for tool in ("lvs", "lvcreate", "lvremove"):
        script = bin_dir / tool
        script.write_text(FAKE_LVM.format(log=log))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_lvm_snapshot_creates_and_then_removes_a_snapshot_volume(fake_lvm: Path) -> None:
    level = Level(name="weekly image", kind="image", device="/dev/mapper/vg0-home", snapshot="lvm")
    transport = LocalTransport(
        Machine(name="srv", client="acme", transport="local"), SecretResolver({})
    )
    with LvmSnapshot(transport, level) as device:
        assert device.startswith("/dev/vg0/recoverd-weekly-image-")
        name = device.rsplit("/", 1)[1]
    calls = fake_lvm.read_text().splitlines()
    assert calls == [
        "lvs --noheadings -o vg_name,lv_name /dev/mapper/vg0-home",
        f"lvcreate --snapshot --extents 10%ORIGIN --name {name} vg0/home",
        f"lvremove --yes vg0/{name}",
    ]


def test_lvm_snapshot_of_a_plain_device_says_it_is_no_logical_volume(fake_lvm: Path) -> None:
    level = Level(name="w", kind="image", device="/dev/sdb1", snapshot="lvm")
    transport = LocalTransport(
        Machine(name="srv", client="acme", transport="local"), SecretResolver({})
    )
    with (
        pytest.raises(EngineError, match="not an LVM logical volume"),
        LvmSnapshot(transport, level),
    ):
        pass
    assert "lvcreate" not in fake_lvm.read_text()


def test_image_format_uses_partclone_for_known_file_systems_else_raw() -> None:
    assert ImageFormat.for_fstype("ext4").clone("/dev/sda2") == [
        "partclone.extfs",
        "-c",
        "-s",
        "/dev/sda2",
        "-o",
        "-",
    ]
    assert ImageFormat.for_fstype("vfat").program == "partclone.fat"
    raw = ImageFormat.for_fstype(None)
    assert raw.format == "raw" and raw.clone("/dev/sdb", 1024) == ["head", "-c", "1024", "/dev/sdb"]


def test_byte_queue_passes_chunks_in_order_and_reads_across_them() -> None:
    queue = ByteQueue(max_chunks=2)
    writer = threading.Thread(
        target=lambda: ([queue.put(bytes([i]) * 3) for i in range(50)], queue.close())
    )
    writer.start()
    data = queue.read(10) + queue.read()
    writer.join(5)
    assert data == b"".join(bytes([i]) * 3 for i in range(50))


def test_byte_queue_abort_stops_a_waiting_writer() -> None:
    queue = ByteQueue(max_chunks=1)
    failed: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(10):
                queue.put(b"x")
        except StreamAborted as exc:
            failed.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    queue.abort()
    writer.join(5)
    assert not writer.is_alive() and failed


class _OwnTarget(FilesInPlace):
    name = "own-files-in-place"


class _OwnTargetPlugin:
    @recoverd.hookimpl
    def recoverd_add_restore_targets(self, register: Kind) -> None:
        register.add(_OwnTarget.name, _OwnTarget)


def test_target_class_prefers_a_third_party_target_over_the_built_in(tmp_path: Path) -> None:
    plugins = PluginHost(extra=[("own", _OwnTargetPlugin())])
    ctl = Controller(tmp_path, tmp_path, plugins)
    files = Level(name="nightly", kind="files")
    image = Level(name="weekly", kind="image", device="/dev/sda2")
    assert target_class(ctl, files, "in-place") is _OwnTarget
    assert target_class(ctl, files, "path") is FilesToPath
    assert target_class(ctl, image, "in-place") is ImageToDevice
    with pytest.raises(
        UsageError, match="no restore target restores files snapshots with --device"
    ):
        target_class(ctl, files, "device")


def image_snapshot(tags: tuple[str, ...], record: dict | None = None) -> Snapshot:
    return Snapshot(
        id="ab" * 32,
        short_id="abababab",
        time="2026-11-01T03:00:00Z",
        level="weekly-image",
        paths=("/sda2.pcl",),
        tags=("recoverd", "level=weekly-image", *tags),
        record=record,
    )


def test_image_facts_take_the_measured_stream_from_the_record() -> None:
    tags = ("image-format=pcl", "image-fs=ext4", "image-device-size=67108864")
    facts = image_facts(image_snapshot(tags, {"image_sha256": "f" * 64, "image_size": 1234}))
    assert facts == {
        "sha256": "f" * 64,
        "size": 1234,
        "format": "pcl",
        "fstype": "ext4",
        "device_size": 67108864,
        "file": "/sda2.pcl",
    }


def test_image_facts_of_an_image_tagged_after_its_backup_read_the_tags() -> None:
    tags = ("image-format=raw", "image-fs=", "image-sha256=" + "e" * 64, "image-size=99")
    facts = image_facts(image_snapshot(tags))
    assert facts["sha256"] == "e" * 64 and facts["size"] == 99 and facts["fstype"] is None


def test_image_facts_without_a_record_know_a_raw_image_by_its_device_size() -> None:
    facts = image_facts(image_snapshot(("image-format=raw", "image-device-size=4096")))
    assert facts["sha256"] is None and facts["size"] == 4096


def test_image_facts_of_a_snapshot_that_is_no_image_refuse() -> None:
    with pytest.raises(EngineError, match="not a recoverd disk image"):
        image_facts(image_snapshot(()))


@pytest.mark.parametrize("with_openssl", [True, False])
def test_image_digest_script_hashes_with_openssl_or_sha256sum(
    tmp_path: Path, with_openssl: bool
) -> None:
    # The machine's hash of an image: openssl (SHA extensions) where it is installed, else
    # coreutils' sha256sum; both must give the same hex digest first on the line.
    data = os.urandom(3 << 20)
    (tmp_path / "image").write_bytes(data)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ["cat", "sha256sum", *(["openssl"] if with_openssl else [])]:
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    script = DIGEST.format(producer=f"cat {tmp_path / 'image'}")
    done = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(tools)}, capture_output=True, check=True
    )
    digest, name = done.stdout.decode().split()
    assert digest == hashlib.sha256(data).hexdigest()
    assert name == ("*stdin" if with_openssl else "-")  # which tool answered
    assert b"recoverd-producer-exit 0" in done.stderr
