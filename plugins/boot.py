"""Boot drills: restore a system disk's image to a scratch file and boot it in qemu, offline.

A verify level with ``boot = true`` uses the restore target :class:`BootDrill` (destination
``boot``). It restores the image like an image drill (the stream's sha256 against the recorded
one), then:

1. **inspects** the restored disk without mounting it: the partition table (MBR or GPT, read
   here), the boot code, each partition's file system; on ext2/3/4 partitions ``debugfs`` reads
   ``/sbin/init`` and the kernels at the partition's offset, on FAT partitions ``mtools`` reads
   SYSLINUX's configuration and checks that the kernel it names is there;
2. **boots** it with qemu: ``-snapshot`` (the restored file is never written), ``-nic none``
   unless a probe needs user networking (then ``restrict=on``: the guest reaches nothing, and
   one ``hostfwd`` per probe on 127.0.0.1), KVM when a probe boot shows it really works, else
   TCG; BIOS for an MBR disk, UEFI (OVMF) for a GPT disk with an EFI system partition. The
   serial console, the firmware's debug port (0x402) and the VGA text screen are watched;
3. names the **verdict** from that evidence, in layers: ``not-bootable``, ``kernel-missing``,
   ``root-missing``, ``init-failed``, ``timeout`` or ``booted`` (the ``expect`` text on the
   console or the screen); then runs the **probes** (``ssh``: an SSH banner; ``tcp:PORT``: a
   connection the guest keeps open);
4. takes a QMP ``screendump`` (PNG, kept in the state directory) and ends qemu with QMP
   ``quit``; SIGKILL if it does not go, also on errors and Ctrl-C.

The boot runs where qemu runs: on the controller (``where = "controller"``, the default for
boot levels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import recoverd
from recoverd.engine import ProgressCallback
from recoverd.errors import EngineError, ToolMissing, UsageError
from recoverd.plugins import Kind
from recoverd.policy.model import Level
from recoverd.restore import RestorePlan, RestoreRequest, Verification
from recoverd_plugins.drills import ImageDrill
from recoverd_plugins.image import image_facts
from recoverd_plugins.local import LocalTransport

QEMU = "qemu-system-x86_64"
NO_QEMU = f"{QEMU} is not installed (Debian: apt install qemu-system-x86)"
OVMF = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")
MEMORY_MIB = 1024
LOGIN_PROMPT = r"\blogin: "
"""The default ``expect``: kernel messages share lines with it, so no ``$``."""
CONSOLE_TAIL_LINES = 30
CONSOLE_LINE_CHARS = 240
CONSOLE_LIMIT = 16 << 20
"""A guest that writes more than this to its serial console is stopped (a flood fills disks)."""
CONSOLE_KEPT = 256 << 10
WATCHED = 1 << 20
"""How much of the console's end is searched for messages while the guest boots."""
"""How much of the console's end is kept next to the screenshot."""
SETTLE_S = 1.0
"""After a failure's message, how long more console text is collected for the evidence."""
PROBE_WAIT_S = 60.0
"""How long probes may wait for a service after the login prompt, at least."""
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"

VERDICTS = ("booted", "not-bootable", "kernel-missing", "root-missing", "init-failed", "timeout")

# Messages that end a boot, by verdict, in the order they are judged: a root that cannot be
# mounted also panics the kernel, so root-missing is judged before init-failed.
SIGNATURES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (verdict, re.compile(pattern))
    for verdict, pattern in (
        ("not-bootable", r"No bootable device"),
        ("not-bootable", r"Boot failed: not a bootable disk"),
        ("not-bootable", r"No bootable option or device was found"),
        ("not-bootable", r"Missing operating system|Operating System not found"),
        ("not-bootable", r"BOOTMGR is missing|An operating system wasn't found"),
        ("kernel-missing", r"Loading \S+\.\.\. ?failed: No such file"),
        ("kernel-missing", r"Could not find kernel image"),
        ("kernel-missing", r"error: file `[^']*(?:vmlinuz|linux|bzImage)[^']*' not found"),
        ("kernel-missing", r"you need to load the kernel first"),
        ("kernel-missing", r"winload\.(?:exe|efi)"),
        ("root-missing", r"ALERT!\s+\S+ does not exist"),
        ("root-missing", r"Gave up waiting for root"),
        ("root-missing", r"VFS: Unable to mount root fs"),
        ("root-missing", r"Cannot open root device"),
        ("root-missing", r"Failed to mount /sysroot"),
        ("root-missing", r"INACCESSIBLE_BOOT_DEVICE"),
        ("init-failed", r"Target filesystem doesn't have requested \S+"),
        ("init-failed", r"Attempted to kill init!"),
        ("init-failed", r"No working init found"),
        ("init-failed", r"Requested init \S+ failed"),
        ("init-failed", r"You are in emergency mode"),
        ("init-failed", r"Freezing execution"),
        ("init-failed", r"Kernel panic - not syncing"),
        ("init-failed", r"Your PC ran into a problem|STOP: 0x[0-9A-Fa-f]+"),
    )
)
KERNEL_STARTED = re.compile(r"Linux version \d|\[\s*\d+\.\d{6}\]")

# A 512-byte boot sector that goes from real mode to 64-bit long mode and says "RL" on the
# debug port (0x402), then ends qemu through isa-debug-exit (0xf4). Assembled from:
#   cli; zero ds/es; out 'R'; build identity page tables at 0x1000-0x3fff (one 2 MiB page);
#   lgdt; cr4.PAE; cr3; EFER.LME (wrmsr 0xc0000080); cr0.PG|PE; ljmp to a 64-bit segment;
#   out 'L'; out 0 to 0xf4; hlt.
KVM_PROBE_CODE = bytes.fromhex(
    "fa31c08ed88ec0ba0204b052eebf0010b9001831c0f3ab66c70600100320000066c70600200330000066"
    "c7060030830000000f0116907c0f20e06683c8200f22e066b8001000000f22d866b9800000c00f326"
    "60d000100000f300f20c0660d010000800f22c066ea6e7c0000080066ba0204b04cee66baf40031c0"
    "eef4ebfd900000000000000000ffff0000009aaf000f00807c"
)
KVM_PROBE_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class BootSettings:
    """A boot level's keys: how long a boot may take, what means booted, what to probe."""

    timeout_s: float = 180.0
    expect: str | None = None
    """Literal console text that means booted; None: a login prompt."""
    probes: tuple[str, ...] = ()

    @classmethod
    def of(cls, level: Level | None) -> BootSettings:
        if level is None:
            return cls()
        return cls(duration_s(level.boot_timeout), level.expect, tuple(level.probe))

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.expect) if self.expect else LOGIN_PROMPT)

    def forwards(self) -> dict[str, int]:
        """Probe -> the guest's TCP port it needs."""
        return {p: 22 if p == "ssh" else int(p.partition(":")[2]) for p in self.probes}


def duration_s(text: str) -> float:
    """Seconds in ``"3m"``, ``"90s"``, ``"1h"``, ``"1m30s"``. Raise ValueError otherwise."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration like '3m', '90s' or '1m30s'")
    hours, minutes, seconds = (int(n or 0) for n in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


# -- looking at the disk without mounting it ----------------------------------------------------


@dataclasses.dataclass
class DiskFacts:
    """What the restored disk holds, read without mounting it or booting it."""

    table: str | None = None
    """``mbr``, ``gpt`` or None (no partition table)."""
    boot_code: bool = False
    """Whether the first sector holds boot code (not all zeros)."""
    firmware: str = "bios"
    partitions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kernel: bool | None = None
    """A kernel where the boot loader or the root file system says: True, False, or None
    (nothing here could tell: a file system this check does not read)."""
    init: bool | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "boot_code": self.boot_code,
            "firmware": self.firmware,
            "partitions": [
                f"{p['index']}: {p['fs'] or p['type']} at {p['start']} ({p['size'] >> 20} MiB)"
                for p in self.partitions
            ],
            "kernel": self.kernel,
            "init": self.init,
            "notes": self.notes,
        }


def inspect_disk(path: Path) -> DiskFacts:
    """Return what the disk image at ``path`` holds: partition table, file systems, kernel,
    init. Reads only; tools that are not installed leave their facts unknown."""
    facts = DiskFacts()
    size = path.stat().st_size
    with path.open("rb") as disk:
        mbr = disk.read(512)
        gpt_header = disk.read(512)
        if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
            facts.notes.append("no boot signature (0x55AA) in the first sector")
            facts.boot_code = any(mbr[:440])
            return facts
        facts.boot_code = any(mbr[:440])
        entries = [mbr[446 + 16 * i : 462 + 16 * i] for i in range(4)]
        if any(e[4] == 0xEE for e in entries) and gpt_header[:8] == b"EFI PART":
            facts.table = "gpt"
            facts.partitions = _gpt_partitions(disk, gpt_header, size)
        else:
            facts.table = "mbr"
            for index, entry in enumerate(entries, start=1):
                kind = entry[4]
                start, sectors = struct.unpack("<II", entry[8:16])
                if kind and sectors:
                    facts.partitions.append(
                        {
                            "index": index,
                            "type": f"0x{kind:02x}",
                            "start": start * 512,
                            "size": sectors * 512,
                            "active": entry[0] == 0x80,
                        }
                    )
        for part in facts.partitions:
            part["fs"] = _fs_type(disk, part["start"])
    if facts.table == "gpt" and any(p["type"] == ESP_GUID for p in facts.partitions):
        facts.firmware = "uefi"
    _look_inside(path, facts)
    return facts


def _gpt_partitions(disk: Any, header: bytes, size: int) -> list[dict[str, Any]]:
    entries_lba, count, entry_size = struct.unpack("<QII", header[72:88])
    if not (0 < count <= 1024 and 128 <= entry_size <= 4096 and entries_lba * 512 < size):
        return []
    disk.seek(entries_lba * 512)
    table = disk.read(count * entry_size)
    found = []
    for index in range(count):
        entry = table[index * entry_size : (index + 1) * entry_size]
        if len(entry) < 56 or not any(entry[:16]):
            continue
        first, last = struct.unpack("<QQ", entry[32:48])
        found.append(
            {
                "index": index + 1,
                "type": _guid(entry[:16]),
                "start": first * 512,
                "size": (last - first + 1) * 512,
            }
        )
    return found


def _guid(raw: bytes) -> str:
    a, b, c = struct.unpack("<IHH", raw[:8])
    return f"{a:08x}-{b:04x}-{c:04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"


def _fs_type(disk: Any, offset: int) -> str | None:
    disk.seek(offset)
    head = disk.read(2048)
    if len(head) < 2048:
        return None
    if head[1080:1082] == b"\x53\xef":
        return "ext"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[54:59] in (b"FAT12", b"FAT16") or head[82:87] == b"FAT32":
        return "vfat"
    if head[0:4] == b"XFSB":
        return "xfs"
    return None


def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _look_inside(path: Path, facts: DiskFacts) -> None:
    """Look for a kernel and an init in the partitions this check can read."""
    kernels: list[bool] = []
    inits: list[bool] = []
    for part in facts.partitions:
        if part["fs"] == "ext" and _tool("debugfs"):
            found = _ext_files(path, part["start"])
            if found is None:
                facts.notes.append(f"partition {part['index']}: debugfs cannot read the ext fs")
                continue
            if found["init"] is not None:
                inits.append(found["init"])
            if found["kernels"]:
                kernels.append(True)
        elif part["fs"] is None and part["type"] in ("0x83", LINUX_GUID):
            facts.notes.append(
                f"partition {part['index']} (Linux) holds no file system this check recognises"
            )
        elif part["fs"] == "vfat" and _tool("mtype"):
            named = _syslinux_kernels(path, part["start"])
            for kernel, present in named.items():
                kernels.append(present)
                if not present:
                    facts.notes.append(
                        f"partition {part['index']}: the boot loader's kernel {kernel} is missing"
                    )
    facts.kernel = None if not kernels else any(kernels)
    facts.init = None if not inits else any(inits)


def _ext_files(path: Path, offset: int) -> dict[str, Any] | None:
    """``/sbin/init`` and the kernels (``/boot/vmlinuz*``, ``/vmlinuz``) of an ext file system at
    ``offset``; init is None where the file system is not a root file system (no ``/etc``)."""
    script = "ls -l /\nls -l /boot\nstat /sbin/init\nstat /usr/sbin/init\n"
    outcome = subprocess.run(
        [_tool("debugfs") or "debugfs", "-f", "-", f"{path}?offset={offset}"],
        input=script.encode(),
        capture_output=True,
        timeout=60,
    )
    text = outcome.stdout.decode("utf-8", "replace")
    if "Bad magic number" in outcome.stderr.decode("utf-8", "replace") or not text:
        return None
    sections = re.split(r"^debugfs: ", text, flags=re.M)
    listing = "\n".join(sections[1:3]) if len(sections) >= 3 else text
    names = set(re.findall(r"\s(\S+)\s*$", listing, flags=re.M))
    kernels = [n for n in names if n.startswith(("vmlinuz", "bzImage"))]
    root_like = "etc" in names or "sbin" in names or "usr" in names
    init_present = any(
        "Inode:" in s and "Type:" in s for s in sections[3:] if s.startswith("stat ")
    )
    return {"kernels": kernels, "init": init_present if root_like else None}


def _syslinux_kernels(path: Path, offset: int) -> dict[str, bool]:
    """The kernels SYSLINUX's configuration on a FAT file system names: kernel -> present."""
    image = f"{path}@@{offset}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for config in ("::/syslinux.cfg", "::/syslinux/syslinux.cfg", "::/boot/syslinux/syslinux.cfg"):
        read = subprocess.run(
            ["mtype", "-i", image, config], capture_output=True, timeout=30, env=env
        )
        if read.returncode != 0:
            continue
        text = read.stdout.decode("utf-8", "replace")
        base = config.rpartition("/")[0] or "::"
        kernels = {}
        for name in re.findall(r"^\s*(?:KERNEL|LINUX)\s+(\S+)", text, flags=re.M | re.I):
            if name.endswith(".c32"):
                continue
            target = "::" + name if name.startswith("/") else f"{base}/{name}"
            seen = subprocess.run(
                ["mdir", "-b", "-i", image, target], capture_output=True, timeout=30, env=env
            )
            kernels[name] = seen.returncode == 0
        return kernels
    return {}


# -- qemu --------------------------------------------------------------------------------------


def _qemu_path(path: Path | str) -> str:
    """A path inside a qemu option value: commas are doubled."""
    return str(path).replace(",", ",,")


def qemu_argv(
    disk: Path,
    work: Path,
    *,
    accel: str,
    firmware: str,
    forwards: dict[int, int] | None = None,
    ovmf: str | None = None,
) -> list[str]:
    """Return the qemu command line that boots ``disk`` with its evidence files in ``work``.

    ``forwards`` maps host ports (on 127.0.0.1) to guest TCP ports for probes; without them
    the guest has no network device at all. With them it has user networking with
    ``restrict=on``: the guest reaches neither the host nor any other network.
    """
    argv = [
        QEMU,
        "-name", "recoverd-boot-drill",
        "-nodefaults",
        "-machine", f"pc,accel={accel}",
        "-m", str(MEMORY_MIB),
        "-smp", "1",
        "-display", "none",
        "-vga", "std",
        "-no-reboot",
        "-snapshot",
        "-drive", f"file={_qemu_path(disk)},format=raw,if=virtio",
        "-serial", f"file:{_qemu_path(work / 'console.log')}",
        "-chardev", f"file,id=firmware,path={_qemu_path(work / 'firmware.log')}",
        "-device", "isa-debugcon,iobase=0x402,chardev=firmware",
        "-qmp", f"unix:{_qemu_path(work / 'qmp.sock')},server=on,wait=off",
        "-monitor", "none",
    ]  # fmt: skip
    if accel == "tcg":
        argv[argv.index("-m") : argv.index("-m")] = ["-cpu", "max"]
    if firmware == "uefi":
        argv += ["-bios", ovmf or next((p for p in OVMF if Path(p).exists()), OVMF[0])]
    if forwards:
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in forwards.items())
        argv += ["-nic", f"user,model=virtio-net-pci,restrict=on,{fwd}"]
    else:
        argv += ["-nic", "none"]
    return argv


def network_is_isolated(argv: list[str]) -> bool:
    """Whether a qemu command line keeps the guest off every network: no network device, or
    only user networking with ``restrict=on`` whose forwards all listen on 127.0.0.1."""
    for option, value in itertools.pairwise(argv):
        if option in ("-netdev", "-net"):
            return False
        if option == "-device" and re.search(r"net|nic|tap|e1000|rtl8139|vmxnet", value):
            return False
        if option == "-nic" and value != "none":
            parts = value.split(",")
            if parts[0] != "user" or "restrict=on" not in parts:
                return False
            for part in parts:
                if part.startswith("hostfwd=") and not re.fullmatch(
                    r"hostfwd=tcp:127\.0\.0\.1:\d+-:\d+", part
                ):
                    return False
                if part.startswith(("guestfwd=", "smb=", "tftp=", "bootfile=")):
                    return False
    return True


class QMP:
    """A QMP client on qemu's unix socket: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self, deadline: float, process: subprocess.Popen[bytes] | None = None) -> None:
        """Connect, retrying until ``deadline`` (or until ``process`` has ended)."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                if time.monotonic() > deadline or (process and process.poll() is not None):
                    raise
                time.sleep(0.05)
                continue
            self._sock = sock
            self._reply()  # the greeting
            self.execute("qmp_capabilities")
            return

    def _reply(self) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            while b"\n" not in self._buffer:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise EngineError("qemu closed its QMP socket")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "event" not in message:
                return message  # type: ignore[no-any-return]

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command; return its result. Raise EngineError on a QMP error."""
        if self._sock is None:
            raise EngineError("not connected to qemu's QMP socket")
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise EngineError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.contextmanager
def running_qemu(argv: list[str], work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start qemu; whatever happens inside (errors, Ctrl-C), it is gone afterwards: QMP
    ``quit`` first, SIGKILL if it is still there a few seconds later."""
    if not network_is_isolated(argv):
        raise EngineError(f"refusing to boot a guest that could reach a network: {argv}")
    # qemu's -snapshot overlay goes to TMPDIR: keep it in the drill's own folder.
    env = {**os.environ, "TMPDIR": str(work)}
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(work / "qemu.stderr").open("wb"),
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches recoverd, which ends it
        )
    except FileNotFoundError:
        raise ToolMissing(NO_QEMU) from None
    try:
        yield process
    finally:
        stop_qemu(process, work / "qmp.sock")


def stop_qemu(process: subprocess.Popen[bytes], qmp_socket: Path) -> None:
    """End qemu: QMP ``quit``, then SIGKILL (of its pid) if it has not gone within 5 s."""
    if process.poll() is None:
        qmp = QMP(qmp_socket, timeout=2.0)
        with contextlib.suppress(Exception):
            qmp.connect(time.monotonic() + 1.0)
            qmp.execute("quit")
        qmp.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


_ACCEL: tuple[str, str] | None = None


def choose_accel(refresh: bool = False) -> tuple[str, str]:
    """Return (``kvm`` or ``tcg``, why). KVM is taken only when a probe boot (real mode to
    long mode, a 512-byte boot sector) works under it and is not slower than under TCG:
    a nested or emulated ``/dev/kvm`` passes the device check and then hangs or crawls."""
    global _ACCEL
    if _ACCEL is not None and not refresh:
        return _ACCEL
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        _ACCEL = ("tcg", "no usable /dev/kvm")
        return _ACCEL
    with tempfile.TemporaryDirectory(prefix="recoverd-kvm-probe.") as tmp:
        tcg = _probe_boot(Path(tmp), "tcg", KVM_PROBE_TIMEOUT_S)
        # KVM slower than this is not worth it: no need to wait for it any longer.
        limit = KVM_PROBE_TIMEOUT_S if tcg is None else max(2 * tcg, tcg + 0.5)
        kvm = _probe_boot(Path(tmp), "kvm", limit + 0.5)
    if kvm is None or (tcg is not None and kvm > limit):
        _ACCEL = (
            "tcg",
            f"a probe boot under KVM took over {limit:.2f} s (under TCG: "
            f"{'failed' if tcg is None else f'{tcg:.2f} s'}): a nested or emulated KVM; TCG",
        )
    else:
        _ACCEL = ("kvm", f"a probe boot took {kvm:.2f} s under KVM")
    return _ACCEL


def _probe_boot(work: Path, accel: str, timeout: float) -> float | None:
    """Seconds a probe boot took under ``accel``, None if it failed or hung."""
    disk = work / "probe.img"
    disk.write_bytes(KVM_PROBE_CODE.ljust(510, b"\0") + b"\x55\xaa")
    log = work / f"probe-{accel}.log"
    argv = [
        QEMU, "-nodefaults", "-machine", f"pc,accel={accel}", "-m", "16", "-display", "none",
        "-no-reboot", "-nic", "none", "-drive", f"file={_qemu_path(disk)},format=raw,if=ide",
        "-chardev", f"file,id=d,path={_qemu_path(log)}",
        "-device", "isa-debugcon,iobase=0x402,chardev=d",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None  # subprocess.run killed it
    except FileNotFoundError:
        raise ToolMissing(NO_QEMU) from None
    seconds = time.monotonic() - started
    text = log.read_bytes() if log.exists() else b""
    return seconds if text.rstrip(b"\0").endswith(b"RL") else None


# -- one boot ----------------------------------------------------------------------------------


@dataclasses.dataclass
class BootResult:
    """What one boot showed: the verdict, the evidence that decided it, the probes."""

    result: str
    seconds: float
    evidence: list[str]
    console_tail: list[str]
    accel: str
    accel_reason: str
    firmware: str
    probes: dict[str, str] = dataclasses.field(default_factory=dict)
    screenshot: str | None = None
    console_file: str | None = None
    inspection: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def probes_ok(self) -> bool:
        return all(v == "passed" for v in self.probes.values())

    def stats(self) -> dict[str, Any]:
        return {
            "boot_result": self.result,
            "boot_s": round(self.seconds, 3),
            "boot_evidence": self.evidence,
            "boot_console_tail": self.console_tail,
            "boot_accel": self.accel,
            "boot_accel_reason": self.accel_reason,
            "boot_firmware": self.firmware,
            "boot_probes": self.probes,
            "boot_screenshot": self.screenshot,
            "boot_console": self.console_file,
            "boot_inspection": self.inspection,
        }


def escape_line(line: str) -> str:
    """A console line safe to show and store: control characters as ``\\xNN``, bounded."""
    text = "".join(
        c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in line.rstrip("\r")
    )
    return text if len(text) <= CONSOLE_LINE_CHARS else text[: CONSOLE_LINE_CHARS - 3] + "..."


def console_tail(text: str, lines: int = CONSOLE_TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of ``text``, escaped."""
    cleaned = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # terminal escapes: noise
    kept = [escape_line(line) for line in cleaned.split("\n") if line.strip("\r\x00 ")]
    return kept[-lines:]


def _read_tail(path: Path, limit: int = 4 << 20) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def screen_text(qmp: QMP, work: Path) -> str:
    """The VGA text screen (80x25 at 0xb8000) as text: what a firmware, a boot loader or an
    early kernel shows when it writes nothing to the serial console. Empty when the guest is in
    a graphics mode or the memory cannot be read."""
    dump = work / "screen.bin"
    try:
        qmp.execute("pmemsave", val=0xB8000, size=4000, filename=str(dump))
        raw = dump.read_bytes()
    except (EngineError, OSError):
        return ""
    chars = bytes(raw[0::2]).decode("cp437", "replace")
    rows = [chars[i : i + 80].rstrip() for i in range(0, len(chars), 80)]
    return "\n".join(r for r in rows if r.strip())


def judge(
    console: str, firmware_log: str, screen: str, expect: re.Pattern[str]
) -> tuple[str, str] | None:
    """Return (verdict, evidence) if the text so far decides the boot, else None."""
    for source, text in (("console", console), ("screen", screen)):
        found = expect.search(text)
        if found:
            return "booted", f"{source}: {_line_at(text, found.start())!r}"
    for verdict, pattern in SIGNATURES:
        for source, text in (("console", console), ("screen", screen), ("firmware", firmware_log)):
            found = pattern.search(text)
            if found:
                return verdict, f"{source}: {_line_at(text, found.start())!r}"
    return None


def _line_at(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return escape_line(text[start : end if end >= 0 else len(text)].strip())


def boot_disk(
    disk: Path,
    settings: BootSettings,
    *,
    evidence_dir: Path | None = None,
    evidence_name: str = "boot",
    facts: DiskFacts | None = None,
) -> BootResult:
    """Boot ``disk`` in qemu (never writing it) and return the verdict with its evidence.

    The screenshot and the end of the console are copied to ``evidence_dir`` as
    ``<evidence_name>.png`` and ``<evidence_name>.console.txt``.
    """
    if shutil.which(QEMU) is None:
        raise ToolMissing(NO_QEMU)
    facts = facts or inspect_disk(disk)
    accel, why = choose_accel()
    ovmf = next((p for p in OVMF if Path(p).exists()), None)
    if facts.firmware == "uefi" and ovmf is None:
        raise ToolMissing("the disk boots with UEFI and OVMF is not installed (apt install ovmf)")
    forwards = {_free_port(): guest for guest in settings.forwards().values()}
    by_probe = dict(zip(settings.forwards(), forwards, strict=True))
    with tempfile.TemporaryDirectory(prefix="recoverd-boot.") as tmp:
        work = Path(tmp)
        argv = qemu_argv(
            disk, work, accel=accel, firmware=facts.firmware, forwards=forwards, ovmf=ovmf
        )
        started = time.monotonic()
        deadline = started + settings.timeout_s
        with running_qemu(argv, work) as process:
            qmp = QMP(work / "qmp.sock")
            try:
                try:
                    qmp.connect(time.monotonic() + 10, process)
                except OSError as exc:
                    raise EngineError(f"qemu did not start: {_qemu_error(work, exc)}") from None
                verdict, evidence, seconds, console = _watch(
                    process, qmp, work, settings, started, deadline
                )
                probes: dict[str, str] = {}
                if verdict == "booted" and settings.probes:
                    wait_until = max(deadline, time.monotonic() + PROBE_WAIT_S)
                    probes = {
                        p: run_probe(p, by_probe[p], wait_until, process) for p in settings.probes
                    }
                screenshot = _screendump(qmp, work, process)
            finally:
                qmp.close()
        text = _read_tail(work / "console.log")
        firmware_text = _read_tail(work / "firmware.log", 64 << 10)
        verdict, evidence = _decide_late(verdict, evidence, facts, text, firmware_text, process)
        kept_png = kept_console = None
        if evidence_dir is not None:
            # A screenshot shows whatever the guest's screen showed: keep it private.
            evidence_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if screenshot is not None:
                kept_png = evidence_dir / f"{evidence_name}.png"
                shutil.copyfile(screenshot, kept_png)
            kept_console = evidence_dir / f"{evidence_name}.console.txt"
            kept_console.write_text(text[-CONSOLE_KEPT:], encoding="utf-8")
    return BootResult(
        result=verdict,
        seconds=seconds,
        evidence=evidence,
        console_tail=console_tail(console or text),
        accel=accel,
        accel_reason=why,
        firmware=facts.firmware,
        probes=probes,
        screenshot=str(kept_png) if kept_png else None,
        console_file=str(kept_console) if kept_console else None,
        inspection=facts.summary(),
    )


def _qemu_error(work: Path, exc: OSError) -> str:
    text = _read_tail(work / "qemu.stderr", 4096).strip()
    return " / ".join(text.splitlines()[-3:]) or f"no QMP socket ({exc})"


def _watch(
    process: subprocess.Popen[bytes],
    qmp: QMP,
    work: Path,
    settings: BootSettings,
    started: float,
    deadline: float,
) -> tuple[str | None, list[str], float, str]:
    """Watch the console, the firmware's port and the screen until the boot is decided, qemu
    ends or the time is up. Return (verdict or None, evidence, seconds, console text)."""
    pattern = settings.pattern
    console_path, firmware_path = work / "console.log", work / "firmware.log"
    decided: tuple[str, str] | None = None
    decided_at = 0.0
    screen = ""
    next_screen = 0.0
    while True:
        now = time.monotonic()
        console = _read_tail(console_path, WATCHED)
        if now >= next_screen:
            screen = screen_text(qmp, work) if process.poll() is None else screen
            next_screen = now + 1.0
        found = judge(console, _read_tail(firmware_path, 64 << 10), screen, pattern)
        if found and found[0] == "booted":
            return "booted", [found[1]], now - started, console
        if found and decided is None:
            decided, decided_at = found, now
        if decided is not None and (now - decided_at >= SETTLE_S or process.poll() is not None):
            return decided[0], [decided[1]], decided_at - started, console
        if process.poll() is not None:
            return None, [f"qemu ended (exit {process.returncode})"], now - started, console
        if console_path.exists() and console_path.stat().st_size > CONSOLE_LIMIT:
            return "timeout", ["console: more than 16 MiB written; stopped"], now - started, console
        if now >= deadline:
            return None, [f"no verdict within {settings.timeout_s:.0f} s"], now - started, console
        time.sleep(0.2)


def _decide_late(
    verdict: str | None,
    evidence: list[str],
    facts: DiskFacts,
    console: str,
    firmware_log: str,
    process: subprocess.Popen[bytes],
) -> tuple[str, list[str]]:
    """A boot the messages did not decide: the inspection says why, else ``timeout`` (or for a
    guest that reset itself, how far it got)."""
    evidence = list(evidence)
    if verdict is not None:
        return verdict, evidence
    if facts.table is None and not facts.boot_code:
        return "not-bootable", [*evidence, "inspection: no partition table and no boot code"]
    if facts.kernel is False:
        return "kernel-missing", [*evidence, *[f"inspection: {n}" for n in facts.notes]]
    if facts.init is False:
        return "init-failed", [*evidence, "inspection: the root file system has no /sbin/init"]
    ended = evidence and evidence[0].startswith("qemu ended")
    if ended and KERNEL_STARTED.search(console):
        return "init-failed", [*evidence, "console: the kernel started, then the guest reset"]
    if ended:
        return "not-bootable", [*evidence, "the guest reset before a kernel started"]
    return "timeout", evidence


def _screendump(qmp: QMP, work: Path, process: subprocess.Popen[bytes]) -> Path | None:
    if process.poll() is not None:
        return None
    target = work / "screen.png"
    try:
        qmp.execute("screendump", filename=str(target), format="png")
    except EngineError:
        # qemu before 7.1 writes PPM only; a screenshot in another format is still evidence.
        try:
            qmp.execute("screendump", filename=str(work / "screen.ppm"))
        except EngineError:
            return None
        return work / "screen.ppm"
    return target if target.exists() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_probe(
    probe: str, port: int, until: float, process: subprocess.Popen[bytes] | None = None
) -> str:
    """Run one probe against 127.0.0.1:``port`` (forwarded into the guest) until it passes or
    ``until``; return ``passed`` or ``failed: why``.

    ``ssh`` wants a banner starting ``SSH-``; ``tcp:PORT`` a connection the guest keeps open
    (user networking accepts on the host side at once and closes when the guest refuses)."""
    last = "no answer"
    while time.monotonic() < until and (process is None or process.poll() is None):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.settimeout(3 if probe == "ssh" else 1.5)
                try:
                    data = sock.recv(256)
                except TimeoutError:
                    if probe != "ssh":
                        return "passed"
                    last = "connected, but no SSH banner within 3 s"
                else:
                    if probe == "ssh" and data.startswith(b"SSH-"):
                        return "passed"
                    if probe != "ssh" and data:
                        return "passed"
                    last = (
                        f"answered {escape_line(data[:40].decode('latin-1'))!r}, not an SSH banner"
                        if data
                        else "the guest closed the connection (nothing listens there)"
                    )
        except OSError as exc:
            last = str(exc)
        time.sleep(1.0)
    return f"failed: {last}"


# -- the restore target ------------------------------------------------------------------------


class BootDrill(ImageDrill):
    """Restore an image of a system disk into a scratch file, inspect it, boot it offline."""

    name = "boot-drill"
    destinations = ("boot",)

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """The image drill's plan; refuse an image of one file system (nothing to boot)."""
        facts = image_facts(request.snapshot)
        if facts["format"] == "pcl":
            raise UsageError(
                f"level {request.level.name!r} images one {facts['fstype']} file system "
                f"({request.level.device}); a boot drill needs an image of a whole disk "
                "(a device like /dev/sda, not a partition)"
            )
        plan = super().plan(request)
        plan.destination = "a scratch file, booted in qemu"
        return plan

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """The image drill's checks, then the inspection and the boot; every layer that fails
        is a mismatch with its evidence."""
        checked = super().verify(request, plan, progress)
        if not isinstance(self.engine.transport, LocalTransport):
            raise UsageError(
                'boot drills run where qemu runs, on the controller: set where = "controller"'
            )
        settings = BootSettings.of(request.drill)
        disk = Path(plan.details["image_file"])
        facts = inspect_disk(disk)
        evidence_dir = Path(request.evidence_dir) if request.evidence_dir else None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        level = request.drill.name if request.drill else request.level.name
        result = boot_disk(
            disk,
            settings,
            evidence_dir=evidence_dir,
            evidence_name=f"{stamp}-{level}",
            facts=facts,
        )
        plan.details.update(result.stats())
        mismatches = list(checked.mismatches)
        if result.result != "booted":
            mismatches.append(f"boot: {result.result} ({'; '.join(result.evidence)})")
        for probe, outcome in result.probes.items():
            if outcome != "passed":
                mismatches.append(f"probe {probe}: {outcome}")
        method = f"{checked.method}; booted in qemu ({result.accel}, {result.firmware})"
        return Verification(method, 1, mismatches)


@recoverd.hookimpl
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register the boot drill."""
    register.add(BootDrill.name, BootDrill)
