"""Restore targets for Windows machines: restic files in place or to a folder, and files or
volumes from a Windows Server Backup image (``wbadmin start recovery``).

The restic targets share the plan and the verification of the Linux file targets
(:class:`recoverd_plugins.files_restore.FilesTarget`): the snapshot's files come from
``restic ls``; ``restic restore --verify`` checks what it wrote, or (``--verify full``) their
content comes from ``restic dump`` hashed on the controller. Only the questions put to the
machine differ: which files exist (size, time) and their sha256 (``Get-FileHash``),
asked by a PowerShell script that reads the paths from stdin, one a line (a Windows file name
cannot hold a line break or a tab), so no path is ever part of a command line.

restic for Windows keeps ``C:\\Users\\x`` as ``/C/Users/x`` in a snapshot: restored below a
folder it comes back as ``FOLDER\\C\\Users\\x``; in place it needs restic 0.16 or later.
"""

from __future__ import annotations

import re
from typing import Any

import recoverd
from recoverd import powershell
from recoverd.engine import Outcome, ProgressCallback
from recoverd.errors import EngineError, UsageError
from recoverd.plugins import Kind
from recoverd.restore import RestorePlan, RestoreRequest, RestoreTarget, Verification
from recoverd.transport import CommandRequest, Transport
from recoverd_plugins.files_restore import FilesTarget, NulRecords
from recoverd_plugins.restic import RestoreReport
from recoverd_plugins.wbadmin import WbadminEngine

# For every path on stdin that exists: "FACT<tab>PATH<NUL>" as UTF-8, the path as it was sent
# (the caller looks it up), for a folder one record per file below it. The output goes to the
# raw stdout stream, so neither PowerShell's output encoding nor its line width can change a
# name.
FACTS_SCRIPT = """\
$ErrorActionPreference = 'Stop'
$utf8 = New-Object System.Text.UTF8Encoding $false
$paths = New-Object System.IO.StreamReader([Console]::OpenStandardInput(), $utf8)
$out = [Console]::OpenStandardOutput()
while ($null -ne ($path = $paths.ReadLine())) {
  # .NET, not Get-Item: a plan asks about every file of a snapshot, and the provider is slow.
  $single = [System.IO.File]::Exists($path)
  if ($single) {
    $files = @(New-Object System.IO.FileInfo -ArgumentList $path)
  } elseif ([System.IO.Directory]::Exists($path)) {
    $files = @(Get-ChildItem -LiteralPath $path -Recurse -File -Force)
  } else {
    continue
  }
  foreach ($file in $files) {
    $name = if ($single) { $path } else { $file.FullName }
    $fact = FACT
    $record = $utf8.GetBytes($fact + "`t" + $name + [char]0)
    $out.Write($record, 0, $record.Length)
  }
}
$out.Flush()
"""
STAT_FACT = (
    '[string]$file.Length + "`t" + ([DateTimeOffset]$file.LastWriteTimeUtc).ToUnixTimeSeconds()'
)
HASH_FACT = "(Get-FileHash -LiteralPath $file.FullName -Algorithm SHA256).Hash.ToLowerInvariant()"

SYSTEM_DRIVE_SCRIPT = "[Console]::Out.Write($env:SystemDrive)\n"

WINDOWS_ABSOLUTE = re.compile(r"[A-Za-z]:[\\/]|\\\\[^\\]+\\[^\\]+")
"""A path Windows resolves without a current folder: ``C:\\...`` or ``\\\\server\\share``."""
VOLUME = re.compile(r"[A-Za-z]:\\?")
"""A volume as wbadmin's ``-items`` and ``-recoveryTarget`` take it: ``D:``."""


def windows_path(snapshot_path: str) -> str:
    """Given a path as restic for Windows keeps it (``/C/Users/x``), return ``C:\\Users\\x``."""
    drive, _, rest = snapshot_path.lstrip("/").partition("/")
    return f"{drive}:\\" + rest.replace("/", "\\")


def file_facts(transport: Transport, paths: list[str], fact: str) -> dict[str, str]:
    """Return ``fact`` (:data:`STAT_FACT` or :data:`HASH_FACT`) of every file that exists
    among ``paths`` or below those that are folders, by full path.

    Raise EngineError if the machine cannot answer.
    """
    found: dict[str, str] = {}

    def keep(record: bytes) -> None:
        value, _, path = record.decode("utf-8", "surrogateescape").rpartition("\t")
        found[path] = value

    names = "".join(f"{path}\n" for path in paths).encode("utf-8", "surrogateescape")
    script = FACTS_SCRIPT.replace("FACT", fact, 1)
    outcome = transport.run(
        CommandRequest(powershell.encoded(script), stdin=names, on_stdout=NulRecords(keep))
    )
    if not outcome.ok:
        text = outcome.stderr.decode("utf-8", "replace").strip()
        raise EngineError(f"cannot read files on {transport.machine.name}: {text[-300:]}")
    return found


def system_drive(transport: Transport) -> str:
    """Return the volume Windows runs from (``C:``). Raise EngineError if it cannot be read."""
    outcome = transport.run(CommandRequest(powershell.encoded(SYSTEM_DRIVE_SCRIPT), timeout=60))
    drive = outcome.stdout.decode("utf-8", "replace").strip()
    if not outcome.ok or not VOLUME.fullmatch(drive):
        raise EngineError(f"cannot read the system drive of {transport.machine.name}")
    return drive


class WindowsFilesTarget(FilesTarget):
    """The Linux file targets' plan and verification, with Windows paths and PowerShell."""

    os_families = ("windows",)
    concurrent_commands = False

    def _at(self, root: str, path: str) -> str:  # type: ignore[override]
        """Where ``path`` of the snapshot (``/C/Users/x``) lands below ``root``."""
        if root == "/":
            return windows_path(path)
        return root.rstrip("\\/") + "\\" + path.lstrip("/").replace("/", "\\")

    def _stat(self, paths: list[str]) -> dict[str, tuple[int, int]]:
        """Return size and mtime (seconds) of those ``paths`` that exist on the machine."""
        found = {}
        for path, fact in file_facts(self.engine.transport, paths, STAT_FACT).items():
            size, _, mtime = fact.partition("\t")
            found[path] = (int(size), int(mtime))
        return found

    def _hashes(self, paths: list[str]) -> dict[str, str]:
        """Return the sha256 of those ``paths`` that exist on the machine."""
        return file_facts(self.engine.transport, paths, HASH_FACT)

    def _restore(self, request: RestoreRequest, plan: RestorePlan) -> RestoreReport:
        """Run the restore (mode ``restic``: with restic's check); the sizes are read by
        :meth:`verify`, with PowerShell."""
        return self.engine.restore(
            request.repository,
            request.snapshot.id,
            plan.details["restore_root"],
            verify=request.verify == "restic",
        )


class WindowsFilesInPlace(WindowsFilesTarget):
    """Put a snapshot's files back where they were on a Windows machine (restic 0.16+)."""

    name = "windows-files-in-place"
    destinations = ("in-place",)

    def _root(self, request: RestoreRequest) -> str:
        return "/"

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan; refused when the machine's restic is older than 0.16."""
        plan = super().plan(request)
        plan.refusal = self.engine.windows_in_place_problem()
        return plan

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Restore the snapshot's paths in place, one restic restore per drive."""
        self._report = self.engine.restore_windows_in_place(
            request.repository,
            request.snapshot.id,
            list(request.snapshot.paths),
            verify=request.verify == "restic",
        )
        return {"files_restored": plan.files_total, "bytes_restored": plan.bytes_total}


class WindowsFilesToPath(WindowsFilesTarget):
    """Restore a snapshot's files below a folder of a Windows machine (``--to C:\\Restore``)."""

    name = "windows-files-to-path"
    destinations = ("path",)

    def _root(self, request: RestoreRequest) -> str:
        if not request.destination or not WINDOWS_ABSOLUTE.match(request.destination):
            raise UsageError(
                "--to needs an absolute Windows path on the machine, like C:\\Restore or "
                f"\\\\server\\share (got {request.destination!r})"
            )
        return request.destination


class WindowsImageRecovery(RestoreTarget):
    """Files, folders or volumes from a Windows Server Backup image, on the running system.

    ``--item`` names what to recover: files and folders (``C:\\Users\\x``), or volumes
    (``D:``). Without a destination they go back where they were, overwriting; ``--to FOLDER``
    recovers files and folders into a folder, ``--device E:`` volumes onto another volume.
    """

    name = "windows-image-recovery"
    kinds = ("image",)
    destinations = ("in-place", "path", "device")
    os_families = ("windows",)
    takes_items = True
    engine: WbadminEngine

    def __init__(self, engine: WbadminEngine) -> None:
        super().__init__(engine)
        self._recovered: Outcome | None = None

    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Return the plan: the items, where they go, which files there will be overwritten.

        Raise UsageError if no item is named or items and destination do not fit together.
        """
        items, destination = list(request.items), request.destination
        if not items:
            raise UsageError(
                "say what to recover from the system image with --item: files or folders "
                "(--item 'C:\\Users\\x') or volumes (--item D:); a whole machine is restored "
                "with --bare-metal"
            )
        volumes = [item for item in items if VOLUME.fullmatch(item)]
        if volumes and len(volumes) != len(items):
            raise UsageError("--item takes either volumes (D:) or files and folders, not both")
        item_type = "Volume" if volumes else "File"
        for item in items:
            if not WINDOWS_ABSOLUTE.match(item) and item_type == "File":
                raise UsageError(f"--item needs an absolute Windows path, not {item!r}")
        if destination is not None:
            wrong = (
                VOLUME.fullmatch(destination) is None
                if volumes
                else (WINDOWS_ABSOLUTE.match(destination) is None or VOLUME.fullmatch(destination))
            )
            if wrong:
                expected = (
                    "volumes recover onto a volume like E: (--device)"
                    if volumes
                    else "files and folders recover into a folder like D:\\Restored (--to)"
                )
                raise UsageError(f"{expected}, not {destination!r}")
        refusal = None
        if item_type == "File":
            # wbadmin puts an item into the folder as its last name (C:\Users\x -> FOLDER\x).
            landing = [
                item if destination is None else destination.rstrip("\\/") + "\\" + _leaf(item)
                for item in items
            ]
            where = destination or "their original places"
            replaced = sorted(file_facts(self.engine.transport, landing, STAT_FACT))
        else:
            landing = [destination] if destination else volumes
            where = ", ".join(landing)
            replaced = [where]  # a volume recovery overwrites the whole volume
            system = system_drive(self.engine.transport)
            if any(volume.rstrip("\\").upper() == system.upper() for volume in landing):
                refusal = (
                    f"{system} is the volume Windows runs from on {request.machine.name}: it "
                    "cannot be overwritten while Windows runs; restore the whole machine with "
                    "--bare-metal (through WinRE)"
                )
        return RestorePlan(
            target=self.name,
            source=f"{item_type.lower()}(s) {', '.join(items)} of system image "
            f"{request.snapshot.id}",
            destination=where,
            files_total=len(items),
            replaced=replaced,
            refusal=refusal,
            details={"item_type": item_type, "items": items, "landing": landing},
        )

    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Run ``wbadmin start recovery``; return its counts. Raise EngineError if it failed."""
        self._recovered = self.engine.recover(
            request.repository.url,
            request.snapshot.id,
            plan.details["item_type"],
            plan.details["items"],
            request.destination,
        )
        return {k: v for k, v in self._recovered.stats.items() if k != "duration_s"}

    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Check wbadmin's own count of failed files and that every recovered file or folder
        is at its destination (the image's content cannot be read from here to compare)."""
        mismatches = []
        failed = (self._recovered.stats if self._recovered else {}).get("files_failed", 0)
        if failed:
            mismatches.append(f"wbadmin reports {failed} file(s) that could not be recovered")
        if plan.details["item_type"] == "File":
            present = file_facts(self.engine.transport, plan.details["landing"], STAT_FACT)
            for landing in plan.details["landing"]:
                # Windows names are case-insensitive: compare as the file system does.
                item, below = landing.casefold(), landing.rstrip("\\").casefold() + "\\"
                names = [p.casefold() for p in present]
                if not any(name == item or name.startswith(below) for name in names):
                    mismatches.append(f"{landing}: missing after the recovery")
        return Verification(
            "wbadmin's recovery report; every item present at its destination",
            len(plan.details["items"]),
            mismatches,
        )


def _leaf(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


@recoverd.hookimpl
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register the Windows restore targets."""
    for target in (WindowsFilesInPlace, WindowsFilesToPath, WindowsImageRecovery):
        register.add(target.name, target)
