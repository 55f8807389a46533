"""The ``image`` engine: disk images of Linux block devices (or image files), kept by restic.

A file system that partclone knows (ext2/3/4, xfs, btrfs, ntfs, vfat, ...) is imaged with
partclone, which reads only the used blocks; anything else is copied raw. The stream goes into
``restic backup --stdin --stdin-filename <device>.<pcl|raw>``, so successive images of a device
deduplicate against each other. Its format, file system and device size go into the
snapshot's tags (``image-format=pcl``); its size, sha256, duration and throughput, measured
while it passes, go into the run's stats in the maintenance log, which restores verify against.

Where the stream goes is the level's ``via``:

- ``machine`` (default): ``partclone | restic backup --stdin`` runs on the machine, which
  reaches the repository itself. restic's password comes from the first line of the command's
  stdin, read by the shell before the pipeline starts, so the data stdin of restic is
  partclone's output and the password is in no argv.
- ``controller`` (agentless): the machine runs only partclone (or ``cat``); the stream comes
  through the SSH channel and restic on the controller stores it.

A device mounted read-write is refused unless the level says ``snapshot = "lvm"`` (an LVM
snapshot is imaged instead) or ``allow_mounted = true`` (a crash-consistent image, recorded as
such). Restores (:class:`ImageToDevice`, :class:`ImageToFile`) stream the other way and are
checked by imaging the restored device again: partclone's stream of a file system is the
same byte for byte when the file system is.
"""

from __future__ import annotations

import dataclasses
import re
import secrets as stdlib_secrets
import shlex
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import recoverd
from recoverd.engine import BackupRequest, Engine, Outcome, Progress, ProgressCallback, Snapshot
from recoverd.errors import EngineError, ToolMissing, UsageError
from recoverd.output import human_bytes
from recoverd.plugins import Kind
from recoverd.policy.model import Level, Machine, Repository
from recoverd.restore import RestorePlan, RestoreRequest, RestoreTarget, Verification
from recoverd.secrets import redact
from recoverd.streams import ByteQueue, StreamAborted, StreamDigest
from recoverd.transport import CommandOutcome, CommandRequest, Transport
from recoverd_plugins.local import LocalTransport
from recoverd_plugins.restic import (
    BackupOutput,
    LineSplitter,
    ResticEngine,
    classify_failure,
    repository_missing,
    tag_filter,
)

PARTCLONE = {
    "ext2": "extfs",
    "ext3": "extfs",
    "ext4": "extfs",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "ntfs": "ntfs",
    "vfat": "fat",
    "exfat": "exfat",
    "hfsplus": "hfsp",
    "f2fs": "f2fs",
    "minix": "minix",
}
"""blkid's file-system TYPE -> the partclone program (``partclone.<name>``) that images it."""

RAW_BLOCK = "4M"
RELAY_CHUNK = 1 << 20
"""A relayed stream crosses threads in pieces of about this size: each piece costs a queue
hand-off, a hash update and a write, so pieces as small as an SSH packet (32 KiB) would cost
more CPU than the bytes themselves. The queue holds RELAY_QUEUE of them at most."""
RELAY_QUEUE = 16

# Prints what the image sanity check compares with the last good image, as key=value lines
# ($1 is the path): the file system's UUID and label (blkid), its size and used bytes from the
# superblock (dumpe2fs -h, xfs_db -r, btrfs dump-super: a few KiB read, never the data), and
# for a device without a file system how many of 16 samples of 64 KiB spread over it hold a
# byte that is not zero. Run in the same command as PROBE, before it.
SIGNATURE = r"""
d=$1
[ -e "$d" ] && [ ! -r "$d" ] && echo "unreadable=yes"
if [ -e "$d" ]; then
  echo "uuid=$(blkid -o value -s UUID "$d" 2>/dev/null | head -n 1)"
  echo "label=$(blkid -o value -s LABEL "$d" 2>/dev/null | head -n 1)"
  case $(blkid -o value -s TYPE "$d" 2>/dev/null) in
  ext2|ext3|ext4)
    dumpe2fs -h "$d" 2>/dev/null | awk -F: '
      /^Block count:/ {c=$2} /^Free blocks:/ {f=$2} /^Block size:/ {b=$2}
      END {if (c > 0 && b > 0) printf "fs_size=%.0f\nused=%.0f\n", c*b, (c-f)*b}' ;;
  xfs)
    xfs_db -r -c 'sb 0' -c 'print dblocks fdblocks blocksize' "$d" 2>/dev/null | awk '
      $1 == "dblocks" {c=$3} $1 == "fdblocks" {f=$3} $1 == "blocksize" {b=$3}
      END {if (c > 0 && b > 0) printf "fs_size=%.0f\nused=%.0f\n", c*b, (c-f)*b}' ;;
  btrfs)
    btrfs inspect-internal dump-super "$d" 2>/dev/null | awk '
      $1 == "total_bytes" {t=$2} $1 == "bytes_used" {u=$2}
      END {if (t > 0) printf "fs_size=%.0f\nused=%.0f\n", t, u}' ;;
  "")
    n=$(blockdev --getsize64 "$d" 2>/dev/null || stat -L -c %s "$d")
    blocks=$(( ${n:-0} / 65536 )); i=0; nz=0
    while [ $i -lt 16 ]; do
      s=0; [ $blocks -gt 1 ] && s=$(( (blocks - 1) * i / 15 ))
      c=$(dd if="$d" bs=65536 skip=$s count=1 2>/dev/null | tr -d '\000' | wc -c)
      nz=$(( nz + c )); i=$(( i + 1 ))
    done
    echo "sampled=16"; echo "sample_nonzero=$nz" ;;
  esac
fi
"""

SIGNATURE_KEYS = ("uuid", "label", "fs_size", "used", "sampled", "sample_nonzero", "unreadable")

# Prints what the safety checks and the size checks need about a device or file, as
# key=value lines. $1 is the path. Mounts are matched by resolved path, and an image file also
# through the loop devices that may back it.
PROBE = r"""
d=$1
if [ -b "$d" ]; then echo kind=block; echo "size=$(blockdev --getsize64 "$d" 2>/dev/null)"
elif [ -f "$d" ]; then echo kind=file; echo "size=$(stat -L -c %s "$d")"
elif [ -e "$d" ]; then echo kind=other
else echo kind=missing; fi
[ -e "$d" ] && echo "fstype=$(blkid -o value -s TYPE "$d" 2>/dev/null)"
real=$(readlink -f "$d")
printf 'real=%s\n' "$real"
loops=
[ -f "$d" ] && command -v losetup >/dev/null 2>&1 && \
  loops=$(losetup -n -O NAME -j "$real" 2>/dev/null)
while read -r src mnt fs opts rest; do
  s=$(readlink -f "$src" 2>/dev/null) || continue
  hit=
  [ "$s" = "$real" ] && hit=1
  for l in $loops; do [ "$s" = "$l" ] && hit=1; done
  [ -n "$hit" ] && echo "mount=${opts%%,*} $mnt"
done < /proc/mounts
parent=$(dirname "$real")
[ -d "$parent" ] && echo "parent=yes"
exit 0
"""

# The sha256 of stdin, hex first. OpenSSL uses the CPU's SHA extensions where coreutils'
# sha256sum does not: 0.85 s against 5.3 s per GiB here, and on 2 cores the difference slowed an
# image stream via the machine to 1.45x of the same stream by hand. sha256sum where there is no
# openssl. (Braces doubled: the scripts below go through str.format.)
SHA256 = """
sha256_stdin() {{
  if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi
}}
"""

# Runs PRODUCER | tee | CONSUMER on the machine and reports, on stderr, both exit statuses and
# the sha256 and size of what passed between them (each report on a line of its own: dd and
# partclone end their progress lines without a newline). Two FIFOs feed the hash and wc alongside
# the consumer, with POSIX tools only (no `pipefail`, no process substitution in dash).
STREAM = (
    SHA256
    + """
t=$(mktemp -d) || exit 98
trap 'rm -rf "$t"' EXIT
mkfifo "$t/sum" "$t/size" || exit 98
sha256_stdin < "$t/sum" > "$t/sha" &
wc -c < "$t/size" > "$t/n" &
{watch}{{ {producer}; printf '\\nrecoverd-producer-exit %s\\n' $? >&2; }} | \
tee "$t/sum" "$t/size"{watched} | \
{{ {consumer}; printf '\\nrecoverd-consumer-exit %s\\n' $? >&2; }}
wait
echo "recoverd-stream $(cut -c1-64 "$t/sha") $(cat "$t/n")" >&2
{watch_report}"""
)

# Whether a raw stream is all zeros, told by the stream itself: cmp compares it with /dev/zero
# (memcmp speed) up to the first byte that is not zero, then cat drains the rest so that tee
# never meets a closed pipe. Every byte imaged is looked at and the device is read once: exact,
# where samples could only prove the opposite. cmp says "EOF on -" when the stream ended first
# (all zeros) and "differ" otherwise (LC_ALL=C: the words are the same in every locale).
ZERO_WATCH = {
    "watch": 'mkfifo "$t/zero" || exit 98\n'
    '{ LC_ALL=C cmp - /dev/zero > "$t/z" 2>&1; cat > /dev/null; } < "$t/zero" &\n',
    "watched": ' "$t/zero"',
    "watch_report": 'if grep -q differ "$t/z"; then z=no; elif grep -q "EOF on" "$t/z"; '
    'then z=yes; else z=unknown; fi\necho "recoverd-zeros $z" >&2\n',
}
NO_WATCH = {"watch": "", "watched": "", "watch_report": ""}

DIGEST = (
    SHA256
    + """
{{ {producer}; printf '\\nrecoverd-producer-exit %s\\n' $? >&2; }} | sha256_stdin
"""
)

PROGRESS_PCT = re.compile(r"Complete(?:d)?:\s*([\d.]+)%")
PROGRESS_ETA = re.compile(r"Remaining:\s*(\d+):(\d+):(\d+)")
DD_BYTES = re.compile(r"^(\d+) bytes")
MARKER = re.compile(r"^recoverd-(producer-exit|consumer-exit|stream|restic-version|zeros) ?(.*)$")


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine says about a device or image file."""

    path: str
    kind: str
    """``block``, ``file``, ``other`` or ``missing``."""
    size: int | None
    fstype: str | None
    mounts: tuple[tuple[str, str], ...]
    """(``rw`` or ``ro``, mount point) for every mount of the device."""
    parent_exists: bool
    real: str | None = None
    """``path`` with every symbolic link resolved (``readlink -f``)."""
    signature: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)
    """What :data:`SIGNATURE` printed (``uuid``, ``label``, ``used``, ``sampled``, ...), when
    asked for."""

    @property
    def mounted_rw(self) -> str | None:
        """The mount point of a read-write mount, or None."""
        return next((point for mode, point in self.mounts if mode == "rw"), None)


class DeviceChanged(EngineError):
    """The device no longer looks like the level's last good image (wiped, reformatted, all
    zeros): it was not imaged, unless ``--accept-change``."""


USED_DROP_RATIO = 0.5
"""A file system whose used bytes fell below this share of the last good image's is worth a
warning in the record (not a refusal: a big clean-up is a normal event)."""
USED_DROP_MIN = 1 << 20


@dataclass(frozen=True)
class DeviceState:
    """What the sanity check compares: a device now, or as its last good image recorded it."""

    fs_type: str | None
    uuid: str | None = None
    label: str | None = None
    used: int | None = None
    size: int | None = None
    sampled: int | None = None
    sample_nonzero: int | None = None
    """How many of ``sampled`` 64 KiB samples of a device without a file system were not zero
    (bytes that are not zero): one proves data is there, none proves nothing."""
    all_zeros: bool | None = None
    """Every byte of the image stream was zero (None: not looked at)."""

    @classmethod
    def of(cls, info: DeviceInfo) -> DeviceState:
        """Return the state the machine reported in ``info`` (probed with ``signature``)."""
        sig = info.signature

        def number(key: str) -> int | None:
            value = sig.get(key, "")
            return int(value) if value.isdigit() else None

        return cls(
            fs_type=info.fstype,
            uuid=sig.get("uuid") or None,
            label=_printable(sig.get("label")),
            used=number("used"),
            size=info.size,
            sampled=number("sampled"),
            sample_nonzero=number("sample_nonzero"),
        )

    @classmethod
    def recorded(cls, stats: dict[str, Any]) -> DeviceState:
        """Return the state an image run recorded in its ``stats`` (older records have only
        ``fs_type`` and sizes)."""
        return cls(
            fs_type=stats.get("fs_type") or None,
            uuid=stats.get("fs_uuid"),
            label=stats.get("fs_label"),
            used=stats.get("fs_used_bytes"),
            size=stats.get("device_size"),
            all_zeros=stats.get("all_zeros"),
        )

    @property
    def zeros_seen(self) -> bool:
        """True if the stream was all zeros, or every sample was (no file system)."""
        return bool(self.all_zeros) or (bool(self.sampled) and self.sample_nonzero == 0)

    def describe(self) -> str:
        """Return the state for a message: ``ext4, 412.0 MiB used, UUID ..., label "data"``."""
        if self.fs_type is None:
            if self.all_zeros:
                return f"no file system, all zeros (every byte of {human_bytes(self.size)} read)"
            if self.sampled and self.sample_nonzero == 0:
                return (
                    f"no file system, all zeros in {self.sampled} samples across "
                    f"{human_bytes(self.size)}"
                )
            if self.sampled:
                return f"no file system recognised (data in the samples, {human_bytes(self.size)})"
            return f"no file system ({human_bytes(self.size)} imaged raw)"
        parts = [self.fs_type]
        if self.used is not None:
            parts.append(f"{human_bytes(self.used)} used")
        if self.uuid:
            parts.append(f"UUID {self.uuid}")
        if self.label:
            parts.append(f'label "{self.label}"')
        return ", ".join(parts)


def device_change(baseline: DeviceState | None, now: DeviceState) -> tuple[str | None, list[str]]:
    """Given the last good image's state (None: there is none) and the device's, return what
    changed so much that the device must not be imaged (None if nothing) and the warnings."""
    if now.all_zeros:
        return "it is all zeros", []
    if baseline is None:
        return None, []
    if baseline.fs_type and now.fs_type is None:
        return f"it has lost its {baseline.fs_type} file system", []
    if baseline.fs_type != now.fs_type:
        before, after = baseline.fs_type or "no file system", now.fs_type or "none"
        return f"its file system changed from {before} to {after}", []
    if baseline.uuid and now.uuid and baseline.uuid != now.uuid:
        return f"it holds a new {now.fs_type} file system (it was formatted again)", []
    warnings = []
    if (
        baseline.used is not None
        and now.used is not None
        and now.used < baseline.used * USED_DROP_RATIO
        and baseline.used - now.used >= USED_DROP_MIN
    ):
        share = round(100 * (baseline.used - now.used) / baseline.used)
        warnings.append(
            f"used space fell from {human_bytes(baseline.used)} to {human_bytes(now.used)} "
            f"(-{share}%) since the last good image"
        )
    if baseline.label and now.label != baseline.label:
        warnings.append(
            f'the file system label changed from "{baseline.label}" to "{now.label or ""}"'
        )
    return None, warnings


def _printable(text: str | None) -> str | None:
    """Return a label as text that cannot forge a message or a terminal (None if empty)."""
    if not text:
        return None
    return "".join(c if c.isprintable() else "?" for c in text)


class ZeroWatch:
    """Tells whether every byte of a stream passing on the controller is zero: each piece is
    compared with zeros (memcmp) until the first one that is not, then nothing more is done."""

    def __init__(self) -> None:
        self.zeros = True
        self._zero = b""

    def __call__(self, chunk: bytes) -> None:
        if not self.zeros:
            return
        if len(self._zero) != len(chunk):
            self._zero = bytes(len(chunk))
        if chunk != self._zero:
            self.zeros = False


@dataclass(frozen=True)
class ImageFormat:
    """How a device is imaged and restored: partclone for a known file system, else raw."""

    format: str
    """``pcl`` or ``raw``."""
    fstype: str | None
    program: str | None
    """``partclone.extfs`` and the like; None for raw."""

    @classmethod
    def for_fstype(cls, fstype: str | None) -> ImageFormat:
        tool = PARTCLONE.get(fstype or "")
        if tool is None:
            return cls("raw", fstype, None)
        return cls("pcl", fstype, f"partclone.{tool}")

    def clone(self, device: str, size: int | None = None) -> list[str]:
        """Return the argv that writes the image of ``device`` to stdout."""
        if self.program:
            return [self.program, "-c", "-s", device, "-o", "-"]
        if size is not None:  # a raw image is only as long as it was when taken
            return ["head", "-c", str(size), device]
        return ["cat", device]

    def restore(self, target: str, *, new_file: bool) -> list[str]:
        """Return the argv that writes an image from stdin to ``target``."""
        if self.program:
            sparse = ["-W"] if new_file else []  # -W: create a (sparse) file of the fs size
            return [self.program, "-r", *sparse, "-s", "-", "-O", target]
        conv = "fsync" if new_file else "notrunc,fsync"  # a device keeps its size
        return ["dd", f"of={target}", f"bs={RAW_BLOCK}", f"conv={conv}", "status=progress"]


@dataclass
class StreamResult:
    """A stream that passed between two commands: its size, sha256 and how long it took."""

    size: int
    sha256: str
    seconds: float


class StreamReport:
    """Read the stderr of a stream: markers, partclone/dd progress, and messages for errors."""

    def __init__(self, progress: ProgressCallback | None, bytes_total: int | None) -> None:
        self.progress = progress
        self.bytes_total = bytes_total
        self.markers: dict[str, str] = {}
        self.messages: deque[str] = deque(maxlen=50)
        self.fraction: float | None = None
        self.eta_s: float | None = None
        self.bytes_done: int | None = None
        self._lock = threading.RLock()
        self._sources: list[LineSplitter] = []
        self._main = self.source()

    def source(self) -> Callable[[bytes], None]:
        """Return a consumer for one more stderr stream (each keeps its own partial line)."""
        lines = LineSplitter(self._line)
        self._sources.append(lines)
        # partclone and dd redraw their progress with carriage returns.
        return lambda chunk: lines(chunk.replace(b"\r", b"\n"))

    def __call__(self, chunk: bytes) -> None:
        self._main(chunk)

    def flush(self) -> None:
        for lines in self._sources:
            lines.flush()

    def _line(self, line: str) -> None:
        with self._lock:  # two commands' stderr may arrive on two threads
            self._take(line)

    def _take(self, line: str) -> None:
        marker = MARKER.match(line)
        if marker:
            self.markers[marker[1]] = marker[2]
            return
        pct, eta, copied = (
            PROGRESS_PCT.search(line),
            PROGRESS_ETA.search(line),
            DD_BYTES.match(line),
        )
        if pct or copied:
            if pct:
                self.fraction = float(pct[1]) / 100
            if eta:
                self.eta_s = int(eta[1]) * 3600 + int(eta[2]) * 60 + int(eta[3])
            if copied:
                self.bytes_done = int(copied[1])
            self.report()
            return
        if line.strip() and not line.startswith("{"):
            self.messages.append(line.strip())

    def report(self, bytes_done: int | None = None) -> None:
        """Pass on how far the stream is (``bytes_done`` if the caller counted it)."""
        with self._lock:
            self._report(bytes_done)

    def _report(self, bytes_done: int | None) -> None:
        if bytes_done is not None:
            self.bytes_done = bytes_done
        if self.progress is None:
            return
        fraction = self.fraction
        if fraction is None and self.bytes_done is not None and self.bytes_total:
            fraction = min(1.0, self.bytes_done / self.bytes_total)
        self.progress(
            Progress(
                fraction=fraction,
                bytes_done=self.bytes_done,
                bytes_total=self.bytes_total,
                eta_s=self.eta_s,
            )
        )

    def status(self, name: str) -> int | None:
        """The exit status a marker reported, or None if it never came."""
        value = self.markers.get(name, "")
        return int(value) if value.strip().lstrip("-").isdigit() else None

    def tail(self) -> str:
        """The last few messages, secrets masked, for an error."""
        return redact(" / ".join(list(self.messages)[-3:])) or "no message"


def _image_tags(snapshot: Snapshot) -> dict[str, str]:
    return {
        key[6:]: value
        for key, _, value in (t.partition("=") for t in snapshot.tags)
        if key.startswith("image-")
    }


def image_facts(snapshot: Snapshot) -> dict[str, Any]:
    """Given an image snapshot, return what is known of it: sha256, size, format, fstype,
    device_size and file.

    Format, file system and device size are the snapshot's tags, written with the backup. The
    stream's sha256 and size, measured while it passed, are in the maintenance log's record of
    the backup (``snapshot.record``); images made before that carry them as tags. sha256 is None
    when neither has it (a snapshot the log does not know): a restore then checks against the
    stream restic gives back, whose blobs restic verifies against their content hashes.

    Raise EngineError if the snapshot is not a recoverd image.
    """
    tags = _image_tags(snapshot)
    record = snapshot.record or {}
    if "format" not in tags:
        raise EngineError(
            f"snapshot {snapshot.short_id} is not a recoverd disk image (no image-format tag); "
            "pick another with --snapshot"
        )
    device_size = int(tags["device-size"]) if tags.get("device-size") else None
    size = tags.get("size") or record.get("image_size")
    if size is None and tags["format"] == "raw":
        size = device_size  # a raw image is the whole device
    return {
        "sha256": tags.get("sha256") or record.get("image_sha256"),
        "size": int(size or 0),
        "format": tags["format"],
        "fstype": tags.get("fs") or None,
        "device_size": device_size,
        "file": snapshot.paths[0] if snapshot.paths else None,
    }


def relay(
    produce: Callable[[Callable[[bytes], None]], CommandOutcome],
    consume: Callable[[Iterable[bytes]], CommandOutcome],
    report: StreamReport,
    name: str,
    watch: Callable[[bytes], None] | None = None,
) -> StreamResult:
    """Run ``produce`` on a thread, its output passing through a bounded queue into
    ``consume`` here (so the slower side paces the other); hash and count what passes, and
    show it to ``watch``.

    Return what passed. Raise the producer's error, if it had one.
    """
    chunks = ByteQueue(RELAY_QUEUE)
    digest = StreamDigest(on_bytes=report.report)
    produced: dict[str, Any] = {}
    pending: list[bytes] = []
    pending_size = 0

    def put(chunk: bytes) -> None:  # gathers the producer's small chunks into one piece
        nonlocal pending_size
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= RELAY_CHUNK:
            chunks.put(b"".join(pending))
            pending.clear()
            pending_size = 0

    def run_producer() -> None:
        try:
            produced["outcome"] = produce(put)
            if pending:
                chunks.put(b"".join(pending))
        except StreamAborted:
            produced["outcome"] = CommandOutcome(None, signal="PIPE")
        except BaseException as exc:  # handed to the main thread below
            produced["error"] = exc
        finally:
            chunks.close()

    def passing() -> Iterator[bytes]:
        for chunk in chunks:
            digest(chunk)
            if watch is not None:
                watch(chunk)
            yield chunk

    producer = threading.Thread(target=run_producer, name=name, daemon=True)
    producer.start()
    try:
        outcome = consume(passing())
    finally:
        chunks.abort()  # the consumer is done: a producer still writing must stop
        producer.join()
    digest.done()
    report.flush()
    if "error" in produced:
        raise produced["error"]
    report.markers["producer-exit"] = str(produced["outcome"].exit_status)
    report.markers["consumer-exit"] = str(outcome.exit_status)
    return StreamResult(digest.size, digest.sha256, digest.seconds)


class ImageEngine(Engine):
    """Disk images of POSIX machines: partclone or raw, into restic."""

    name = "image"
    kinds = ("image",)
    os_families = ("posix",)

    def __init__(self, transport: Transport, secrets: Any) -> None:
        super().__init__(transport, secrets)
        self.on_machine = ResticEngine(transport, secrets)
        self._on_controller: ResticEngine | None = None

    @property
    def machine(self) -> Machine:
        return self.transport.machine

    @property
    def on_controller(self) -> ResticEngine:
        """restic on the controller (the ``restic`` on its PATH), for ``via = "controller"``."""
        if self._on_controller is None:
            controller = dataclasses.replace(self.machine, transport="local", restic="restic")
            self._on_controller = ResticEngine(
                LocalTransport(controller, self.secrets), self.secrets
            )
        return self._on_controller

    def restic_for(self, level: Level | None, repository: Repository | None = None) -> ResticEngine:
        """Return the restic that reaches the level's repository: the machine's or the
        controller's. Without a level, the controller's if any image level of the machine
        stores ``repository`` from the controller."""
        if level is None:
            via_controller = any(
                lv.kind == "image"
                and lv.via == "controller"
                and (repository is None or lv.repository == repository.name)
                for lv in self.machine.levels
            )
            return self.on_controller if via_controller else self.on_machine
        return self.on_controller if level.via == "controller" else self.on_machine

    # -- looking at devices ------------------------------------------------------------------

    def probe(self, path: str, *, signature: bool = False) -> DeviceInfo:
        """Return what the machine says about ``path`` (with ``signature``, also what the image
        sanity check compares). Raise EngineError if it cannot tell."""
        script = SIGNATURE + PROBE if signature else PROBE
        outcome = self.transport.run(
            CommandRequest(["sh", "-c", script, "probe", path], timeout=60)
        )
        if not outcome.ok:
            raise EngineError(
                f"cannot examine {path} on {self.machine.name}: "
                f"{outcome.stderr.decode('utf-8', 'replace').strip() or outcome.exit_status}"
            )
        facts: dict[str, str] = {}
        mounts = []
        for line in outcome.stdout.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition("=")
            if key == "mount":
                mode, _, point = value.partition(" ")
                mounts.append((mode, point))
            else:
                facts[key] = value.strip()
        size = facts.get("size", "")
        return DeviceInfo(
            path=path,
            kind=facts.get("kind", "missing"),
            size=int(size) if size.isdigit() else None,
            fstype=facts.get("fstype") or None,
            mounts=tuple(mounts),
            parent_exists=facts.get("parent") == "yes",
            real=facts.get("real") or None,
            signature={k: facts[k] for k in SIGNATURE_KEYS if facts.get(k)},
        )

    # -- imaging -----------------------------------------------------------------------------

    def backup(self, request: BackupRequest, progress: ProgressCallback | None = None) -> Outcome:
        """Image the level's device into its repository; return the outcome with the image's
        size, sha256, duration and throughput. Raise EngineError if the device is mounted
        read-write (and the level allows no way around it), missing, or imaging fails."""
        level = request.level
        if not level.device:
            raise UsageError(f"level {level.name} of {self.machine.name} has no device")
        info = self.probe(level.device, signature=True)
        if info.kind == "missing":
            raise EngineError(f"device {level.device} does not exist on {self.machine.name}")
        consistency = "unmounted"
        mounted = info.mounted_rw
        if mounted and level.snapshot != "lvm":
            if not level.allow_mounted:
                raise EngineError(
                    f"{level.device} is mounted read-write on {mounted}: an image of it would "
                    f'not be consistent. Unmount it, or set snapshot = "lvm" (an LVM volume) '
                    f"or allow_mounted = true (a crash-consistent image) on level {level.name}"
                )
            consistency = "crash-consistent"
        # Before anything is read: a device that lost the file system of its last good image
        # (wiped, formatted again) must not become the newest image, which restores and drills
        # would take by default and `keep` would let push the good ones out.
        if info.signature.get("unreadable"):  # blkid and the samples would say "nothing there"
            raise EngineError(
                f"{level.device} on {self.machine.name} cannot be read by "
                f"{self.machine.user or 'the login user'}: log in as root, or give that user "
                "read access to the device (e.g. the disk group)"
            )
        now = DeviceState.of(info)
        baseline = self._baseline(request)
        change, warnings = device_change(baseline, now)
        if change:
            self._change_refused(request, change, baseline, now)  # unless accepted
        restic = self.restic_for(level)
        if level.snapshot == "lvm":
            with LvmSnapshot(self.transport, level) as snapshot_device:
                outcome = self._image(request, snapshot_device, info, restic, progress, now, change)
            outcome.stats["consistency"] = "lvm-snapshot"
        else:
            outcome = self._image(request, level.device, info, restic, progress, now, change)
            outcome.stats["consistency"] = consistency
        stats = outcome.stats
        stats["compared_with"] = request.baseline["snapshot"] if request.baseline else None
        if warnings:
            stats["warnings"] = warnings + stats.get("warnings", [])
        return outcome

    def _baseline(self, request: BackupRequest) -> DeviceState | None:
        """Return the state the level's last good image recorded, or None if there is none."""
        return DeviceState.recorded(request.baseline["stats"] or {}) if request.baseline else None

    def _change_refused(
        self,
        request: BackupRequest,
        change: str,
        baseline: DeviceState | None,
        now: DeviceState,
    ) -> str:
        """Given what changed on the device, return it as the record's ``accepted_change`` if
        the engineer accepted it. Raise DeviceChanged (naming both states and the way out) if
        not."""
        level, view = request.level, request.baseline
        if view and baseline is not None:
            when = (view.get("finished_at") or "")[:10]
            last = f"last good (image {view['snapshot']} of {when}): {baseline.describe()}"
        else:
            last = "no good image of this level yet"
        states = f"{last}; now: {now.describe()}"
        if request.accept_change:
            return f"{change}. {states}"
        raise DeviceChanged(
            f"{level.device} of {self.machine.qualified_name} was not imaged: {change}. "
            f"{states}. Nothing was stored and the earlier images are kept. If the change is "
            f"intended: recoverd backup {self.machine.qualified_name} --level {level.name} "
            "--accept-change"
        )

    def _image(
        self,
        request: BackupRequest,
        device: str,
        info: DeviceInfo,
        restic: ResticEngine,
        progress: ProgressCallback | None,
        now: DeviceState,
        change: str | None,
    ) -> Outcome:
        """Stream the image of ``device``; return the outcome. ``now`` is the device's state and
        ``change`` what the engineer accepted about it (``--accept-change``), if anything.
        Raise DeviceChanged if the stream was all zeros and that was not accepted."""
        level = request.level
        fmt = ImageFormat.for_fstype(info.fstype)
        # A raw stream is checked for zeros as it passes, unless a sample already held data:
        # one byte that is not zero proves the device is not wiped, while samples of zeros
        # prove nothing. A file system partclone reads is no wiped device either.
        zero_check = fmt.format == "raw" and not now.sample_nonzero
        name = f"{(level.device or device).rstrip('/').rsplit('/', 1)[-1]}.{fmt.format}"
        args = [
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            name,
            "--host",
            self.machine.name,
            "--tag",
            f"recoverd,{tag_filter(request.client, self.machine.name, level.name)}",
        ]
        # What is known before the stream goes into the snapshot's tags; what is measured while
        # it passes (size, sha256, duration) goes into the record: a `restic tag` afterwards
        # would open the repository once more and rewrite the snapshot.
        args += ["--tag", f"image-format={fmt.format}"]
        args += ["--tag", f"image-fs={fmt.fstype or ''}"]
        args += ["--tag", f"image-device-size={info.size or ''}"]
        # The repository is opened only by the backup itself; only a backup that finds none
        # creates it and streams again (see ResticEngine.backup).
        report, parsed, stream = self._stream(
            request, device, fmt, info, restic, args, progress, zero_check
        )
        created = False
        if repository_missing(report.status("consumer-exit"), "\n".join(report.messages)):
            created = restic.ensure_repository(request.repository)
            report, parsed, stream = self._stream(
                request, device, fmt, info, restic, args, progress, zero_check
            )
        elif parsed.summary is None and report.status("consumer-exit") not in (0, None):
            # restic's "no repository" line shares stderr with partclone's progress, which
            # may swallow it (a line without its end): a failed first image asks restic itself.
            try:
                created = restic.ensure_repository(request.repository)
            except EngineError:
                created = False  # the stream's own failure says why, below
            if created:
                report, parsed, stream = self._stream(
                    request, device, fmt, info, restic, args, progress, zero_check
                )
        summary = parsed.summary
        producer, consumer = report.status("producer-exit"), report.status("consumer-exit")
        if producer != 0 or consumer != 0 or summary is None:
            if summary is not None:  # restic stored a truncated stream: it must not be restored
                restic.forget_snapshot(request.repository, summary["snapshot_id"])
            raise self._stream_failure(
                f"image of {device}",
                report,
                (producer, fmt.program or "cat"),
                (consumer, "restic"),
            )
        zeros = report.markers.get("zeros")
        all_zeros = {"yes": True, "no": False}.get(zeros or "", None)
        if fmt.format == "pcl" or now.sample_nonzero:
            all_zeros = False
        now = dataclasses.replace(now, all_zeros=all_zeros, size=stream.size)
        accepted = None
        if all_zeros or change:
            what = f"{change} and is all zeros" if change and all_zeros else change
            try:
                accepted = self._change_refused(
                    request, what or "it is all zeros", self._baseline(request), now
                )
            except DeviceChanged:  # what restic stored of it must not be restored either
                restic.forget_snapshot(request.repository, summary["snapshot_id"])
                raise
        seconds = max(stream.seconds, 1e-6)
        stats = {
            "device": level.device,
            "imaged_device": device,
            "image_format": fmt.format,
            "fs_type": fmt.fstype,
            "image_size": stream.size,
            "image_sha256": stream.sha256,
            "device_size": info.size,
            "bytes_processed": stream.size,
            "bytes_added": summary.get("data_added", 0),
            "duration_s": round(stream.seconds, 3),
            "throughput_bytes_s": int(stream.size / seconds),
            "via": level.via,
            "restic_version": ".".join(map(str, restic.version())),
            "repository_created": created,
            # What the next image's sanity check compares with.
            "fs_uuid": now.uuid,
            "fs_label": now.label,
            "fs_used_bytes": now.used,
            "all_zeros": all_zeros,
        }
        if accepted:
            stats["accepted_change"] = accepted
        if zero_check and all_zeros is None:  # cmp missing or killed on the machine
            stats["warnings"] = [
                "whether the device is all zeros is not known (its samples were; cmp gave no "
                f"answer: {zeros or 'no report'})"
            ]
        return Outcome("succeeded", summary["snapshot_id"][:8], stats)

    def _stream(
        self,
        request: BackupRequest,
        device: str,
        fmt: ImageFormat,
        info: DeviceInfo,
        restic: ResticEngine,
        args: list[str],
        progress: ProgressCallback | None,
        zero_check: bool = False,
    ) -> tuple[StreamReport, BackupOutput, StreamResult]:
        """Stream the image of ``device`` into ``restic backup`` ARGS; return the stream's
        report, restic's parsed output and what passed (``zero_check``: and whether it was all
        zeros, the ``zeros`` marker). Raise ToolMissing or EngineError if restic is missing or
        too old."""
        report = StreamReport(progress, info.size if fmt.format == "raw" else None)
        # restic's status lines say how much of the stream it has read.
        parsed = BackupOutput(lambda seen: report.report(seen.bytes_done))
        out = LineSplitter(parsed.stdout_line)
        if request.level.via == "controller":
            stream = self._pull_into(
                restic,
                request.repository,
                fmt.clone(device),
                args,
                out,
                report,
                zero_check=zero_check,
            )
        else:
            stream = self._pipe_on_machine(
                restic,
                request.repository,
                fmt.clone(device),
                ["restic_", '"$@"'],
                args,
                out,
                report,
                check_version=True,
                zero_check=zero_check,
            )
        out.flush()
        return report, parsed, stream

    def _stream_failure(
        self,
        what: str,
        report: StreamReport,
        producer: tuple[int | None, str],
        consumer: tuple[int | None, str],
    ) -> EngineError:
        """Given the exit status and program of each side of a failed stream, return the error
        that names the side that failed first (the other one usually died of a broken pipe)."""
        sides = [producer, consumer]
        failed = [s for s in sides if s[0] not in (0, None, 141)] or [s for s in sides if s[0] != 0]
        if not failed:
            return EngineError(f"{what} failed: {report.tail()}")
        status, program = failed[0]
        if program == "restic" and status is not None:
            text = "\n".join(report.messages).encode()
            return classify_failure(CommandOutcome(status, stderr=text), what, "restic")
        if status == 127:
            hint = " (Debian/Ubuntu: apt-get install partclone)" if "partclone" in program else ""
            return ToolMissing(f"{what}: {program} is not installed on {self.machine.name}{hint}")
        return EngineError(f"{what}: {program} failed with exit status {status}: {report.tail()}")

    def _pipe_on_machine(
        self,
        restic: ResticEngine,
        repository: Repository,
        producer: list[str] | str,
        consumer: list[str] | str,
        restic_args: list[str],
        on_stdout: Callable[[bytes], None] | None,
        report: StreamReport,
        *,
        check_version: bool = False,
        zero_check: bool = False,
    ) -> StreamResult:
        """Run ``producer | consumer`` on the machine, one side being ``restic_ "$@"`` with
        ``restic_args``; return the stream's size and sha256 as the machine measured them.

        ``check_version``: the same command first reports restic's version (unless it is known),
        which ``restic`` then knows. ``zero_check``: the ``zeros`` marker says whether the
        stream was all zeros. Raise ToolMissing if restic is missing or too old."""
        script = STREAM.format(
            producer=self._shell(producer),
            consumer=self._shell(consumer),
            **(ZERO_WATCH if zero_check else NO_WATCH),
        )
        check = check_version and not restic.knows_version
        started = time.monotonic()
        outcome = restic.run_script(
            repository,
            script,
            restic_args,
            on_stdout=on_stdout,
            on_stderr=report,
            check_version=check,
        )
        report.flush()
        if check:
            restic.take_reported_version(report.markers.get("restic-version"), outcome)
        self._check_script(outcome, report)
        sha, _, size = report.markers.get("stream", "").partition(" ")
        return StreamResult(int(size or 0), sha, time.monotonic() - started)

    def _shell(self, part: list[str] | str) -> str:
        if isinstance(part, str):
            return part
        # `restic_ "$@"` is shell syntax written by this module, not data to quote.
        if part and part[0] == "restic_":
            return " ".join(part)
        return shlex.join(part)

    def _check_script(self, outcome: CommandOutcome, report: StreamReport) -> None:
        if outcome.exit_status == 97:
            raise EngineError("the machine's shell did not receive restic's credentials")
        if outcome.exit_status == 98:
            raise EngineError(
                f"cannot create a temporary FIFO on {self.machine.name}: {report.tail()}"
            )

    def _pull_into(
        self,
        restic: ResticEngine,
        repository: Repository,
        producer: list[str],
        restic_args: list[str],
        on_stdout: Callable[[bytes], None],
        report: StreamReport,
        *,
        zero_check: bool = False,
    ) -> StreamResult:
        """Run ``producer`` on the machine and store its output with restic on the controller;
        the stream passes through a bounded queue, so a slow restic slows the SSH reader.

        restic reports its version in the same command (unless it is known), which ``restic``
        then knows. ``zero_check``: the ``zeros`` marker says whether the stream was all zeros.
        Raise ToolMissing if restic is missing or too old."""
        machine_side = report.source()
        check = not restic.knows_version
        stored: list[CommandOutcome] = []

        def store(data: Iterable[bytes]) -> CommandOutcome:
            outcome = restic.restic(
                repository,
                restic_args,
                on_stdout=on_stdout,
                on_stderr=report,
                data=data,
                check_version=check,
            )
            stored.append(outcome)
            return outcome

        zeros = ZeroWatch() if zero_check else None
        stream = relay(
            lambda out: self.transport.run(
                CommandRequest(producer, on_stdout=out, on_stderr=machine_side)
            ),
            store,
            report,
            "image-pull",
            zeros,
        )
        if zeros is not None:
            report.markers["zeros"] = "yes" if zeros.zeros else "no"
        if check:
            restic.take_reported_version(report.markers.get("restic-version"), stored[0])
        return stream

    # -- restoring ---------------------------------------------------------------------------

    def write_image(
        self,
        level: Level,
        repository: Repository,
        snapshot: Snapshot,
        consumer: list[str],
        progress: ProgressCallback | None,
    ) -> StreamResult:
        """Stream the image in ``snapshot`` into ``consumer`` on the machine and return what
        passed. Raise EngineError if either side fails."""
        facts = image_facts(snapshot)
        restic = self.restic_for(level)
        report = StreamReport(progress, facts["size"])
        args = ["dump", snapshot.id, facts["file"]]
        if level.via == "controller":
            stream = self._push_from(restic, repository, args, consumer, report)
        else:
            stream = self._pipe_on_machine(
                restic, repository, ["restic_", '"$@"'], consumer, args, None, report
            )
        producer, written = report.status("producer-exit"), report.status("consumer-exit")
        if producer != 0 or written != 0:
            raise self._stream_failure(
                f"restore of image {snapshot.short_id}",
                report,
                (producer, "restic"),
                (written, consumer[0]),
            )
        return stream

    def _push_from(
        self,
        restic: ResticEngine,
        repository: Repository,
        restic_args: list[str],
        consumer: list[str],
        report: StreamReport,
    ) -> StreamResult:
        """Dump with restic on the controller and stream it into ``consumer`` on the machine."""
        controller_side = report.source()
        return relay(
            lambda out: restic.restic(
                repository, restic_args, on_stdout=out, on_stderr=controller_side
            ),
            lambda data: self.transport.run(CommandRequest(consumer, stdin=data, on_stderr=report)),
            report,
            "image-dump",
        )

    def image_digest(
        self, path: str, facts: dict[str, Any], progress: ProgressCallback | None = None
    ) -> str:
        """Return the sha256 of the image stream of ``path`` taken as the snapshot's was
        (partclone of the same file system, or the first ``size`` bytes raw)."""
        fmt = ImageFormat.for_fstype(facts["fstype"]) if facts["format"] == "pcl" else None
        fmt = fmt or ImageFormat("raw", None, None)
        producer = fmt.clone(path, None if fmt.program else facts["size"])
        report = StreamReport(progress, None)
        script = DIGEST.format(producer=shlex.join(producer))
        outcome = self.transport.run(
            CommandRequest(["sh", "-c", script], on_stderr=report, timeout=None)
        )
        report.flush()
        if not outcome.ok or report.status("producer-exit") != 0:
            raise self._stream_failure(
                f"reading back {path}",
                report,
                (report.status("producer-exit"), producer[0]),
                (outcome.exit_status, "sha256"),
            )
        return outcome.stdout.decode().split()[0]

    # -- restore points and retention --------------------------------------------------------

    def snapshots(
        self, client: str, machine: Machine, repository: Repository, level: str | None = None
    ) -> list[Snapshot]:
        """Return the machine's image snapshots in ``repository`` (of ``level`` if given)."""
        chosen = machine.level(level) if level else None
        return self.restic_for(chosen, repository).snapshots(client, machine, repository, level)

    def forget(self, request: BackupRequest) -> Outcome:
        """Apply ``keep`` to the level's images."""
        return self.restic_for(request.level).forget(request)

    def prune(self, client: str, machine: Machine, repository: Repository) -> Outcome:
        """Prune the repository from where the images are stored."""
        return self.restic_for(None, repository).prune(client, machine, repository)


class LvmSnapshot:
    """An LVM snapshot of the level's device for the length of a ``with`` block.

    ``lvcreate --snapshot`` freezes the file system for a moment, so the snapshot is
    consistent; the snapshot gets 10% of the origin's size for the changes made meanwhile.
    """

    def __init__(self, transport: Transport, level: Level) -> None:
        self.transport = transport
        self.level = level
        self.name = (
            f"recoverd-{re.sub(r'[^A-Za-z0-9+_.-]', '-', level.name)}-{stdlib_secrets.token_hex(3)}"
        )
        self.volume: str | None = None

    def _run(self, argv: list[str], what: str) -> CommandOutcome:
        outcome = self.transport.run(CommandRequest(argv, timeout=300))
        if not outcome.ok:
            text = outcome.stderr.decode("utf-8", "replace").strip()
            if outcome.exit_status == 127:
                raise ToolMissing(f"{what}: LVM tools are not installed ({argv[0]} not found)")
            raise EngineError(f"{what} failed: {text or outcome.exit_status}")
        return outcome

    def __enter__(self) -> str:
        device = self.level.device or ""
        found = self._run(
            ["lvs", "--noheadings", "-o", "vg_name,lv_name", device],
            f"find the LVM volume of {device}",
        )
        words = found.stdout.decode().split()
        if len(words) != 2:
            raise EngineError(f'{device} is not an LVM logical volume (snapshot = "lvm")')
        group, volume = words
        self._run(
            [
                "lvcreate",
                "--snapshot",
                "--extents",
                "10%ORIGIN",
                "--name",
                self.name,
                f"{group}/{volume}",
            ],
            f"create an LVM snapshot of {device}",
        )
        self.volume = f"{group}/{self.name}"
        return f"/dev/{self.volume}"

    def __exit__(self, *exc: object) -> None:
        if self.volume:
            self._run(["lvremove", "--yes", self.volume], f"remove LVM snapshot {self.volume}")


class _ImageTarget(RestoreTarget):
    """What image-to-device and image-to-file share: plan, stream, read back."""

    kinds = ("image",)
    engine: ImageEngine
    new_file = False

    @abstractmethod
    def _destination(self, request: RestoreRequest) -> str:
        """Return where the image goes. Raise UsageError if the request does not say."""

    @abstractmethod
    def _refusal(self, request: RestoreRequest, info: DeviceInfo, needed: int) -> str | None:
        """Return why ``info`` cannot take an image that needs ``needed`` bytes, or None."""

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan: which image goes to which device or file, how big it is, and a
        refusal if the destination is mounted or too small."""
        facts = image_facts(request.snapshot)
        given = self._destination(request)
        info = self.engine.probe(given)
        # A link (/dev/disk/by-id/..., a file's folder) is resolved once, here: the plan shows
        # the real device and the restore writes exactly that one.
        destination = info.real or given
        # partclone needs room for the whole file system; a raw image for all its bytes.
        needed = facts["device_size"] or facts["size"]
        mounted = next((point for _, point in info.mounts), None)
        refusal = None
        if mounted:
            refusal = (
                f"{destination} is mounted on {mounted}; unmount it first (nothing was written)"
            )
        else:
            refusal = self._refusal(request, info, needed)
        source = (
            f"image {facts['file']} of {request.level.device} "
            f"({facts['fstype'] or 'unknown file system'}, {facts['format']})"
        )
        return RestorePlan(
            target=self.name,
            source=source,
            destination=destination,
            bytes_total=facts["size"],
            replaced=[destination] if info.kind != "missing" else [],
            created=[destination] if info.kind == "missing" else [],
            refusal=refusal,
            details={
                "image_sha256": facts["sha256"],
                "image_format": facts["format"],
                "fs_type": facts["fstype"],
                "needed_bytes": needed,
                "destination_bytes": info.size,
                **({"destination_given": given} if destination != given else {}),
            },
        )

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Stream the image into the destination; return its size and sha256 as received."""
        facts = image_facts(request.snapshot)
        fmt = ImageFormat.for_fstype(facts["fstype"]) if facts["format"] == "pcl" else None
        fmt = fmt or ImageFormat("raw", None, None)
        consumer = fmt.restore(plan.destination, new_file=self.new_file)
        stream = self.engine.write_image(
            request.level, request.repository, request.snapshot, consumer, progress
        )
        plan.details["stream_sha256"] = stream.sha256
        return {
            "bytes_restored": stream.size,
            "stream_sha256": stream.sha256,
            "write_s": round(stream.seconds, 3),
        }

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Image the destination again and compare its sha256 with the one recorded at backup
        time (else with the stream restic gave back, for a snapshot the log does not know)."""
        facts = image_facts(request.snapshot)
        found = self.engine.image_digest(plan.destination, facts, progress)
        expected, method = facts["sha256"], "image sha256 read back from the destination"
        if expected is None:
            expected = plan.details["stream_sha256"]
            method += " against the stream restic restored (no sha256 recorded at backup time)"
        mismatches = []
        if found != expected:
            mismatches.append(
                f"{plan.destination}: image sha256 {found[:16]}... differs from the snapshot's "
                f"{expected[:16]}..."
            )
        return Verification(method, 1, mismatches)


class ImageToDevice(_ImageTarget):
    """Restore an image onto a device (``--device DEV``, or the level's own device)."""

    name = "image-to-device"
    destinations = ("device", "in-place")

    def _destination(self, request: RestoreRequest) -> str:
        if request.destination is not None and not request.destination.startswith("/"):
            raise UsageError(
                f"--device needs a device path like /dev/sdb (got {request.destination!r})"
            )
        destination = request.destination or request.level.device
        if not destination:
            raise UsageError(f"level {request.level.name} has no device; say --device DEV")
        return destination

    def _refusal(self, request: RestoreRequest, info: DeviceInfo, needed: int) -> str | None:
        if info.kind == "missing":
            return f"{info.path} does not exist on {request.machine.name}"
        if info.kind not in ("block", "file"):
            return f"{info.path} is neither a block device nor an image file"
        if info.size is not None and info.size < needed:
            return (
                f"{info.path} is too small for the image: it has {info.size} bytes, the image "
                f"needs {needed} (nothing was written)"
            )
        return None


class ImageToFile(_ImageTarget):
    """Restore an image into a file on the machine (``--to PATH``): a disk image file."""

    name = "image-to-file"
    destinations = ("path",)
    new_file = True

    def _destination(self, request: RestoreRequest) -> str:
        if not request.destination or not request.destination.startswith("/"):
            raise UsageError(
                f"restoring an image to a file needs --to with an absolute path on the machine "
                f"(got {request.destination!r})"
            )
        return request.destination

    def _refusal(self, request: RestoreRequest, info: DeviceInfo, needed: int) -> str | None:
        if info.kind == "block":
            return f"{info.path} is a block device; use --device {info.path}"
        if info.kind == "other":
            return f"{info.path} exists and is not a regular file"
        if not info.parent_exists:
            return f"the folder of {info.path} does not exist on {request.machine.name}"
        return None


@recoverd.hookimpl
def recoverd_add_engines(register: Kind) -> None:
    """Register the ``image`` engine."""
    register.add("image", ImageEngine)


@recoverd.hookimpl
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register the image restore targets."""
    register.add(ImageToDevice.name, ImageToDevice)
    register.add(ImageToFile.name, ImageToFile)
