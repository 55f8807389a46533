"""Restore targets for drills (``recoverd verify``): restore into a scratch place, compare, remove.

A drill proves that a backup restores, without touching the machine's data:

- **files**: a random sample of the snapshot's files (``sample``, drawn with a recorded seed) is
  restored with ``restic restore --include ... --verify`` into a fresh temporary folder: only
  the sampled files are read from the repository and written, restic reads each one back and
  compares it with the snapshot's content hashes, and the same remote command reads every
  sampled file's size, which must be the snapshot's (the default check of a files restore, see
  :mod:`recoverd_plugins.files_restore`). The live files are never looked at: they may have
  changed since the backup. On Windows (:class:`WindowsFilesDrill`) the folder is made below
  the machine's temp folder, the files are hashed with PowerShell's ``Get-FileHash`` and
  compared with the snapshot read through ``restic dump --archive tar``.
- **images**: the image is streamed into a file in a fresh temporary folder; the sha256 of the
  stream must equal the one recorded when the image was taken, and the file system check for
  its type (``e2fsck -fn`` for ext2/3/4) must pass.

The scratch folder is removed afterwards, also when the drill fails. ``check_repository`` runs
restic's own ``check --read-data-subset n/N`` with the restic that reached the repository.
"""

from __future__ import annotations

import math
import posixpath
import random
import re
import shlex
from collections.abc import Callable
from typing import Any

import recoverd
from recoverd import powershell
from recoverd.engine import Progress, ProgressCallback
from recoverd.errors import EngineError, RecoverdError
from recoverd.plugins import Kind
from recoverd.restore import RestorePlan, RestoreRequest, RestoreTarget, Verification
from recoverd.streams import StreamDigest
from recoverd.transport import CommandRequest, Transport
from recoverd_plugins.files_restore import FilesTarget, NulRecords, snapshot_hashes
from recoverd_plugins.image import ImageEngine, ImageFormat, image_facts
from recoverd_plugins.restic import LineSplitter, RestoreOutput, RestoreReport, classify_failure

INCLUDES_PER_RESTORE = 500
"""Sampled files named in one ``restic restore`` (its argv must stay well below ARG_MAX)."""

FS_CHECKS = {
    "ext2": ["e2fsck", "-fn"],
    "ext3": ["e2fsck", "-fn"],
    "ext4": ["e2fsck", "-fn"],
    "xfs": ["xfs_repair", "-n"],
    "btrfs": ["btrfs", "check", "--readonly"],
    "vfat": ["fsck.vfat", "-n"],
    "ntfs": ["ntfsfix", "--no-action"],
}
"""File-system type -> the read-only check run on a restored image file (the file last)."""


def sample_size(sample: str, count: int) -> int:
    """Given a level's ``sample`` (``"10%"``, ``"200"``, ``"all"``) and the number of files in
    the snapshot, return how many to restore: at least one of a non-empty snapshot."""
    if sample == "all":
        return count
    if sample.endswith("%"):
        wanted = math.ceil(count * int(sample[:-1]) / 100)
    else:
        wanted = int(sample)
    return min(count, max(1, wanted)) if count else 0


def choose_sample(paths: list[str], sample: str, seed: int) -> list[str]:
    """Return the files of ``paths`` a drill restores, sorted: the same ``paths``, ``sample``
    and ``seed`` always give the same files."""
    ordered = sorted(paths)
    return sorted(random.Random(seed).sample(ordered, sample_size(sample, len(ordered))))


def include_pattern(path: str) -> str:
    """Return a restic ``--include`` pattern that matches ``path`` only: glob characters in
    a file name are written as one-character classes."""
    return re.sub(r"([*?\[])", r"[\1]", path)


# PowerShell for the same steps on a Windows machine. Every value is a literal
# (powershell.literal) or comes on stdin; output is written as UTF-8 bytes, not re-encoded.
WINDOWS_NEW_FOLDER = """$ErrorActionPreference = 'Stop'
$name = 'recoverd-drill.' + [guid]::NewGuid().ToString('N').Substring(0, 8)
$path = Join-Path ([System.IO.Path]::GetTempPath()) $name
New-Item -ItemType Directory -Path $path | Out-Null
[Console]::Out.Write($path)
"""
WINDOWS_REMOVE_FOLDER = """$ErrorActionPreference = 'Stop'
Remove-Item -LiteralPath {path} -Recurse -Force
"""
WINDOWS_FILE_HASHES = """$ErrorActionPreference = 'Stop'
$out = [Console]::OpenStandardOutput()
foreach ($p in [Console]::In.ReadToEnd().Split([char]0)) {
  if ($p -and (Test-Path -LiteralPath $p -PathType Leaf)) {
    $hash = (Get-FileHash -Algorithm SHA256 -LiteralPath $p).Hash.ToLowerInvariant()
    $bytes = [System.Text.Encoding]::UTF8.GetBytes($hash + '  ' + $p + [char]0)
    $out.Write($bytes, 0, $bytes.Length)
  }
}
"""


RESTORE_INTO_NEW_FOLDER = (
    # The folder's path is the first NUL-terminated record on stdout; restic's own lines go to
    # stderr; the paths on stdin (relative: ./home/...) are stat's, not restic's.
    "d=$(mktemp -d -t recoverd-drill.XXXXXXXX) || exit 98\n"
    "printf '%s\\0' \"$d\"\n"
    'restic_ "$@" --target "$d" </dev/null >&2\n'
    "status=$?\n"
    "cd \"$d\" && xargs -0 -r stat --printf '%s\\t%n\\0' -- 2>/dev/null\n"
    'exit "$status"\n'
)
"""``mktemp -d``, ``restic restore ARGS --target`` that folder, then the sizes of the paths on
stdin below it: one remote command."""


class FolderAndSizes:
    """Parse what RESTORE_INTO_NEW_FOLDER prints: the folder, then ``SIZE<tab>PATH`` records."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.sizes: dict[str, int] = {}
        self._records = NulRecords(self._record)

    def __call__(self, chunk: bytes) -> None:
        self._records(chunk)

    def _record(self, record: bytes) -> None:
        text = record.decode("utf-8", "surrogateescape")
        if self.folder is None:
            self.folder = text
            return
        size, _, path = text.partition("\t")
        if size.isdigit():
            self.sizes[path] = int(size)


class ScratchFolder:
    """A new temporary folder on the machine (``mktemp -d``, or on Windows one below
    ``GetTempPath()``), removed with everything in it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.windows = transport.os_family == "windows"
        self.path: str | None = None

    def create(self) -> str:
        """Create the folder and return its path. Raise EngineError if that fails."""
        if self.windows:
            argv = powershell.encoded(WINDOWS_NEW_FOLDER)
        else:
            argv = ["mktemp", "-d", "-t", "recoverd-drill.XXXXXXXX"]
        outcome = self.transport.run(CommandRequest(argv, timeout=60))
        path = outcome.stdout.decode("utf-8", "surrogateescape").strip()
        absolute = re.match(r"[A-Za-z]:\\", path) if self.windows else path.startswith("/")
        if not outcome.ok or not absolute:
            raise EngineError(
                f"cannot create a scratch folder on {self.transport.machine.name}: "
                f"{outcome.stderr.decode('utf-8', 'replace').strip() or outcome.exit_status}"
            )
        self.path = path
        return path

    def remove(self) -> None:
        """Remove the folder and everything in it (nothing if it was never created)."""
        if self.path is None:
            return
        if self.windows:
            script = WINDOWS_REMOVE_FOLDER.format(path=powershell.literal(self.path))
            argv = powershell.encoded(script)
        else:
            argv = ["rm", "-rf", "--", self.path]
        outcome = self.transport.run(CommandRequest(argv, timeout=600))
        if not outcome.ok:
            raise EngineError(
                f"cannot remove the scratch folder {self.path} on "
                f"{self.transport.machine.name}: {outcome.stderr.decode('utf-8', 'replace')}"
            )
        self.path = None


class FilesDrill(FilesTarget):
    """Restore a sample of a files snapshot into a scratch folder and hash-compare it."""

    name = "files-drill"
    destinations = ("scratch",)

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.scratch = ScratchFolder(engine.transport)

    def _root(self, request: RestoreRequest) -> str:
        if self.scratch.path is None:
            raise EngineError("the drill's scratch folder was not created")
        return self.scratch.path

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan: which files of the snapshot the sample restores (nothing is
        written)."""
        nodes = self.engine.ls(request.repository, request.snapshot.id)
        files = {n["path"]: n for n in nodes if n.get("type") == "file"}
        chosen = choose_sample(list(files), request.sample, request.seed)
        return RestorePlan(
            target=self.name,
            source=f"{len(chosen)} of {len(files)} file(s) of {', '.join(request.snapshot.paths)}",
            destination="a scratch folder",
            bytes_total=sum(int(files[p].get("size") or 0) for p in chosen),
            files_total=len(chosen),
            details={
                "files_in_snapshot": len(files),
                "snapshot_bytes": sum(int(n.get("size") or 0) for n in files.values()),
                "sampled": chosen,
                "sizes": {p: int(files[p].get("size") or 0) for p in chosen},
            },
        )

    restic_verifies = True
    """Whether restic's own ``restore --verify`` checks the sample (with a size sweep in the
    same remote command); otherwise the sample is hashed on the machine and compared with the
    snapshot read through ``restic dump``."""

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Restore the sampled files (and only those) into a new scratch folder; a file restic
        cannot restore (a damaged pack) is noted for :meth:`verify`, not fatal."""
        root: str | None = None
        chosen: list[str] = plan.details["sampled"]
        if progress is not None:
            progress(Progress(files_total=plan.files_total, bytes_total=plan.bytes_total))
        whole = len(chosen) == plan.details["files_in_snapshot"]
        batches = [chosen] if whole else [
            chosen[start : start + INCLUDES_PER_RESTORE]
            for start in range(0, len(chosen), INCLUDES_PER_RESTORE)
        ]  # fmt: skip
        failed: list[str] = []
        reports = []
        for batch in batches:
            include = () if whole else tuple(map(include_pattern, batch))
            if not self.restic_verifies:
                root = root or self.scratch.create()
                failed += self.engine.restore_files(
                    request.repository, request.snapshot.id, root, include
                )
                continue
            if root is None:  # one remote command makes the folder, restores, checks sizes
                report = self._restore_into_new_folder(request, include, batch)
                root = self._root(request)
            else:
                report = self.engine.restore(
                    request.repository,
                    request.snapshot.id,
                    root,
                    include=include,
                    verify=True,
                    sizes_of=[self._at(root, p) for p in batch],
                )
            failed += [f"{path}: {problem}" for path, problem in report.failed]
            reports.append(report)
        plan.details["restore_failed"] = failed
        plan.details["restore_reports"] = reports
        return {"files_restored": len(chosen), "bytes_restored": plan.bytes_total}

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Check the restored sample: by restic's ``--verify`` and every sampled file's size,
        or (where restic does not verify) by hashing it on the machine against the snapshot's
        content read from the repository. Name every file that differs, is missing or could
        not be restored."""
        if self.restic_verifies:
            return self._verify_sample(request, plan)
        root = self._root(request)
        chosen: list[str] = plan.details["sampled"]
        read = snapshot_hashes(
            self.engine,
            request.repository,
            request.snapshot,
            plan.details["snapshot_bytes"],
            progress,
            wanted=set(chosen),
        )
        expected, unreadable = dict(read.hashes), {}
        if read.error is not None:
            # The stream broke at a damaged file: read the rest of the sample one by one.
            for path in chosen:
                if path not in expected:
                    try:
                        expected[path] = self._dump_hash(request, path)
                    except RecoverdError as exc:
                        unreadable[path] = str(exc)
        found = self._hashes([self._at(root, p) for p in chosen])
        failed = {}
        for item in plan.details.get("restore_failed", []):
            failed.setdefault(item.split(": ", 1)[0], item)
        mismatches = []
        for path in chosen:
            at = self._at(root, path)
            if path in failed:
                mismatches.append(f"{failed[path]} (restic restore)")
            elif path in unreadable:
                mismatches.append(f"{path}: cannot be read from the repository: {unreadable[path]}")
            elif at not in found:
                mismatches.append(f"{path}: missing after the restore")
            elif found[at] != expected.get(path):
                mismatches.append(f"{path}: sha256 differs from the snapshot")
        method = f"sha256 of {len(chosen)} sampled file(s) against restic dump"
        return Verification(method, len(chosen), mismatches)

    def _restore_into_new_folder(
        self, request: RestoreRequest, include: tuple[str, ...], paths: list[str]
    ) -> RestoreReport:
        """Make the scratch folder, ``restic restore --verify`` into it and read the sizes of
        ``paths`` there, in one remote command (each command costs a round trip); return what
        restic reported, with the sizes. Raise EngineError if restic failed for another
        reason than damaged files."""
        output = RestoreOutput()
        err = LineSplitter(output.line)
        records = FolderAndSizes()
        names = b"".join(b"." + p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
        args = ["restore", request.snapshot.id, "--verify"]
        for pattern in include:
            args += ["--include", pattern]
        outcome = self.engine.run_script(
            request.repository, RESTORE_INTO_NEW_FOLDER, args, on_stdout=records,
            on_stderr=err, data=names,
        )  # fmt: skip
        err.flush()
        if records.folder is not None and records.folder.startswith("/"):
            self.scratch.path = records.folder
        if outcome.exit_status == 98 or self.scratch.path is None:
            raise EngineError(
                f"cannot create a scratch folder on {self.engine.transport.machine.name}: "
                + "; ".join(output.other[-3:])
            )
        report = output.finish()
        report.sizes = {self.scratch.path + p[1:]: n for p, n in records.sizes.items()}
        if not outcome.ok and not (report.failed or report.mismatches):
            outcome.stderr = "\n".join(output.other).encode()
            raise classify_failure(
                outcome, f"restore of {request.snapshot.short_id}", self.engine.program
            )
        return report

    def _verify_sample(self, request: RestoreRequest, plan: RestorePlan) -> Verification:
        """What restic's ``--verify`` found in the sample, and every sampled file present with
        the snapshot's size."""
        root = self._root(request)
        chosen: list[str] = plan.details["sampled"]
        sizes: dict[str, int] = {}
        named: dict[str, str] = {}
        verified = 0
        for report in plan.details["restore_reports"]:
            sizes.update(report.sizes or {})
            for path, problem in report.failed:
                named.setdefault(path, f"{path}: {problem} (restic restore)")
            for path, problem in report.mismatches:
                named.setdefault(path, f"{path}: {problem} (restic --verify)")
            verified += report.verified or 0
        mismatches = []
        for path in chosen:
            at = self._at(root, path)
            problem = named.pop(path, None) or named.pop(at, None)
            if problem is not None:
                mismatches.append(problem)
            elif at not in sizes:
                mismatches.append(f"{path}: missing after the restore")
            elif sizes[at] != plan.details["sizes"][path]:
                mismatches.append(
                    f"{path}: {sizes[at]} bytes, the snapshot has {plan.details['sizes'][path]}"
                )
        mismatches += list(named.values())  # items restic named that are not files sampled
        if not mismatches and verified != len(chosen):
            mismatches.append(f"restic --verify checked {verified} of {len(chosen)} file(s)")
        method = f"restic restore --verify of {len(chosen)} sampled file(s), and their sizes"
        return Verification(method, len(chosen), mismatches)

    def _dump_hash(self, request: RestoreRequest, path: str) -> str:
        digest = StreamDigest()
        self.engine.dump(request.repository, request.snapshot.id, path, digest)
        return digest.sha256

    def cleanup(self, request: RestoreRequest, plan: RestorePlan) -> None:
        """Remove the scratch folder."""
        self.scratch.remove()

    def check_repository(self, request: RestoreRequest, subset: str) -> list[str] | None:
        """Run restic check with ``--read-data-subset subset``; return its problems."""
        return self.engine.check(request.repository, subset)


class WindowsFilesDrill(FilesDrill):
    """A files drill on a Windows machine: restic.exe restores the sample into a folder below
    the machine's temp folder, PowerShell's Get-FileHash hashes it there."""

    name = "files-drill-windows"
    os_families = ("windows",)
    restic_verifies = False  # the size sweep is a POSIX shell command

    @staticmethod
    def _at(root: str, path: str) -> str:
        """Where ``path`` of the snapshot (``/C/Users/x``) lands below ``root``
        (``ROOT\\C\\Users\\x``): restic for Windows recreates it as on POSIX."""
        return root.rstrip("\\") + path.replace("/", "\\")

    def _hash_files(self, paths: list[str], on_stdout: Callable[[bytes], None]) -> None:
        """Hash ``paths`` with Get-FileHash; the paths travel NUL-separated on stdin (a
        command line holds 32,767 characters at most)."""
        names = "".join(f"{p}\0" for p in paths).encode("utf-8", "surrogateescape")
        outcome = self.engine.transport.run(
            CommandRequest(
                powershell.encoded(WINDOWS_FILE_HASHES), stdin=names, on_stdout=on_stdout
            )
        )
        if not outcome.ok:
            raise EngineError(
                f"Get-FileHash on {self.engine.transport.machine.name} failed: "
                f"{outcome.stderr.decode('utf-8', 'replace').strip()[-300:]}"
            )


class ImageDrill(RestoreTarget):
    """Restore an image into a scratch file, compare its sha256 and check its file system."""

    name = "image-drill"
    kinds = ("image",)
    destinations = ("scratch",)
    engine: ImageEngine

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.scratch = ScratchFolder(engine.transport)

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan: the image and what it is checked against (nothing is written)."""
        facts = image_facts(request.snapshot)
        return RestorePlan(
            target=self.name,
            source=f"image {facts['file']} of {request.level.device} ({facts['format']})",
            destination="a scratch file",
            bytes_total=facts["size"],
            files_total=1,
            details={
                "image_sha256": facts["sha256"],
                "image_format": facts["format"],
                "fs_type": facts["fstype"],
            },
        )

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Stream the image into a file in a new scratch folder; keep the stream's sha256."""
        facts = image_facts(request.snapshot)
        fmt = ImageFormat.for_fstype(facts["fstype"]) if facts["format"] == "pcl" else None
        fmt = fmt or ImageFormat("raw", None, None)
        image = posixpath.join(self.scratch.create(), "restored.img")
        plan.details["image_file"] = image
        stream = self.engine.write_image(
            request.level,
            request.repository,
            request.snapshot,
            fmt.restore(image, new_file=True),
            progress,
        )
        plan.details["stream_sha256"] = stream.sha256
        return {"bytes_restored": stream.size, "write_s": round(stream.seconds, 3)}

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Compare the restored stream's sha256 with the recorded one; check the file system.

        A snapshot the log does not know (no sha256 recorded) rests on restic's own content
        hashes and on the file-system check."""
        recorded, found = plan.details["image_sha256"], plan.details["stream_sha256"]
        mismatches = []
        if recorded is not None and found != recorded:
            mismatches.append(
                f"image stream sha256 {found[:16]}... differs from the recorded {recorded[:16]}..."
            )
        fstype = plan.details["fs_type"]
        check = FS_CHECKS.get(fstype or "")
        if check is None:
            plan.details["fs_check"] = f"none for {fstype or 'a raw image'}"
        else:
            argv = [*check, plan.details["image_file"]]
            outcome = self.engine.transport.run(CommandRequest(argv, timeout=3600))
            plan.details["fs_check"] = f"{shlex.join(check)}: exit {outcome.exit_status}"
            if outcome.exit_status == 127:
                mismatches.append(
                    f"{check[0]} is not installed: the {fstype} file system of "
                    "the image could not be checked"
                )
            elif not outcome.ok:
                text = (outcome.stdout + outcome.stderr).decode("utf-8", "replace").strip()
                tail = " / ".join(text.splitlines()[-3:])
                mismatches.append(f"{shlex.join(check)} found problems: {tail}")
        method = "image stream sha256 against the recorded one, and a file-system check"
        if recorded is None:
            method = "a file-system check (no image sha256 recorded for this snapshot)"
        return Verification(method, 1, mismatches)

    def cleanup(self, request: RestoreRequest, plan: RestorePlan) -> None:
        """Remove the scratch folder with the restored image."""
        self.scratch.remove()

    def check_repository(self, request: RestoreRequest, subset: str) -> list[str] | None:
        """Run restic check with ``--read-data-subset subset`` where the images are stored."""
        return self.engine.restic_for(request.level).check(request.repository, subset)


@recoverd.hookimpl
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register the drill targets."""
    register.add(FilesDrill.name, FilesDrill)
    register.add(WindowsFilesDrill.name, WindowsFilesDrill)
    register.add(ImageDrill.name, ImageDrill)
