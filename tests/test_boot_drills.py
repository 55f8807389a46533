"""Boot drills: a real bootable disk (built here without mounting), imaged over the throwaway
sshd, restored and booted in qemu; broken disks each named by their own verdict.

The disks are built once per kernel package and builder version, in pytest's cache. Every qemu
started by a test must be gone when the test ends (the ``no_qemu_left`` fixture checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverd.actions.daemon import Daemon
from recoverd.cli import main
from recoverd.controller import Controller
from recoverd.errors import PolicyError
from recoverd.log.maintenance import utc_now
from recoverd.policy.load import load_policies
from recoverd.testing import ThrowawaySSHD
from recoverd.testing_boot import VARIANTS, break_disk, build_disk, disk_id, missing_tools
from recoverd_plugins import boot
from recoverd_plugins.boot import (
    BootSettings,
    boot_disk,
    console_tail,
    inspect_disk,
    network_is_isolated,
    qemu_argv,
    run_probe,
    running_qemu,
)

PASSWORD = "boot-drill-Pa55word-never-shown"
PNG = b"\x89PNG\r\n\x1a\n"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
restore_sla = "4h"

[repositories.images]
url = "{root}/images"
password = "env:TEST_BOOT_PASSWORD"

[machines.ws-042]
{ssh}

[[machines.ws-042.levels]]
name = "system-disk"
kind = "image"
repository = "images"
device = "{good}"

[[machines.ws-042.levels]]
name = "old-disk"
kind = "image"
repository = "images"
device = "{broken}"

[[machines.ws-042.levels]]
name = "boot-drill"
kind = "verify"
of = "system-disk"
boot = true
boot_timeout = "2m"
probe = ["tcp:8080"]

[[machines.ws-042.levels]]
name = "boot-drill-old"
kind = "verify"
of = "old-disk"
boot = true
boot_timeout = "1m"
every = "month on day 1 at 06:00"
"""


def qemu_children() -> list[int]:
    """qemu processes started by this test process (directly, as running_qemu does)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(os.getpid()) and "qemu" in fields.get("Name", ""):
            found.append(int(status.parent.name))
    return found


@pytest.fixture(autouse=True)
def no_qemu_left() -> Iterator[None]:
    yield
    left = qemu_children()
    for pid in left:  # do not leave them running for the next test either
        os.kill(pid, 9)
    assert not left, f"qemu left running: {left}"


@pytest.fixture(scope="session")
def disks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The good test disk and its broken variants, built once (cached in pytest's cache, or
    for this session when the cache is off: ``-p no:cacheprovider``)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"boot drills need {', '.join(missing)} (run ./setup.sh)")
    name = f"boot-disk-{disk_id()}"
    pytest_cache = getattr(request.config, "cache", None)
    cache = Path(pytest_cache.mkdir(name)) if pytest_cache else tmp_path_factory.mktemp(name)
    good = cache / "good.img"
    if not good.exists():
        build_disk(cache / "building.img", cache / "work")
        (cache / "building.img").rename(good)
    found = {"good": good}
    for variant in VARIANTS:
        found[variant] = cache / f"{variant}.img"
        if not found[variant].exists():
            break_disk(good, variant, found[variant])
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- without booting ---------------------------------------------------------------------------


def test_qemu_argv_keeps_the_guest_off_every_network(tmp_path: Path) -> None:
    offline = qemu_argv(tmp_path / "d.img", tmp_path, accel="tcg", firmware="bios")
    assert offline[offline.index("-nic") + 1] == "none"
    assert "-snapshot" in offline and "-netdev" not in offline
    assert network_is_isolated(offline)

    probed = qemu_argv(
        tmp_path / "d.img", tmp_path, accel="tcg", firmware="uefi", forwards={40022: 22}
    )
    nics = [probed[i + 1] for i, a in enumerate(probed) if a == "-nic"]
    assert nics == ["user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"]
    assert "-bios" in probed and "-snapshot" in probed
    assert network_is_isolated(probed)

    for hostile in (
        ["-nic", "user,model=virtio-net-pci"],  # the guest would reach the host and beyond
        ["-nic", "user,restrict=on,hostfwd=tcp::40022-:22"],  # listens on every address
        ["-nic", "user,restrict=on,hostfwd=tcp:0.0.0.0:40022-:22"],
        ["-nic", "user,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:sh"],
        ["-nic", "tap,ifname=tap0"],
        ["-netdev", "user,id=n"],
        ["-device", "e1000,netdev=n"],
    ):
        assert not network_is_isolated([*offline, *hostile]), hostile
        with pytest.raises(Exception, match="could reach a network"):
            with running_qemu([*offline, *hostile], tmp_path):
                pass


def test_a_disk_path_with_commas_stays_one_option(tmp_path: Path) -> None:
    argv = qemu_argv(Path("/x/a,file=/etc/passwd.img"), tmp_path, accel="tcg", firmware="bios")
    drive = argv[argv.index("-drive") + 1]
    assert drive == "file=/x/a,,file=/etc/passwd.img,format=raw,if=virtio"


def test_console_tail_is_escaped_and_bounded() -> None:
    text = "ok\n" + "\x1b[2J\x1b[Hcleared\n" + "bell\x07 nul\x00 esc\x1b]0;title\x07\n"
    text += "x" * 5000 + "\n" + "".join(f"line {i}\n" for i in range(100))
    tail = console_tail(text)
    assert len(tail) == 30 and tail[-1] == "line 99"
    assert all(len(line) <= 240 and line.isprintable() for line in tail)
    early = console_tail(text, lines=200)
    assert "cleared" in early and "bell\\x07 nul\\x00 esc\\x1b]0;title\\x07" in early


def test_probes_tell_an_ssh_server_from_a_closed_port(sshd: ThrowawaySSHD) -> None:
    assert run_probe("ssh", sshd.port, time.monotonic() + 10) == "passed"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    started = time.monotonic()
    outcome = run_probe("tcp:22", closed, time.monotonic() + 1.5)
    assert outcome.startswith("failed: ") and time.monotonic() - started < 5
    with socket.socket() as server:  # something that is not SSH
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        outcome = run_probe("ssh", port, time.monotonic() + 1.5)
    assert outcome.startswith("failed: ")


def test_boot_keys_are_checked_with_their_paths(tmp_path: Path) -> None:
    base = """\
[client]
name = "Acme"
[repositories.r]
url = "/srv/r"
password = "env:X"
[machines.ws]
address = "ws.example"
[[machines.ws.levels]]
name = "disk"
kind = "image"
repository = "r"
device = "/dev/sda"
[[machines.ws.levels]]
name = "home"
kind = "files"
repository = "r"
paths = ["/home"]
[[machines.ws.levels]]
name = "boot-drill"
kind = "verify"
"""
    (tmp_path / "acme.toml").write_text(base + 'of = "disk"\nboot = true\nprobe = ["ssh"]\n')
    level = load_policies(tmp_path).find_machine("ws").level("boot-drill")
    assert level is not None and level.boot and level.where == "controller"
    assert level.boot_timeout == "3m" and level.probe == ("ssh",) and level.expect is None

    bad = {
        'of = "home"\nboot = true\n': "boot drills boot disk images; 'home' is a files level",
        'of = "disk"\nboot = true\nwhere = "machine"\n': "on the controller",
        'of = "disk"\nboot = true\nprobe = ["tcp:0"]\n': "is not a probe",
        'of = "disk"\nboot = true\nprobe = ["http"]\n': "is not a probe",
        'of = "disk"\nboot = true\nboot_timeout = "3 minutes"\n': "is not a duration",
        'of = "disk"\nexpect = "login:"\n': "'expect' needs boot = true",
        'of = "disk"\nboot = true\nexpect = "\\u001b[0m"\n': "control character",
    }
    for tail, message in bad.items():
        (tmp_path / "acme.toml").write_text(base + tail)
        with pytest.raises(PolicyError) as caught:
            load_policies(tmp_path)
        assert message in str(caught.value), (tail, str(caught.value))
        assert "machines.ws.levels[2]" in str(caught.value)


def test_inspection_reads_the_disk_without_mounting(disks: dict[str, Path]) -> None:
    good = inspect_disk(disks["good"])
    assert (good.table, good.boot_code, good.firmware) == ("mbr", True, "bios")
    assert [p["fs"] for p in good.partitions] == ["vfat", "ext"]
    assert good.kernel is True and good.init is True
    assert inspect_disk(disks["no-kernel"]).kernel is False
    assert inspect_disk(disks["no-init"]).init is False
    zeroed = inspect_disk(disks["zeroed"])
    assert zeroed.table is None and not zeroed.boot_code
    assert any("no file system" in n for n in inspect_disk(disks["no-root"]).notes)


# -- booting -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "verdict", "evidence"),
    [
        ("zeroed", "not-bootable", "firmware: 'No bootable device"),
        ("no-kernel", "kernel-missing", "Loading vmlinuz... failed"),
        ("init-fails", "init-failed", "Attempted to kill init!"),
        ("no-init", "init-failed", "doesn't have requested /sbin/init"),
        ("no-root", "root-missing", "LABEL=rootfs does not exist"),
    ],
)
def test_each_broken_disk_gets_its_own_verdict(
    disks: dict[str, Path], tmp_path: Path, variant: str, verdict: str, evidence: str
) -> None:
    disk = disks[variant]
    before = sha256(disk)
    started = time.monotonic()
    result = boot_disk(
        disk, BootSettings(timeout_s=60), evidence_dir=tmp_path, evidence_name=variant
    )
    assert result.result == verdict, result
    assert evidence in result.evidence[0]
    assert result.seconds < 60 and time.monotonic() - started < 75
    assert Path(result.screenshot or "").read_bytes()[:8] == PNG
    assert sha256(disk) == before  # -snapshot: the restored file is never written


@pytest.mark.slow
def test_a_boot_that_does_not_finish_in_time_is_a_timeout(disks: dict[str, Path]) -> None:
    started = time.monotonic()
    result = boot_disk(disks["good"], BootSettings(timeout_s=2))
    assert result.result == "timeout" and "no verdict within 2 s" in result.evidence[0]
    assert time.monotonic() - started < 15


@pytest.mark.slow
def test_qemu_is_gone_after_ctrl_c(disks: dict[str, Path], tmp_path: Path) -> None:
    argv = qemu_argv(disks["good"], tmp_path, accel="tcg", firmware="bios")
    with pytest.raises(KeyboardInterrupt):
        with running_qemu(argv, tmp_path) as process:
            time.sleep(0.5)
            raise KeyboardInterrupt
    assert process.poll() is not None


class Site:
    def __init__(self, root: Path, sshd: ThrowawaySSHD, disks: dict[str, Path]) -> None:
        self.root = root
        self.policies = root / "policies"
        self.state = root / "state"
        self.policies.mkdir()
        (self.policies / "acme.toml").write_text(
            POLICY.format(
                root=root, ssh=sshd.policy_lines, good=disks["good"], broken=disks["no-kernel"]
            )
        )

    def recoverd(self, *argv: str) -> int:
        return main([*argv, "--policies", str(self.policies), "--state", str(self.state)])


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, sshd: ThrowawaySSHD, disks: dict[str, Path]
) -> Iterator[Site]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_BOOT_PASSWORD", PASSWORD)
        site = Site(tmp_path_factory.mktemp("boot"), sshd, disks)
        assert site.recoverd("backup", "ws-042") == 0
        yield site


@pytest.mark.slow
def test_boot_drill_of_an_imaged_system_disk_boots_it(
    site: Site, disks: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256(disks["good"])
    capsys.readouterr()
    started = time.monotonic()
    code = site.recoverd("verify", "ws-042", "--level", "boot-drill", "--json")
    (line,) = capsys.readouterr().out.splitlines()
    run = json.loads(line)
    assert code == 0, run
    stats = run["stats"]
    assert run["state"] == "succeeded" and stats["target"] == "boot-drill"
    assert stats["boot_result"] == "booted"
    assert "drilltest login:" in stats["boot_evidence"][0]
    assert 0 < stats["boot_s"] < 120 and time.monotonic() - started < 180
    assert stats["boot_probes"] == {"tcp:8080": "passed"}
    assert stats["boot_accel"] in ("kvm", "tcg") and stats["boot_accel_reason"]
    assert stats["boot_firmware"] == "bios" and stats["where"] == "controller"
    assert stats["stream_sha256"] == stats["image_sha256"]
    assert any("login:" in line for line in stats["boot_console_tail"])
    shot = Path(stats["boot_screenshot"])
    assert shot.is_relative_to(site.state) and shot.read_bytes()[:8] == PNG
    assert Path(stats["boot_console"]).read_text().endswith("drilltest login: ")
    assert sha256(disks["good"]) == before
    assert PASSWORD not in json.dumps(run)
    # The scratch folder with the restored disk is gone.
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("recoverd-drill.*/restored.img"))


@pytest.mark.slow
def test_daemon_runs_a_due_boot_drill_and_the_log_names_the_failure(site: Site) -> None:
    ctl = Controller(site.policies, site.state)
    daemon = Daemon(ctl, max_parallel=1)
    try:
        daemon.tick()  # due: boot-drill-old only (the only level with a schedule)
        assert daemon.wait_idle(180)
    finally:
        daemon.shutdown(5)
    (run,) = [r for r in ctl.log.runs() if r["trigger"] == "schedule"]
    assert (run["level"], run["state"]) == ("boot-drill-old", "failed")
    assert run["stats"]["boot_result"] == "kernel-missing"
    assert "boot: kernel-missing" in run["error"] and "Loading vmlinuz" in run["error"]
    assert Path(run["stats"]["boot_screenshot"]).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_monthly_report_shows_each_boot_drill_with_its_screenshot(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    month = utc_now().strftime("%Y-%m")
    capsys.readouterr()
    assert site.recoverd("report", "--client", "acme", "--month", month, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    (machine,) = report["machines"]
    boots = {d["level"]: d for d in machine["boot_drills"]}
    assert boots["boot-drill"]["boot_result"] == "booted" and boots["boot-drill"]["within_sla"]
    assert boots["boot-drill-old"]["boot_result"] == "kernel-missing"
    assert site.recoverd("report", "--client", "acme", "--month", month, "--format", "html") == 0
    html = capsys.readouterr().out
    assert "data:image/png;base64," in html and "kernel-missing" in html and "booted" in html


def test_kvm_is_used_only_when_a_probe_boot_shows_it_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if subprocess.run(["which", boot.QEMU], capture_output=True).returncode:
        pytest.skip("qemu is not installed")
    accel, why = boot.choose_accel(refresh=True)
    assert accel in ("kvm", "tcg") and why
    monkeypatch.setattr(boot.os, "access", lambda path, mode: False)
    assert boot.choose_accel(refresh=True) == ("tcg", "no usable /dev/kvm")
    monkeypatch.undo()
    boot.choose_accel(refresh=True)


def test_qemu_that_does_not_start_is_a_clear_error(
    disks: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boot, "MEMORY_MIB", "lots")
    started = time.monotonic()
    with pytest.raises(boot.EngineError, match=r"qemu did not start: .*-m lots"):
        boot_disk(disks["good"], BootSettings(timeout_s=30))
    assert time.monotonic() - started < 20


def test_a_gpt_disk_with_an_efi_system_partition_boots_with_uefi(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    with disk.open("wb") as f:
        f.truncate(8 << 20)
        f.seek(446)  # protective MBR
        f.write(bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + struct.pack("<II", 1, 16383))
        f.seek(510)
        f.write(b"\x55\xaa")
        header = b"EFI PART" + struct.pack("<IIIIQQQQ", 0x10000, 92, 0, 0, 1, 16383, 34, 16350)
        header += uuid.uuid4().bytes_le + struct.pack("<QII", 2, 128, 128)
        f.seek(512)
        f.write(header)
        esp = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").bytes_le
        f.seek(1024)
        f.write(esp + uuid.uuid4().bytes_le + struct.pack("<QQQ", 2048, 4095, 0))
    facts = inspect_disk(disk)
    assert (facts.table, facts.firmware) == ("gpt", "uefi")
    assert facts.partitions[0]["start"] == 2048 * 512 and facts.partitions[0]["size"] == 1 << 20
    argv = qemu_argv(disk, tmp_path, accel="tcg", firmware=facts.firmware, ovmf="/x/OVMF.fd")
    assert argv[argv.index("-bios") + 1] == "/x/OVMF.fd"
