"""Restore targets for file snapshots: back in place, or below another path (``--to``).

Both restore with ``restic restore`` on the machine. The plan lists the snapshot's files and
asks the machine which exist already (``stat``), so the engineer sees what will be replaced.
Verification has two modes (``--verify``, see :data:`recoverd.restore.VERIFY_MODES`):

- ``restic`` (the default): the restore runs as ``restic restore --verify``, which reads every
  restored file back and compares it with the snapshot's content hashes; the same remote
  command then reads the size of every file of the snapshot at its destination, and each must
  be there with the size the snapshot lists.
- ``full``: independent of the restore tool's own check. The snapshot is read again with
  ``restic dump --archive tar`` and hashed on the controller while the machine hashes the
  restored files (``sha256sum``); every regular file of the snapshot must match.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tarfile
import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import recoverd
from recoverd.engine import Progress, ProgressCallback, Snapshot
from recoverd.errors import EngineError, RecoverdError, RestoreRefused, UsageError
from recoverd.plugins import Kind
from recoverd.policy.model import Repository
from recoverd.restore import RestorePlan, RestoreRequest, RestoreTarget, Verification
from recoverd.streams import ByteQueue, StreamAborted
from recoverd.transport import CommandRequest, RecordSplitter
from recoverd_plugins.restic import (
    OVERWRITE_VERSION,
    PATH_FACTS,
    ResticEngine,
    RestoreReport,
    include_pattern,
)


class NulRecords(RecordSplitter):
    """Feed byte chunks, get NUL-terminated records passed to ``on_record`` (each cut to
    :data:`~recoverd.transport.MAX_RECORD` bytes at most)."""

    def __init__(self, on_record: Callable[[bytes], None]) -> None:
        super().__init__(on_record, b"\0")


class FilesTarget(RestoreTarget):
    """What in-place and to-a-path restores share: the plan, restic restore, verification."""

    kinds = ("files",)
    verify_modes = ("restic", "full")
    engine: ResticEngine
    concurrent_commands = True
    """Whether the transport runs two commands at once (the ``full`` verification hashes on
    the machine while it reads the snapshot); WinRM runs one at a time."""

    def __init__(self, engine: ResticEngine) -> None:
        super().__init__(engine)
        self._report: RestoreReport | None = None

    @abstractmethod
    def _root(self, request: RestoreRequest) -> str:
        """Return the folder restic restores below (``/``: the original paths)."""

    @staticmethod
    def _at(root: str, path: str) -> str:
        """Where ``path`` of the snapshot lands below ``root``."""
        return path if root == "/" else root.rstrip("/") + path

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan: the snapshot's files, which exist now, which will be replaced."""
        root = self._root(request)
        nodes = self.engine.ls(request.repository, request.snapshot.id)
        files = {self._at(root, n["path"]): n for n in nodes if n.get("type") == "file"}
        existing = self._stat(list(files))
        created, replaced, unchanged = [], [], 0
        for path, node in files.items():
            if path not in existing:
                created.append(path)
            elif existing[path] == (node.get("size", 0), _seconds(node.get("mtime"))):
                unchanged += 1
            else:
                replaced.append(path)
        size = sum(int(n.get("size") or 0) for n in files.values())
        return RestorePlan(
            target=self.name,
            source=f"{len(files)} file(s) of {', '.join(request.snapshot.paths)}",
            destination=root if root != "/" else "their original paths",
            bytes_total=size,
            files_total=len(files),
            created=created,
            replaced=replaced,
            unchanged=unchanged,
            details={"restore_root": root},
            files={path: int(node.get("size") or 0) for path, node in files.items()},
        )

    def _stat(self, paths: list[str]) -> dict[str, tuple[int, int]]:
        """Return size and mtime (seconds) of those ``paths`` that exist on the machine."""
        found: dict[str, tuple[int, int]] = {}

        def keep(record: bytes) -> None:
            size, mtime, path = record.decode("utf-8", "surrogateescape").split("\t", 2)
            found[path] = (int(size), int(mtime))

        self._each_path(["stat", "--printf", "%s\\t%Y\\t%n\\0", "--"], paths, NulRecords(keep))
        return found

    def _hashes(self, paths: list[str]) -> dict[str, str]:
        """Return the sha256 of those ``paths`` that exist on the machine."""
        found: dict[str, str] = {}

        def keep(record: bytes) -> None:
            text = record.decode("utf-8", "surrogateescape")
            found[text[66:]] = text[:64]  # "HASH  NAME"; -z prints names unescaped

        self._hash_files(paths, NulRecords(keep))
        return found

    def _hash_files(self, paths: list[str], on_stdout: Callable[[bytes], None]) -> None:
        """Hash those ``paths`` that exist on the machine; write ``HASH  NAME`` records, each
        ending in a NUL, to ``on_stdout`` (what ``sha256sum -z`` prints)."""
        self._each_path(["sha256sum", "-z", "--"], paths, on_stdout)

    def _each_path(
        self, command: list[str], paths: list[str], on_stdout: Callable[[bytes], None]
    ) -> None:
        """Run ``command PATH...`` on the machine for all ``paths`` (NUL-separated through
        xargs: any file name is safe). Files that do not exist are left out of the output."""
        names = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
        outcome = self.engine.transport.run(
            CommandRequest(["xargs", "-0", "-r", *command], stdin=names, on_stdout=on_stdout)
        )
        # xargs exits 123 when the command failed for some paths (missing files): expected.
        if outcome.exit_status not in (0, 123):
            raise EngineError(
                f"{command[0]} on {self.engine.transport.machine.name} failed: "
                f"{outcome.stderr.decode('utf-8', 'replace').strip()[-300:]}"
            )

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Restore the snapshot with restic below the plan's root (``--verify`` mode
        ``restic``: restic checks what it wrote, in the same command)."""
        if progress is not None:
            progress(Progress(files_total=plan.files_total, bytes_total=plan.bytes_total))
        self._report = self._restore(request, plan)
        self._report.raise_for_failed(request.snapshot.short_id)
        return {"files_restored": plan.files_total, "bytes_restored": plan.bytes_total}

    def _restore(self, request: RestoreRequest, plan: RestorePlan) -> RestoreReport:
        """Run the restore; in mode ``restic`` with restic's check and the size sweep."""
        checked = request.verify == "restic"
        return self.engine.restore(
            request.repository,
            request.snapshot.id,
            plan.details["restore_root"],
            verify=checked,
            sizes_of=list(plan.files) if checked else None,
        )

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Compare the restored files with the snapshot the way ``request.verify`` says.

        A restore cut short has no restic check to report: its files are compared in full.
        """
        if request.verify == "full" or self._report is None:
            return self._verify_full(request, plan, progress)
        return self._verify_restic(plan, self._report)

    def _verify_restic(self, plan: RestorePlan, report: RestoreReport) -> Verification:
        """What restic's ``--verify`` found, and every file of the snapshot present at its
        destination with the snapshot's size."""
        sizes = report.sizes
        if sizes is None:
            sizes = {path: size for path, (size, _mtime) in self._stat(list(plan.files)).items()}
        named = {path for path, _problem in report.mismatches}
        mismatches = [f"{path}: {problem} (restic --verify)" for path, problem in report.mismatches]
        for path, size in plan.files.items():
            if path in named:
                continue
            if path not in sizes:
                mismatches.append(f"{path}: missing after the restore")
            elif sizes[path] != size:
                mismatches.append(f"{path}: {sizes[path]} bytes, the snapshot has {size}")
        # restic 0.17+ leaves a file at the destination whose content it read and found right,
        # and --verify checks only what it wrote; 0.14-0.16 write and check every file.
        version = report.version or self.engine.version()
        skips = version >= OVERWRITE_VERSION
        if report.verified is not None and (
            report.verified > len(plan.files) or (report.verified < len(plan.files) and not skips)
        ):
            mismatches.append(
                f"restic --verify checked {report.verified} of the snapshot's "
                f"{len(plan.files)} file(s)"
            )
        method = "restic restore --verify; every file present with the snapshot's size"
        return Verification(method, len(plan.files), mismatches)

    def _verify_full(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Hash every restored file on the machine and compare with the snapshot's content,
        read again from the repository; both run at once where the transport allows."""
        root = plan.details["restore_root"]
        found: dict[str, str] = {}
        failure: list[BaseException] = []

        def hash_restored() -> None:
            try:
                found.update(self._hashes(list(plan.files)))
            except BaseException as exc:
                failure.append(exc)

        hasher = threading.Thread(target=hash_restored, name="files-hash", daemon=True)
        if self.concurrent_commands and plan.files:
            hasher.start()
        try:
            snapshot = self._snapshot_hashes(request, plan, progress)
        finally:
            if hasher.is_alive():
                hasher.join()
        expected = {self._at(root, path): digest for path, digest in snapshot.items()}
        if failure:
            raise failure[0]
        if hasher.ident is None:  # not started: hash now, the files the snapshot holds
            found.update(self._hashes(list(expected)))
        mismatches = []
        for path, digest in expected.items():
            if path not in found:
                mismatches.append(f"{path}: missing after the restore")
            elif found[path] != digest:
                mismatches.append(f"{path}: sha256 differs from the snapshot")
        return Verification("sha256 of every file against restic dump", len(expected), mismatches)

    def _snapshot_hashes(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, str]:
        """Return path -> sha256 of every regular file in the snapshot, read from the
        repository as a tar stream (``restic dump``) and hashed on the controller."""
        read = snapshot_hashes(
            self.engine, request.repository, request.snapshot, plan.bytes_total, progress
        )
        if read.error is not None:
            raise read.error
        return read.hashes


@dataclass
class SnapshotHashes:
    """The sha256 of a snapshot's files as read from the repository, and the error that
    stopped the reading early (None when every file was read)."""

    hashes: dict[str, str]
    error: RecoverdError | None = None


def snapshot_hashes(
    engine: ResticEngine,
    repository: Repository,
    snapshot: Snapshot,
    bytes_total: int | None,
    progress: ProgressCallback | None,
    wanted: set[str] | None = None,
) -> SnapshotHashes:
    """Return path -> sha256 of the regular files of ``snapshot`` (only those in ``wanted``,
    if given), read with ``restic dump --archive tar`` through ``engine`` and hashed on the
    controller. A stream that breaks (a damaged pack file) ends the reading: the result holds
    the files read so far and the error.

    Raise TransportError if the machine cannot be reached.
    """
    chunks = ByteQueue()
    dumped: dict[str, BaseException] = {}
    seen = [0]

    def put(chunk: bytes) -> None:
        chunks.put(chunk)
        seen[0] += len(chunk)
        if progress is not None:
            # tar headers make the stream a little longer than the files themselves.
            done = min(seen[0], bytes_total or seen[0])
            progress(Progress(bytes_done=done, bytes_total=bytes_total))

    def dump() -> None:
        try:
            engine.dump(repository, snapshot.id, "/", put, archive="tar")
        except StreamAborted:
            pass  # the reader failed; its own error is raised below
        except BaseException as exc:
            dumped["error"] = exc
        finally:
            chunks.close()

    writer = threading.Thread(target=dump, name="files-dump", daemon=True)
    writer.start()
    hashes: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=chunks, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                path = "/" + member.name.lstrip("/")
                if not member.isfile() or (wanted is not None and path not in wanted):
                    continue
                content = archive.extractfile(member)
                digest = hashlib.file_digest(content, "sha256")  # type: ignore[arg-type]
                hashes[path] = digest.hexdigest()
        while chunks.read(1 << 16):  # the archive's end padding
            pass
    except tarfile.TarError as exc:
        chunks.abort()
        writer.join()
        error = dumped.get("error")
        if isinstance(error, RecoverdError):
            return SnapshotHashes(hashes, error)
        if error is not None:
            raise error from None
        broken = EngineError(f"cannot read snapshot {snapshot.short_id}: {exc}")
        return SnapshotHashes(hashes, broken)
    except BaseException:
        chunks.abort()
        writer.join()
        raise
    writer.join()
    error = dumped.get("error")
    if error is not None and not isinstance(error, RecoverdError):
        raise error
    return SnapshotHashes(hashes, error)  # type: ignore[arg-type]


def _seconds(iso_text: str | None) -> int | None:
    if not iso_text:
        return None
    return int(datetime.fromisoformat(iso_text).timestamp())


FIND_TYPES = {
    "file": "f",
    "dir": "d",
    "symlink": "l",
    "dev": "b",
    "chardev": "c",
    "fifo": "p",
    "socket": "s",
}
"""restic's node types as find's ``%y`` prints them."""
TYPE_NAMES = {
    "f": "file",
    "d": "folder",
    "l": "symbolic link",
    "b": "block device",
    "c": "character device",
    "p": "fifo",
    "s": "socket",
}
GO_MODE_BITS = ((1 << 23, 0o4000), (1 << 22, 0o2000), (1 << 20, 0o1000))
"""Go's setuid, setgid and sticky bits (restic's ``mode``) and their POSIX values."""
LISTED = 20
"""Paths of one kind (links found) a record names at most."""


@dataclass(frozen=True)
class PathFacts:
    """What a path is on the machine now (its own facts: a symlink is not followed)."""

    type: str
    """find's ``%y``: ``f`` file, ``d`` folder, ``l`` symlink, ``b``/``c``/``p``/``s``."""
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    target: str
    """A symlink's target; empty for anything else."""


def parse_facts(output: bytes) -> dict[str, PathFacts]:
    """Given :data:`PATH_FACTS` output, return the facts by path."""
    fields = output.split(b"\0")
    found = {}
    for at in range(0, len(fields) - 1, 2):
        text = fields[at].decode("utf-8", "surrogateescape")
        kind, size, mtime, mode, uid, gid, path = text.split("\t", 6)
        target = fields[at + 1].decode("utf-8", "surrogateescape")
        found[path] = PathFacts(
            kind, int(size), _ns(mtime), int(mode, 8), int(uid), int(gid), target
        )
    return found


def _ns(seconds: str) -> int:
    """Given seconds since the epoch with a fraction (``1733283316.109825852``), return
    nanoseconds, exactly."""
    whole, _, fraction = seconds.partition(".")
    return int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])


ISO_TIME = re.compile(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def _iso_ns(text: str | None) -> int | None:
    """Given restic's RFC 3339 time with nanoseconds, return nanoseconds since the epoch."""
    found = ISO_TIME.fullmatch(text or "")
    if found is None:
        return None
    whole = _epoch(found[1], "+00:00" if found[3] == "Z" else found[3])
    return whole * 1_000_000_000 + int(((found[2] or "") + "000000000")[:9])


@functools.lru_cache(maxsize=4096)
def _epoch(seconds: str, zone: str) -> int:
    """Seconds since the epoch of an ISO time without fraction (files of a tree share many)."""
    return int(datetime.fromisoformat(seconds + zone).timestamp())


def posix_mode(go_mode: int) -> int:
    """Given restic's (Go's) file mode, return the POSIX permission bits (``0o4755``)."""
    mode = go_mode & 0o777
    for go_bit, bit in GO_MODE_BITS:
        if go_mode & go_bit:
            mode |= bit
    return mode


def ancestors(path: str) -> list[str]:
    """Return the folders above ``path`` and ``path`` itself, outermost first, without ``/``."""
    parts = [part for part in path.split("/") if part]
    return ["/" + "/".join(parts[: n + 1]) for n in range(len(parts))]


def checked_destination(destination: str | None) -> str:
    """Given ``--to``, return it without ``.`` components, doubled or trailing slashes.

    Raise UsageError unless it is an absolute path without ``..``: a restore must land at or
    below the path it names (restic itself would resolve ``/x/../..`` to ``/``).
    """
    if not destination or not destination.startswith("/"):
        raise UsageError(
            f"--to needs an absolute path on the machine, like /srv/restored (got {destination!r})"
        )
    parts = destination.split("/")
    if ".." in parts:
        raise UsageError(f"--to must not contain '..' (got {destination!r}): name the folder")
    if any(ord(c) < 32 or c == "\x7f" for c in destination):
        raise UsageError(f"--to contains a control character: {destination!r}")
    return "/" + "/".join(part for part in parts if part not in ("", "."))


@dataclass
class Work:
    """What the write step does, as the plan worked it out (kept out of the record)."""

    includes: list[str] | None = field(default_factory=list)
    """restic ``--include`` patterns; None: the whole snapshot."""
    remove: list[str] = field(default_factory=list)
    """Files and symlinks (never folders) removed before restic writes their replacement."""
    no_links: list[str] = field(default_factory=list)
    """Paths that must not be symbolic links when the write starts."""
    files_written: int = 0
    bytes_written: int = 0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every node of the snapshot by its destination."""
    targets: dict[str, str] = field(default_factory=dict)
    """Symlink targets in the snapshot, where they were looked up, by destination."""
    owners: bool = False
    """Whether owners count as a difference (the machine runs the restore as root)."""
    matched: set[str] = field(default_factory=set)
    """Destinations that matched the snapshot when planned (left alone, not looked at after
    the write)."""


class PosixFilesTarget(FilesTarget):
    """Files back onto a Linux machine, in place or below a folder: written only where the
    machine differs from the snapshot, and never through a symbolic link.

    The plan reads the facts of every path the restore would write, and of the folders above
    the destination, in one command on the machine (:data:`PATH_FACTS`). A symbolic link where
    the snapshot has a folder (a write would land wherever it points) stops the restore unless
    ``--replace-links``. The write step checks again in the command that runs restic, removes
    what is replaced (restic 0.14 cannot replace a symlink, and writes a file through one) and
    restores exactly what is missing or differs (``--include``), the same on every restic.
    """

    leaves_unchanged = True

    def __init__(self, engine: ResticEngine) -> None:
        super().__init__(engine)
        self._work = Work()

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan: what is created, replaced and left alone; refused for a symlink
        where the snapshot has a folder (or above ``--to``), or a folder where it has none."""
        root = self._root(request)
        nodes = self.engine.ls(request.repository, request.snapshot.id)
        work = self._work = Work(nodes={self._at(root, n["path"]): n for n in nodes})
        above = ancestors(root)
        facts, work.owners = self._facts([*above, *work.nodes])
        created: list[str] = []
        replaced: list[str] = []
        links: list[str] = []
        refusals: list[str] = []
        unchanged = 0
        # Folders restored whole (missing, or a symlink replaced by one): what is below needs
        # no pattern of its own, and the machine's facts there (through a link) mean nothing.
        covered: set[str] = set()

        def below_covered(path: str) -> bool:
            return bool(covered) and any(folder in covered for folder in ancestors(path)[:-1])

        for path in above:
            fact = facts.get(path)
            if fact is None:
                break
            if fact.type == "l":
                links.append(f"{path} -> {fact.target}")
                work.remove.append(path)
                covered.add(path)
                break
            if fact.type != "d":
                refusals.append(f"{path} is a {TYPE_NAMES[fact.type]}, not a folder")
                break
            work.no_links.append(path)
        same_links: list[str] = []
        for path, node in work.nodes.items():
            kind = FIND_TYPES.get(str(node.get("type")), "?")
            fact = None if below_covered(path) else facts.get(path)
            if fact is None:
                if kind != "d":
                    created.append(path)
                    self._count(work, node)
                if not below_covered(path):
                    work.no_links.append(path)
                    self._include(work, node)
                    if kind == "d":
                        covered.add(path)
            elif kind == "d" and fact.type == "d":
                work.no_links.append(path)
                work.matched.add(path)
            elif kind == "d":  # a symlink or a file where the snapshot has a folder
                if fact.type == "l":
                    links.append(f"{path} -> {fact.target}")
                else:
                    replaced.append(path)
                work.remove.append(path)
                covered.add(path)
                self._include(work, node)
            elif fact.type == "d":
                refusals.append(
                    f"{path} is a folder where the snapshot has a {TYPE_NAMES.get(kind, kind)}"
                )
            elif kind == "l" and fact.type == "l":
                same_links.append(path)
            elif self._same(node, fact, kind, work.owners):
                unchanged += 1
                work.matched.add(path)
            else:
                replaced.append(path)
                # restic overwrites a file with a file; anything else (a symlink above all:
                # restic 0.14 cannot replace one, and would write a file through it) goes first.
                self._replace(work, path, node, remove=not (kind == fact.type == "f"))
        if same_links:
            work.targets = self._link_targets(request, root, same_links)
            for path in same_links:
                if work.targets.get(path) == facts[path].target:
                    unchanged += 1
                    work.matched.add(path)
                else:
                    replaced.append(path)
                    self._replace(work, path, work.nodes[path])
        refusal = None
        if refusals:
            refusal = (
                f"{len(refusals)} path(s) cannot be restored: {'; '.join(refusals[:5])}"
                f"{' ...' if len(refusals) > 5 else ''}; move them away, then restore again"
            )
        elif links and not request.replace_links:
            refusal = (
                f"{len(links)} symbolic link(s) where the snapshot has a folder (a restore "
                f"would write through them): {'; '.join(links[:5])}"
                f"{' ...' if len(links) > 5 else ''}; remove or rename them, or pass "
                "--replace-links to replace them with the snapshot's folders"
            )
        if unchanged == 0:
            work.includes = None  # everything is written: one plain restore of it all
        files = {p: int(n.get("size") or 0) for p, n in work.nodes.items() if n["type"] == "file"}
        details: dict[str, Any] = {"restore_root": root}
        if links:
            details["links_found"] = links[:LISTED]
        return RestorePlan(
            target=self.name,
            source=f"{len(files)} file(s) of {', '.join(request.snapshot.paths)}",
            destination=root if root != "/" else "their original paths",
            bytes_total=sum(files.values()),
            files_total=len(files),
            created=created,
            replaced=replaced,
            unchanged=unchanged,
            refusal=refusal,
            details=details,
            files=files,
        )

    @staticmethod
    def _count(work: Work, node: dict[str, Any]) -> None:
        if node.get("type") == "file":
            work.files_written += 1
            work.bytes_written += int(node.get("size") or 0)

    @staticmethod
    def _include(work: Work, node: dict[str, Any]) -> None:
        assert work.includes is not None
        work.includes.append(include_pattern(str(node["path"])))

    def _replace(self, work: Work, path: str, node: dict[str, Any], remove: bool = True) -> None:
        """Plan to restore ``node`` at ``path``, removing what is there first (``remove``)."""
        if remove:
            work.remove.append(path)
        else:
            work.no_links.append(path)
        self._count(work, node)
        self._include(work, node)

    @staticmethod
    def _same(node: dict[str, Any], fact: PathFacts, kind: str, owners: bool) -> bool:
        """Whether ``fact`` on the machine matches the snapshot's ``node`` (not a symlink):
        type, mode, owners (when they count), and for a file its size and mtime."""
        if fact.type != kind or fact.mode != posix_mode(int(node.get("mode") or 0)):
            return False
        if owners and (fact.uid, fact.gid) != (node.get("uid"), node.get("gid")):
            return False
        if kind != "f":
            return True
        return fact.size == int(node.get("size") or 0) and fact.mtime_ns == _iso_ns(
            node.get("mtime")
        )

    def _facts(self, paths: list[str]) -> tuple[dict[str, PathFacts], bool]:
        """Return the facts of those ``paths`` that exist on the machine, and whether the
        machine's user is root; one command for them all."""
        names = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
        outcome = self.engine.transport.run(
            CommandRequest(
                ["sh", "-c", f'id -u; printf "\\0"; {PATH_FACTS} 2>/dev/null; true'],
                stdin=names,
            )
        )
        uid, _, rest = outcome.stdout.partition(b"\0")
        if not outcome.ok or not uid.strip().isdigit():
            raise EngineError(
                f"cannot read the restore's paths on {self.engine.transport.machine.name}: "
                f"{outcome.stderr.decode('utf-8', 'replace').strip()[-300:]}"
            )
        return parse_facts(rest), int(uid) == 0

    def _link_targets(self, request: RestoreRequest, root: str, paths: list[str]) -> dict[str, str]:
        """Return the snapshot's target of the symlinks at ``paths`` (destinations)."""
        inside = {p if root == "/" else p[len(root.rstrip("/")) :]: p for p in paths}
        targets = self.engine.link_targets(request.repository, request.snapshot.id, list(inside))
        return {inside[path]: target for path, target in targets.items()}

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Restore what the plan found missing or different, after checking that no path it
        relies on became a symlink; in mode ``restic`` restic checks what it wrote."""
        if plan.refusal:
            raise RestoreRefused(f"restore refused: {plan.refusal}")
        work = self._work
        if progress is not None:
            progress(Progress(files_total=work.files_written, bytes_total=work.bytes_written))
        self._report = self.engine.restore_selected(
            request.repository,
            request.snapshot.id,
            plan.details["restore_root"],
            includes=work.includes,
            remove=work.remove,
            no_links=work.no_links,
            facts_of=[path for path in work.nodes if path not in work.matched],
            verify=request.verify == "restic",
        )
        self._report.raise_for_failed(request.snapshot.short_id)
        return {
            "files_restored": work.files_written,
            "bytes_restored": work.bytes_written,
            "files_unchanged": plan.unchanged,
            "links_replaced": len(plan.details.get("links_found", [])),
        }

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Compare the destination with the snapshot: every node there with its type (files
        with their size and mode, symlinks with their target where known), plus restic's
        check of what it wrote (mode ``restic``) or a sha256 of every file (mode ``full``)."""
        report = self._report
        if report is not None and report.facts is not None:
            # What was written, read right after; the rest matched when the plan read it.
            facts = parse_facts(report.facts)
            mismatches = self._structure(facts, skip=self._work.matched)
        else:
            facts, _root = self._facts(list(self._work.nodes))
            mismatches = self._structure(facts, skip=set())
        if request.verify == "full" or report is None:
            full = self._verify_full(request, plan, progress)
            listed = set(mismatches)
            mismatches += [m for m in full.mismatches if m not in listed]
            return Verification(full.method + "; every path's type", full.checked, mismatches)
        mismatches += [
            f"{path}: {problem} (restic --verify)" for path, problem in report.mismatches
        ]
        written = self._work.files_written
        # restic 0.17+ leaves a file whose content is right already (a mode or owner differs)
        # and checks only what it wrote; its read of the file decided. 0.14 writes them all.
        skips = report.version is not None and report.version >= OVERWRITE_VERSION
        if report.verified is not None and (
            report.verified > written or (report.verified < written and not skips)
        ):
            mismatches.append(
                f"restic --verify checked {report.verified} of the {written} file(s) restored"
            )
        method = (
            "restic restore --verify of what was written; every path written present with the "
            "snapshot's type, files with its size and mode (the others matched when planned)"
        )
        return Verification(method, len(plan.files), mismatches)

    def _structure(self, facts: dict[str, PathFacts], skip: set[str]) -> list[str]:
        """Return how the paths at the destination (but ``skip``) differ from the snapshot."""
        mismatches = []
        for path, node in self._work.nodes.items():
            if path in skip:
                continue
            kind = FIND_TYPES.get(str(node.get("type")), "?")
            fact = facts.get(path)
            if fact is None:
                mismatches.append(f"{path}: missing after the restore")
            elif fact.type != kind:
                mismatches.append(
                    f"{path}: a {TYPE_NAMES.get(fact.type, fact.type)}, the snapshot has a "
                    f"{TYPE_NAMES.get(kind, kind)}"
                )
            elif kind == "f" and fact.size != int(node.get("size") or 0):
                mismatches.append(f"{path}: {fact.size} bytes, the snapshot has {node.get('size')}")
            elif kind == "f" and fact.mode != posix_mode(int(node.get("mode") or 0)):
                mismatches.append(
                    f"{path}: mode {fact.mode:o}, the snapshot has "
                    f"{posix_mode(int(node.get('mode') or 0)):o}"
                )
            elif kind == "l" and path in self._work.targets:
                if fact.target != self._work.targets[path]:
                    mismatches.append(
                        f"{path}: links to {fact.target!r}, the snapshot to "
                        f"{self._work.targets[path]!r}"
                    )
        return mismatches


class FilesInPlace(PosixFilesTarget):
    """Put the snapshot's files back where they were (restic restore --target /)."""

    name = "files-in-place"
    destinations = ("in-place",)

    def _root(self, request: RestoreRequest) -> str:
        return "/"


class FilesToPath(PosixFilesTarget):
    """Restore the snapshot's files below another folder (``--to PATH``), full paths kept."""

    name = "files-to-path"
    destinations = ("path",)

    def _root(self, request: RestoreRequest) -> str:
        return checked_destination(request.destination)


@recoverd.hookimpl
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register the file restore targets."""
    register.add(FilesInPlace.name, FilesInPlace)
    register.add(FilesToPath.name, FilesToPath)
