"""The ``wbadmin`` engine: system images of Windows machines with Windows Server Backup.

A backup runs ``wbadmin start backup -backupTarget:TARGET -allCritical|-include:... -quiet`` on
the machine; the target is the level's ``target`` (a drive such as ``E:`` or a share such as
``\\\\nas\\wsb``). wbadmin documents no exit codes and prints localized text, so the result is
read from the Windows Server Backup cmdlets (``Get-WBJob`` / ``Get-WBSummary``) where they exist,
and only otherwise from wbadmin's English text and exit code.

Restores of volumes and files run ``wbadmin start recovery`` on the live system; a bare-metal
restore runs only inside the Windows Recovery Environment, so :meth:`WbadminEngine.bare_metal_steps`
writes out the exact steps for the engineer.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from datetime import datetime
from typing import Any

import recoverd
from recoverd import powershell
from recoverd.engine import (
    BackupRequest,
    Engine,
    Outcome,
    Progress,
    ProgressCallback,
    Snapshot,
)
from recoverd.errors import EngineError, ToolMissing, UsageError
from recoverd.policy.model import Level, Machine, Repository
from recoverd.secrets import redact
from recoverd.transport import CommandOutcome, CommandRequest
from recoverd_plugins.restic import LineSplitter

ALL_CRITICAL = "all-critical"
"""The ``device`` value that images every volume needed to boot (bare-metal capable)."""

SUCCESS_TEXT = "The backup operation successfully completed."
RECOVERY_TEXT = "The recovery operation completed."
MAX_MESSAGE = 400
MAX_TEXT_LINES = 2000
"""Lines of wbadmin's output kept to find why it failed (the last ones)."""

# One JSON object about the last backup job and the machine's backups, or an error (exit 1)
# where the Windows Server Backup cmdlets are not installed (client Windows, no feature tools).
LAST_JOB_SCRIPT = """\
$ErrorActionPreference = 'Stop'
$job = Get-WBJob -Previous 1
$summary = Get-WBSummary
[ordered]@{
  JobState = [string]$job.JobState
  HResult = $job.HResult
  DetailedHResult = $job.DetailedHResult
  ErrorDescription = $job.ErrorDescription
  StartTime = $job.StartTime.ToUniversalTime().ToString('o')
  EndTime = $job.EndTime.ToUniversalTime().ToString('o')
  NumberOfVersions = $summary.NumberOfVersions
  LastSuccessfulBackupTime = $summary.LastSuccessfulBackupTime.ToUniversalTime().ToString('o')
  LastBackupTarget = $summary.LastBackupTarget
} | ConvertTo-Json -Compress
"""


def is_share(target: str) -> bool:
    """Return True if a wbadmin target is a network share (``\\\\server\\share``)."""
    return target.startswith(("\\\\", "//"))


def include_args(device: str | None) -> list[str]:
    """Given a Windows image level's ``device``, return wbadmin's volume selection.

    ``all-critical`` selects every volume Windows needs to boot; otherwise ``device`` lists
    volumes (``C:, D:``). Raise UsageError if it names none.
    """
    if (device or "").strip().lower() == ALL_CRITICAL:
        return ["-allCritical"]
    volumes = [v.strip() for v in (device or "").split(",") if v.strip()]
    if not volumes:
        raise UsageError(f"device must be {ALL_CRITICAL!r} or volumes like 'C:, D:'")
    return [f"-include:{','.join(volumes)}"]


def parse_versions(text: str) -> list[dict[str, str]]:
    """Given ``wbadmin get versions`` output, return one dict per backup, oldest first.

    Keys are the English field names (``Backup time``, ``Backup location`` or, on older builds,
    ``Backup target``, ``Version identifier``, ``Can recover``).
    """
    versions: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip()
        if name == "Backup time" and current:
            versions.append(current)
            current = {}
        if name in ("Backup time", "Backup location", "Backup target", "Version identifier"):
            current[name] = value.strip()
        elif name == "Can recover":
            current[name] = value.strip()
    if current:
        versions.append(current)
    return [v for v in versions if "Version identifier" in v]


def failure_reason(text: str) -> str:
    """Given wbadmin's output, return what went wrong in its own words."""
    detailed = re.findall(r"^Detailed error:\s*(.+)$", text, re.M)
    if detailed:
        return detailed[-1].strip()
    errors = re.findall(r"^ERROR - (.+)$", text, re.M)
    if errors:
        return errors[-1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) or "no message"


class WbadminEngine(Engine):
    """Windows Server Backup (wbadmin) on a Windows machine."""

    name = "wbadmin"
    kinds = ("image",)
    os_families = ("windows",)

    @classmethod
    def policy_warnings(cls, machine: Machine, level: Level) -> list[str]:
        """Return what ``recoverd check`` should point out about an image level (not errors)."""
        if level.target and is_share(level.target):
            return [
                f"target {level.target} is a network share: Windows Server Backup keeps only "
                "one version there (each backup overwrites the last, and if one fails there may "
                "be none); use a local or iSCSI disk to keep several versions"
            ]
        return []

    # -- running wbadmin ---------------------------------------------------------------------

    def _wbadmin(self, args: list[str], **kwargs: Any) -> CommandOutcome:
        outcome = self.transport.run(CommandRequest(["wbadmin", *args], **kwargs))
        if outcome.exit_status == 127:
            raise ToolMissing(
                "wbadmin is not available on the machine; install the Windows Server Backup "
                "feature (Install-WindowsFeature Windows-Server-Backup)"
            )
        return outcome

    def last_job(self) -> dict[str, Any] | None:
        """Return the last backup job as Get-WBJob / Get-WBSummary describe it, or None if
        those cmdlets are not available on the machine."""
        outcome = self.transport.run(
            CommandRequest(powershell.encoded(LAST_JOB_SCRIPT), timeout=120)
        )
        if not outcome.ok:
            return None
        try:
            job = json.loads(outcome.stdout.decode("utf-8", "replace").strip() or "null")
        except ValueError:
            return None
        return job if isinstance(job, dict) else None

    def versions(self, target: str) -> list[dict[str, str]]:
        """Return the backups wbadmin lists at ``target``, oldest first (none: empty)."""
        outcome = self._wbadmin(["get", "versions", f"-backupTarget:{target}"], timeout=300)
        return parse_versions(outcome.stdout.decode("utf-8", "replace"))

    # -- engine operations -------------------------------------------------------------------

    def backup(self, request: BackupRequest, progress: ProgressCallback | None = None) -> Outcome:
        """Image the level's volumes to its target; the snapshot is wbadmin's version id.

        Raise EngineError with wbadmin's own reason if the backup failed.
        """
        level = request.level
        target = self._target(level)
        args = ["start", "backup", f"-backupTarget:{target}", *include_args(level.device)]
        args.append("-quiet")
        text: deque[str] = deque(maxlen=MAX_TEXT_LINES)  # a hostile machine prints forever

        def line(text_line: str) -> None:
            text.append(text_line)
            copied = re.search(r"copied \((\d+)%\)", text_line)
            if copied and progress is not None:
                progress(Progress(fraction=int(copied[1]) / 100))

        out, err = LineSplitter(line), LineSplitter(line)
        started = time.monotonic()
        outcome = self._wbadmin(args, on_stdout=out, on_stderr=err)
        out.flush()
        err.flush()
        output = redact("\n".join(text))
        job = self.last_job()
        if job is not None:
            succeeded = job.get("HResult") == 0
            reason = job.get("ErrorDescription") or failure_reason(output)
        else:
            # No cmdlets (client Windows): the English text, else the exit code.
            failed_text = "ERROR - " in output or "stopped before completing" in output
            succeeded = SUCCESS_TEXT in output or (outcome.ok and not failed_text)
            reason = failure_reason(output)
        if not succeeded:
            raise EngineError(f"wbadmin backup to {target} failed: {reason[:MAX_MESSAGE]}")
        versions = self.versions(target)
        stats = {
            "duration_s": round(time.monotonic() - started, 3),
            "target": target,
            "volumes": level.device,
            "versions_at_target": len(versions),
            "result_from": "Get-WBJob" if job is not None else "wbadmin text",
        }
        version = versions[-1]["Version identifier"] if versions else None
        return Outcome("succeeded", version, stats)

    def snapshots(
        self, client: str, machine: Machine, repository: Repository, level: str | None = None
    ) -> list[Snapshot]:
        """Return the backups at the level's target (``repository`` names that target).

        Times are as the machine printed them, in its own time zone.
        """
        target = repository.url
        found = []
        for version in self.versions(target):
            version_id = version["Version identifier"]
            when = datetime.strptime(version_id, "%m/%d/%Y-%H:%M")
            found.append(
                Snapshot(
                    id=version_id,
                    short_id=version_id,
                    time=when.isoformat(),
                    level=level,
                    paths=(version.get("Backup location") or version.get("Backup target", ""),),
                    tags=tuple(version.get("Can recover", "").split(", ")),
                )
            )
        return found

    def forget(self, request: BackupRequest) -> Outcome:
        """Apply ``keep = { last = N }`` on a disk target (wbadmin delete backup -keepVersions).

        A share holds one version anyway, and wbadmin counts versions only: anything else is
        skipped, with the reason.
        """
        target = self._target(request.level)
        keep = request.level.keep
        if is_share(target):
            return Outcome("skipped", stats={"reason": "a network share keeps one version"})
        if set(keep) != {"last"}:
            return Outcome(
                "skipped",
                stats={"reason": "wbadmin keeps versions by count only: use keep = { last = N }"},
            )
        args = ["delete", "backup", f"-backupTarget:{target}", f"-keepVersions:{keep['last']}"]
        outcome = self._wbadmin([*args, "-quiet"], timeout=3600)
        if not outcome.ok:
            text = outcome.stdout.decode("utf-8", "replace")
            raise EngineError(f"wbadmin delete backup at {target} failed: {failure_reason(text)}")
        return Outcome("succeeded", stats={"versions_kept": keep["last"]})

    def prune(self, client: str, machine: Machine, repository: Repository) -> Outcome:
        """Nothing to do: Windows Server Backup reclaims space at its target by itself."""
        return Outcome("skipped", stats={"reason": "wbadmin reclaims space by itself"})

    # -- restores --------------------------------------------------------------------------

    def recover(
        self,
        target: str,
        version: str,
        item_type: str,
        items: list[str],
        recovery_target: str | None = None,
    ) -> Outcome:
        """Restore files or volumes of backup ``version`` on the live system.

        ``item_type`` is ``File`` or ``Volume``; ``items`` are paths or volumes; without
        ``recovery_target`` they go back where they were (files are then overwritten).
        Raise UsageError for an item wbadmin cannot take, EngineError if the recovery failed.
        """
        if item_type not in ("File", "Volume"):
            raise UsageError(f"item type must be 'File' or 'Volume', not {item_type!r}")
        if not items or any("," in item for item in items):
            # wbadmin separates -items with commas and has no way to escape one.
            raise UsageError("wbadmin cannot recover a path that contains a comma")
        args = [
            "start",
            "recovery",
            f"-version:{version}",
            f"-itemType:{item_type}",
            f"-items:{','.join(items)}",
            f"-backupTarget:{target}",
        ]
        if recovery_target:
            args.append(f"-recoveryTarget:{recovery_target}")
        if item_type == "File":
            args += ["-recursive", "-overwrite:Overwrite"]
        started = time.monotonic()
        outcome = self._wbadmin([*args, "-quiet"])
        text = redact(outcome.stdout.decode("utf-8", "replace"))
        if not outcome.ok or "ERROR - " in text:
            raise EngineError(f"wbadmin recovery of {version} failed: {failure_reason(text)}")
        stats: dict[str, Any] = {"duration_s": round(time.monotonic() - started, 3)}
        files = re.search(r"^Total files recovered:\s*(\d+)", text, re.M)
        if files:
            stats["files_restored"] = int(files[1])
        failed = re.search(r"^Total files failed:\s*(\d+)", text, re.M)
        if failed:
            stats["files_failed"] = int(failed[1])
        return Outcome("succeeded", version, stats)

    def computer_name(self) -> str:
        """Return the machine's Windows computer name (what wbadmin's -machine: takes)."""
        outcome = self.transport.run(CommandRequest(["hostname"], timeout=60))
        name = outcome.stdout.decode("utf-8", "replace").strip()
        if not outcome.ok or not name:
            raise EngineError(f"cannot read the computer name of {self.transport.machine.name}")
        return name

    @staticmethod
    def bare_metal_steps(
        machine: Machine, level: Level, version: str, computer_name: str
    ) -> list[str]:
        """Return the WinRE steps that restore ``machine`` from backup ``version`` of ``level``.

        Every value is quoted for the WinRE command prompt.
        """
        target = level.target or ""
        quoted = powershell.command_line
        versions = quoted(["wbadmin", "get", "versions", f"-backupTarget:{target}"])
        restore = quoted(
            [
                "wbadmin",
                "start",
                "sysrecovery",
                f"-version:{version}",
                f"-backupTarget:{target}",
                f"-machine:{computer_name}",
                "-restoreAllVolumes",
                "-recreateDisks",
                "-quiet",
            ]
        )
        steps = [
            f"Boot {machine.name} ({computer_name}) from Windows installation media or its "
            "recovery partition; choose Repair your computer > Troubleshoot > Command Prompt.",
        ]
        if is_share(target):
            user = f" /user:{machine.user}" if machine.user else ""
            steps.append(
                "Start the network and connect the share (type the password when asked): "
                f"wpeinit && net use {quoted([target])}{user}"
            )
        else:
            steps.append(
                f"Connect the backup disk. WinRE may give it a letter other than {target}; "
                "`diskpart`, then `list volume` and `exit`, shows the letters; use that one below."
            )
        steps += [
            f"Check that the backup is there: {versions}",
            "Restore (this erases the machine's disks and recreates them as they were at "
            f"backup time): {restore}",
            "Reboot with `wpeutil reboot`; once Windows is up, run "
            f"`recoverd backup {machine.name}` for a fresh baseline and sign off the restore "
            "with `recoverd accept RUN_ID --by NAME`.",
        ]
        return steps

    def _target(self, level: Level) -> str:
        if not level.target:
            raise UsageError(f"image level {level.name} has no target (wbadmin's backup target)")
        return level.target


@recoverd.hookimpl
def recoverd_add_engines(register: Any) -> None:
    register.add("wbadmin", WbadminEngine)
