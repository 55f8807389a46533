"""Restore targets for file snapshots: back in place, or below another path (``--to``).

Both restore with ``restic restore`` on the machine. The plan lists the snapshot's files and
asks the machine which exist already (``stat``), so the engineer sees what will be replaced.
Verification is independent of the restore: the snapshot is read again with
``restic dump --archive tar`` and hashed on the controller, the restored files are hashed on
the machine (``sha256sum``), and every regular file of the snapshot must match.
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
from recoverd.transport import CommandRequest
from recoverd_plugins.restic import ResticEngine


class NulRecords:
    """Feed byte chunks, get NUL-terminated records passed to ``on_record``."""

    def __init__(self, on_record: Callable[[bytes], None]) -> None:
        self._on_record = on_record
        self._rest = b""

    def __call__(self, chunk: bytes) -> None:
        *records, self._rest = (self._rest + chunk).split(b"\0")
        for record in records:
            self._on_record(record)


class FilesTarget(RestoreTarget):
    """What in-place and to-a-path restores share: the plan, restic restore, verification."""

    kinds = ("files",)
    engine: ResticEngine

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
        """Restore the snapshot with restic below the plan's root."""
        if progress is not None:
            progress(Progress(files_total=plan.files_total, bytes_total=plan.bytes_total))
        root = plan.details["restore_root"]
        self.engine.restore_snapshot(request.repository, request.snapshot.id, root)
        return {"files_restored": plan.files_total, "bytes_restored": plan.bytes_total}

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Hash every restored file on the machine and compare with the snapshot's content."""
        root = plan.details["restore_root"]
        snapshot = self._snapshot_hashes(request, plan, progress)
        expected = {self._at(root, path): digest for path, digest in snapshot.items()}
        found = self._hashes(list(expected))
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
