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

import hashlib
import tarfile
import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import recoverd
from recoverd.engine import Progress, ProgressCallback, Snapshot
from recoverd.errors import EngineError, RecoverdError, UsageError
from recoverd.plugins import Kind
from recoverd.policy.model import Repository
from recoverd.restore import RestorePlan, RestoreRequest, RestoreTarget, Verification
from recoverd.streams import ByteQueue, StreamAborted
from recoverd.transport import CommandRequest, RecordSplitter
from recoverd_plugins.restic import ResticEngine, RestoreReport


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
        if report.verified is not None and report.verified != len(plan.files):
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


class FilesInPlace(FilesTarget):
    """Put the snapshot's files back where they were (restic restore --target /)."""

    name = "files-in-place"
    destinations = ("in-place",)

    def _root(self, request: RestoreRequest) -> str:
        return "/"


class FilesToPath(FilesTarget):
    """Restore the snapshot's files below another folder (``--to PATH``), full paths kept."""

    name = "files-to-path"
    destinations = ("path",)

    def _root(self, request: RestoreRequest) -> str:
        if not request.destination or not request.destination.startswith("/"):
            raise UsageError(f"--to needs an absolute path on the machine: {request.destination}")
        return request.destination


@recoverd.hookimpl
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register the file restore targets."""
    register.add(FilesInPlace.name, FilesInPlace)
    register.add(FilesToPath.name, FilesToPath)
