"""Small bootable disks for tests and benchmarks, built without mounting anything.

:func:`build_disk` writes a raw disk image: an MBR (written here) with SYSLINUX's boot code, a
FAT16 partition with SYSLINUX, a Debian kernel and an initramfs, and an ext4 root file system (label
``rootfs``) with a busybox userland whose ``/sbin/init`` prints a login prompt on the serial
console. Under TCG it reaches ``login:`` in a few seconds.

The initramfs does what Debian's initramfs-tools does, with the same messages: it loads the
block and file-system modules, waits for ``LABEL=rootfs`` (``ALERT! ... does not exist`` when it
never comes), checks for ``/sbin/init`` (``Target filesystem doesn't have requested /sbin/init``)
and switches to the root file system.

:func:`break_disk` makes the broken variants a drill must name: ``zeroed``, ``no-kernel``,
``init-fails`` (``/sbin/init`` exits: the kernel panics), ``no-init`` and ``no-root`` (the root
file system's superblocks are gone).

The kernel comes from Debian's ``linux-image-*-amd64`` package, downloaded (not installed) by
``setup.sh`` into :data:`KERNEL_CACHE`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

KERNEL_CACHE = Path("/var/cache/recoverd/kernel")
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
"""What the initramfs loads (with what they depend on), in this order."""
SECTOR = 512
BOOT_START, BOOT_SECTORS = 2048, 40960  # FAT16, 20 MiB: kernel and initramfs
ROOT_START, ROOT_SECTORS = BOOT_START + BOOT_SECTORS, 16384  # ext4, 8 MiB: busybox
DISK_BYTES = (ROOT_START + ROOT_SECTORS) * SECTOR
BOOT_OFFSET, ROOT_OFFSET = BOOT_START * SECTOR, ROOT_START * SECTOR
LOGIN = "drilltest login: "
VARIANTS = ("zeroed", "no-kernel", "init-fails", "no-init", "no-root")

SYSLINUX_CFG = """\
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND console=tty0 console=ttyS0,115200 loglevel=4
"""

INITRAMFS_INIT = """\
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod "/lib/modules/$m" 2>/dev/null; done
root=
for i in $(seq 1 20); do
  root=$(findfs LABEL=rootfs 2>/dev/null) && break
  sleep 0.25
done
if [ -z "$root" ]; then
  echo "Gave up waiting for root file system device."
  echo "ALERT!  LABEL=rootfs does not exist.  Dropping to a shell!"
  exec sh
fi
mount -t ext4 -o ro "$root" /root
if [ ! -x /root/sbin/init ]; then
  echo "Target filesystem doesn't have requested /sbin/init."
  echo "No init found. Try passing init= bootarg."
  exec sh
fi
for d in dev proc sys; do mount -o move /$d /root/$d; done
exec switch_root /root /sbin/init
"""

ROOT_INIT = """\
#!/bin/busybox sh
if /bin/busybox ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up 2>/dev/null; then
  /bin/busybox httpd -p 8080 -h /www
fi
banner() {
  echo
  echo "Debian GNU/Linux (recoverd drill test disk) drilltest $1"
  echo
  printf '%s'
}
banner tty1 > /dev/tty1 2>/dev/null
banner ttyS0
exec /bin/busybox sleep 2147483647
"""


def kernel_package(cache: Path = KERNEL_CACHE) -> Path | None:
    """Return the newest downloaded ``linux-image-*-amd64`` package, or None."""
    found = sorted(cache.glob("linux-image-*-amd64_*.deb"))
    return found[-1] if found else None


def missing_tools() -> list[str]:
    """Return what building or booting a test disk needs and this machine lacks."""
    tools = ["qemu-system-x86_64", "syslinux", "mcopy", "mkfs.vfat", "mkfs.ext4", "debugfs"]
    path = os.environ["PATH"] + ":/usr/sbin:/sbin"
    missing = [t for t in tools if shutil.which(t, path=path) is None]
    if not _static(Path("/bin/busybox")):
        missing.append("busybox-static")
    if kernel_package() is None:
        missing.append(f"a linux-image package in {KERNEL_CACHE}")
    return missing


def _static(path: Path) -> bool:
    """Whether ``path`` is a static executable: the initramfs has no libraries. A dynamic ELF
    names its loader (PT_INTERP) in its first page."""
    try:
        return b"ld-linux" not in path.read_bytes()[:4096]
    except OSError:
        return False


def _run(*argv: str | Path, env: dict[str, str] | None = None, data: bytes | None = None) -> None:
    subprocess.run(
        [str(a) for a in argv],
        check=True,
        capture_output=True,
        input=data,
        env={**os.environ, "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin", **(env or {})},
    )


def _extract_kernel(package: Path, into: Path) -> tuple[Path, Path]:
    """Unpack the kernel and the modules the initramfs needs; return (vmlinuz, modules dir)."""
    if not (into / "done").exists():
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        wanted = [
            "./boot/vmlinuz-*",
            "./lib/modules/*/kernel/drivers/virtio/*",
            "./lib/modules/*/kernel/drivers/block/virtio_blk.ko",
            "./lib/modules/*/kernel/drivers/net/*",
            "./lib/modules/*/kernel/net/core/*",
            "./lib/modules/*/kernel/fs/*",
            "./lib/modules/*/kernel/lib/*",
            "./lib/modules/*/kernel/crypto/*",
        ]
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(package)], stdout=subprocess.PIPE)
        subprocess.run(
            ["tar", "-x", "-C", str(into), "--wildcards", *wanted],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
        )
        tar.wait()
        (into / "done").touch()
    vmlinuz = next((into / "boot").glob("vmlinuz-*"))
    return vmlinuz, next((into / "lib" / "modules").iterdir())


def _module_order(modules: Path, names: tuple[str, ...]) -> list[Path]:
    """Return the ``.ko`` files for ``names`` and their dependencies, dependencies first.

    The package carries no modules.dep (depmod writes it on install): each module's own
    ``.modinfo`` section names what it depends on.
    """
    files = {p.name.removesuffix(".ko"): p for p in modules.rglob("*.ko")}
    order: list[Path] = []

    def add(name: str) -> None:
        path = files.get(name) or files.get(name.replace("_", "-"))
        if path is None or path in order:
            return
        found = re.search(rb"depends=([^\0]*)\0", path.read_bytes())
        for dep in filter(None, (found[1].decode() if found else "").split(",")):
            add(dep)
        if path not in order:
            order.append(path)

    for name in names:
        add(name)
    # ext4's crc32c comes through the crypto API, not as a symbol dependency.
    for extra in ("crc32c_generic", "crc32c-intel"):
        if extra in files or extra.replace("-", "_") in files:
            add(extra)
    return order


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """Return a newc cpio archive of (name, mode, data); a mode of 0o120777 makes a symlink
    to ``data``."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
    return out.getvalue()


def _initramfs(modules: list[Path], modules_root: Path) -> bytes:
    busybox = Path("/bin/busybox").read_bytes()
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "root", "lib", "lib/modules")
    ]
    entries += [("bin/busybox", 0o100755, busybox), ("init", 0o100755, INITRAMFS_INIT.encode())]
    names = []
    for path in modules:
        name = path.relative_to(modules_root).as_posix().replace("/", "_")
        entries.append((f"lib/modules/{name}", 0o100644, path.read_bytes()))
        names.append(name)
    entries.append(("modules", 0o100644, "\n".join(names).encode() + b"\n"))
    return gzip.compress(_cpio(entries), compresslevel=6)


def _root_tree(into: Path) -> None:
    for d in ("bin", "sbin", "proc", "dev", "sys", "www", "etc"):
        (into / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", into / "bin" / "busybox")
    (into / "bin" / "sh").symlink_to("busybox")
    (into / "www" / "index.html").write_text("recoverd drill test disk\n")
    init = into / "sbin" / "init"
    init.write_text(ROOT_INIT.replace("'%s'", repr(LOGIN)))
    init.chmod(0o755)


def build_disk(path: Path, work: Path, package: Path | None = None) -> Path:
    """Write the bootable test disk to ``path`` (about 29 MiB); ``work`` keeps the unpacked
    kernel between calls. Raise subprocess.CalledProcessError if a tool fails."""
    package = package or kernel_package()
    if package is None:
        raise FileNotFoundError(f"no linux-image package in {KERNEL_CACHE}: run ./setup.sh")
    vmlinuz, modules_root = _extract_kernel(package, work / "kernel")
    boot = work / "boot-files"
    shutil.rmtree(boot, ignore_errors=True)
    boot.mkdir(parents=True)
    shutil.copy(vmlinuz, boot / "vmlinuz")
    (boot / "initrd.img").write_bytes(
        _initramfs(_module_order(modules_root, MODULES), modules_root)
    )
    (boot / "syslinux.cfg").write_text(SYSLINUX_CFG)
    root = work / "root-tree"
    shutil.rmtree(root, ignore_errors=True)
    _root_tree(root)

    path.unlink(missing_ok=True)
    with path.open("wb") as disk:
        disk.truncate(DISK_BYTES)
    with path.open("r+b") as disk:
        disk.seek(446)
        disk.write(_partition(0x80, 0x06, BOOT_START, BOOT_SECTORS))
        disk.write(_partition(0x00, 0x83, ROOT_START, ROOT_SECTORS))
        disk.seek(510)
        disk.write(b"\x55\xaa")
    _run("mkfs.vfat", "-F", "16", "-n", "BOOT", "--offset", str(BOOT_START), path,
         str(BOOT_SECTORS // 2))  # fmt: skip
    fat = f"{path}@@{BOOT_OFFSET}"
    for name in ("vmlinuz", "initrd.img", "syslinux.cfg"):
        _run("mcopy", "-i", fat, boot / name, f"::/{name}", env={"MTOOLS_SKIP_CHECK": "1"})
    _run("syslinux", "--install", "--offset", str(BOOT_OFFSET), path)
    _run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", f"offset={ROOT_OFFSET}", "-d", root,
         path, f"{ROOT_SECTORS // 2}k")  # fmt: skip
    mbr = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    with path.open("r+b") as disk:
        disk.write(mbr)
    return path


def _partition(flag: int, kind: int, start: int, sectors: int) -> bytes:
    """An MBR partition entry by LBA (CHS fields at their "use LBA" maximum)."""
    chs = b"\xfe\xff\xff"
    return bytes([flag]) + chs + bytes([kind]) + chs + struct.pack("<II", start, sectors)


def break_disk(good: Path, variant: str, path: Path) -> Path:
    """Write the ``variant`` (one of :data:`VARIANTS`) of the good disk ``good`` to ``path``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    path.unlink(missing_ok=True)
    if variant == "zeroed":
        with path.open("wb") as disk:
            disk.truncate(good.stat().st_size)
        return path
    shutil.copyfile(good, path)
    ext4 = f"{path}?offset={ROOT_OFFSET}"
    if variant == "no-kernel":
        _run("mdel", "-i", f"{path}@@{BOOT_OFFSET}", "::/vmlinuz", env={"MTOOLS_SKIP_CHECK": "1"})
    elif variant == "no-init":
        _run("debugfs", "-w", "-R", "rm /sbin/init", ext4)
    elif variant == "init-fails":
        script = path.parent / f"{path.name}.init"
        script.write_text("#!/bin/busybox sh\necho 'init: cannot start the system'\nexit 1\n")
        script.chmod(0o755)
        commands = f"rm /sbin/init\nwrite {script} /sbin/init\nsif /sbin/init mode 0100755\n"
        _run("debugfs", "-w", "-f", "-", ext4, data=commands.encode())
        script.unlink()
    elif variant == "no-root":
        with path.open("r+b") as disk:
            # Every superblock copy and the group descriptors: blkid and e2fsck find nothing.
            for group_start in (0, 8192 * 1024, 3 * 8192 * 1024, 5 * 8192 * 1024):
                if group_start < ROOT_SECTORS * SECTOR:
                    disk.seek(ROOT_OFFSET + group_start)
                    disk.write(bytes(64 * 1024))
    return path


def disk_id(package: Path | None = None) -> str:
    """A key for caching built disks: the builder's source and the kernel package."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(str(package or kernel_package()).encode())
    return digest.hexdigest()[:16]


__all__ = ["LOGIN", "VARIANTS", "break_disk", "build_disk", "disk_id", "kernel_package"]
