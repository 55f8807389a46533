"""A simulated Windows host for tests, the machine behind :mod:`recoverd.testing_wsman`.

It is a protocol-level imitation, not Windows. It splits command lines with Windows' rules,
decodes ``powershell -EncodedCommand`` scripts and interprets the few kinds recoverd sends (the
:func:`recoverd.powershell.start_process` launcher and the Windows Server Backup queries), and
runs:

- ``restic.exe`` as the real ``restic`` binary, with Windows paths (``C:\\Users\\x``) mapped into
  a directory per drive letter under ``root`` (``root/C/Users/x``);
- the PowerShell scripts of restore drills (:mod:`recoverd_plugins.drills`): a temporary
  folder, ``Remove-Item``, ``Get-FileHash``;
- ``wbadmin.exe`` and the ``Get-WBJob`` / ``Get-WBSummary`` cmdlets, answering with outputs
  written after the documented formats (see :data:`WBADMIN_BANNER` and friends); a test chooses
  whether the next backup fails and whether the cmdlets exist (Windows Server) or not;
- any extra program a test registers in :attr:`SimulatedWindows.programs`.

Every command it was asked to run is kept in :attr:`SimulatedWindows.command_lines`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from recoverd.powershell import SINGLE_QUOTES, decode

Write = Callable[[bytes], None]


@dataclass
class Invocation:
    """One program run on the simulated host: its argv, streams and environment."""

    host: SimulatedWindows
    argv: list[str]
    stdin: BinaryIO
    stdout: Write
    stderr: Write
    env: dict[str, str] = field(default_factory=dict)
    on_terminate: list[Callable[[], None]] = field(default_factory=list)
    """Called when WinRS terminates the command (Signal terminate) before it ended."""


Program = Callable[[Invocation], int]
"""A simulated program: given its invocation, write its output and return its exit code."""


def restic_version(program: str = "restic") -> tuple[int, int, int]:
    """Return the version of the restic that ``program`` names (the one behind ``restic.exe``)."""
    out = subprocess.run([program, "version"], capture_output=True, text=True, check=True).stdout
    found = re.match(r"restic (\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise ValueError(f"{program} version printed {out!r}")
    return int(found[1]), int(found[2]), int(found[3])


def reporting_version(program: Program, version: str) -> Program:
    """Return a stand-in for ``program`` that says it is restic ``version`` when asked
    (``restic.exe version``) and runs ``program`` for everything else.

    For the behaviour a test relies on to match, ``version`` should be one whose behaviour the
    real restic behind ``program`` shares (see :func:`restic_version`).
    """

    def stand_in(inv: Invocation) -> int:
        if inv.argv[1:] == ["version"]:
            inv.stdout(f"restic {version} compiled with go1.21.6 on windows/amd64\r\n".encode())
            return 0
        return program(inv)

    return stand_in


def split_command_line(line: str, *, program: bool = True) -> list[str]:
    """Given a Windows command line, return the argv that CommandLineToArgvW makes of it.

    With ``program``, the first word is the program name, which follows simpler rules: it ends
    at the next quote if it starts with one, else at white space, and backslashes are literal.
    """
    argv: list[str] = []
    i, n = 0, len(line)
    if program:
        line = line.lstrip(" \t")
        n = len(line)
        if line.startswith('"'):
            end = line.find('"', 1)
            end = n if end < 0 else end
            argv.append(line[1:end])
            i = end + 1
        else:
            match = re.match(r"[^ \t]*", line)
            assert match is not None
            argv.append(match.group())
            i = match.end()
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return argv
        word: list[str] = []
        quoted = False
        while i < n and (quoted or line[i] not in " \t"):
            if line[i] == "\\":
                start = i
                while i < n and line[i] == "\\":
                    i += 1
                slashes = i - start
                if i < n and line[i] == '"':
                    word.append("\\" * (slashes // 2))
                    if slashes % 2:
                        word.append('"')
                        i += 1
                    continue
                word.append("\\" * slashes)
                continue
            if line[i] == '"':
                if quoted and i + 1 < n and line[i + 1] == '"':
                    word.append('"')  # "" inside quotes: a literal quote (msvcrt since 2008)
                    i += 2
                    continue
                quoted = not quoted
                i += 1
                continue
            word.append(line[i])
            i += 1
        argv.append("".join(word))


_LITERAL = f"[{SINGLE_QUOTES}]((?:[^{SINGLE_QUOTES}]|[{SINGLE_QUOTES}]{{2}})*)[{SINGLE_QUOTES}]"


def parse_literal(text: str) -> str:
    """Given the inside of a PowerShell single-quoted literal, return its value."""
    return re.sub(f"([{SINGLE_QUOTES}])[{SINGLE_QUOTES}]", r"\1", text)


# -- recorded outputs --------------------------------------------------------------------------

WBADMIN_BANNER = (
    "wbadmin 1.0 - Backup command-line tool\r\n"
    "(C) Copyright Microsoft Corporation. All rights reserved.\r\n\r\n"
)

WBADMIN_BACKUP_OK = (
    "Retrieving volume information...\r\n"
    "This will back up {volumes} to {target}.\r\n"
    "The backup operation to {target} is starting.\r\n"
    "Creating a shadow copy of the volumes specified for backup...\r\n"
    "Creating a shadow copy of the volumes specified for backup...\r\n"
    "Creating a backup of volume (C:), copied (0%).\r\n"
    "Creating a backup of volume (C:), copied (48%).\r\n"
    "Creating a backup of volume (C:), copied (100%).\r\n"
    "The backup operation successfully completed.\r\n"
    "Summary of the backup operation:\r\n"
    "------------------\r\n\r\n"
    "The backup of volume (C:) completed successfully.\r\n\r\n"
    "Log of files successfully backed up:\r\n"
    "C:\\Windows\\Logs\\WindowsServerBackup\\Backup-{stamp}.log\r\n\r\n"
)

WBADMIN_BACKUP_FAILED = (
    "Retrieving volume information...\r\n"
    "This will back up {volumes} to {target}.\r\n"
    "The backup operation to {target} is starting.\r\n"
    "Creating a shadow copy of the volumes specified for backup...\r\n"
    "Summary of the backup operation:\r\n"
    "------------------\r\n\r\n"
    "The backup operation stopped before completing.\r\n"
    "Detailed error: {error}\r\n\r\n"
    "Log of files successfully backed up:\r\n"
    "C:\\Windows\\Logs\\WindowsServerBackup\\Backup-{stamp}.log\r\n\r\n"
    "Log of files for which backup failed:\r\n"
    "C:\\Windows\\Logs\\WindowsServerBackup\\Backup_Error-{stamp}.log\r\n\r\n"
)

WBADMIN_VERSION_BLOCK = (
    "Backup time: {time}\r\n"
    "Backup location: {kind} labeled {target}\r\n"
    "Version identifier: {version}\r\n"
    "Can recover: Volume(s), File(s), Application(s), Bare Metal Recovery, System State\r\n"
    "Snapshot ID: {{{snapshot}}}\r\n\r\n"
)

WBADMIN_RECOVERY_OK = (
    "Retrieving volume information...\r\n"
    "You have chosen to recover the file(s) {items} from the\r\n"
    "backup created on {time} to {target}.\r\n"
    "Preparing to recover files...\r\n\r\n"
    "Successfully recovered {items} to {target}.\r\n"
    "The recovery operation completed.\r\n"
    "Summary of the recovery operation:\r\n"
    "--------------------\r\n\r\n"
    "The recovery of {items} successfully completed.\r\n"
    "Total bytes recovered: {size:.2f} MB\r\n"
    "Total files recovered: {files}\r\n"
    "Total files failed: 0\r\n\r\n"
    "Log of files successfully recovered:\r\n"
    "C:\\Windows\\Logs\\WindowsServerBackup\\FileRestore-{stamp}.log\r\n\r\n"
)

WBADMIN_RECOVERY_FAILED = (
    "Retrieving volume information...\r\n"
    "You have chosen to recover the file(s) {items} from the\r\n"
    "backup created on {time} to {target}.\r\n"
    "Preparing to recover files...\r\n\r\n"
    "ERROR - The recovery operation stopped before completing.\r\n"
    "Detailed error: {error}\r\n"
)

NOT_RECOGNIZED = (
    "{name} : The term '{name}' is not recognized as the name of a cmdlet, function, script "
    "file, or operable program. Check the spelling of the name, or if a path was included, "
    "verify that the path is correct and try again.\r\n"
    "    + CategoryInfo          : ObjectNotFound: ({name}:String) [], CommandNotFoundException\r\n"
    "    + FullyQualifiedErrorId : CommandNotFoundException\r\n"
)


@dataclass
class WbadminState:
    """What the simulated Windows Server Backup knows and does next."""

    cmdlets: bool = True
    """Whether Get-WBJob / Get-WBSummary exist (Windows Server with the feature's tools)."""
    fail_next: str | None = None
    """The "Detailed error" of the next backup; None: it succeeds."""
    versions: list[tuple[datetime, str]] = field(default_factory=list)
    """(backup time, target) of every successful backup, oldest first."""
    last_job: dict[str, object] | None = None
    fail_next_recovery: str | None = None
    """The "Detailed error" of the next recovery; None: it succeeds."""
    images: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Per version identifier, the content of the imaged volumes: Windows path -> bytes."""


class SimulatedWindows:
    """The Windows machine behind the test WS-Management server."""

    def __init__(self, root: Path, restic: str = "restic") -> None:
        self.root = Path(root)
        self.restic = restic
        self.command_lines: list[str] = []
        self.vss_snapshots = 0
        """How many restic runs asked for a VSS snapshot (``--use-fs-snapshot``)."""
        self.wbadmin = WbadminState()
        self.programs: dict[str, Program] = {
            "restic.exe": self._restic,
            "restic": self._restic,
            "wbadmin.exe": self._wbadmin,
            "wbadmin": self._wbadmin,
            "powershell.exe": self._powershell,
            "powershell": self._powershell,
            "hostname.exe": self._hostname,
            "hostname": self._hostname,
        }
        self.computer_name = "WIN-RECOVERD01"
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------

    def local_path(self, windows_path: str) -> Path:
        """Given ``C:\\Users\\x``, return where it lives here (``root/C/Users/x``)."""
        match = re.fullmatch(r"([A-Za-z]):[\\/]?(.*)", windows_path, re.S)
        if not match:
            raise ValueError(f"not an absolute Windows path: {windows_path!r}")
        rest = [part for part in re.split(r"[\\/]", match[2]) if part]
        return self.root.joinpath(match[1].upper(), *rest)

    def _map_arg(self, arg: str) -> str:
        if re.match(r"[A-Za-z]:[\\/]", arg):
            return str(self.local_path(arg))
        return arg

    # -- running ---------------------------------------------------------------------------

    def program(self, name: str) -> Program | None:
        """Return the program a command line's first word starts, or None if there is none."""
        base = re.split(r"[\\/]", name)[-1].lower()
        with self._lock:
            return self.programs.get(base)

    def run(self, line: str, invocation: Invocation) -> int:
        """Run a command line on the host and return its exit code. Raise FileNotFoundError
        if its program does not exist (WinRS then answers the Command with a fault)."""
        with self._lock:
            self.command_lines.append(line)
        argv = split_command_line(line)
        program = self.program(argv[0])
        if program is None:
            raise FileNotFoundError(argv[0])
        invocation.argv = argv
        return program(invocation)

    def windows_path(self, local: str) -> str:
        """Given a path below ``root`` (``root/C/Users/x``), return it as Windows writes it."""
        parts = Path(local).relative_to(self.root).parts
        return parts[0] + ":\\" + "\\".join(parts[1:])

    def _restic(self, inv: Invocation) -> int:
        env = {**os.environ, **inv.env}
        repository = env.get("RESTIC_REPOSITORY", "")
        env["RESTIC_REPOSITORY"] = self._map_arg(repository)
        args = [self._map_arg(a) for a in inv.argv[1:]]
        if args[:1] == ["backup"] and "--" in args:
            # restic for Windows keeps C:\Users\x as /C/Users/x in the snapshot: backing up
            # the drive folders relative to root (restic runs there) gives the same tree.
            split = args.index("--")
            args[split + 1 :] = [str(Path(a).relative_to(self.root)) for a in args[split + 1 :]]
        if "--use-fs-snapshot" in args:
            # Only restic for Windows has the flag; there is no VSS here to snapshot with.
            args.remove("--use-fs-snapshot")
            with self._lock:
                self.vss_snapshots += 1
        process = subprocess.Popen(
            [self.restic, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.root,
        )
        inv.on_terminate.append(process.kill)
        # restic for Windows lists a snapshot's paths as C:\\Users\\x (also on the first line
        # of `ls --json`).
        listed = args[:1] in (["snapshots"], ["ls"]) and "--json" in args
        listing = bytearray() if listed else None
        stdout = inv.stdout if listing is None else listing.extend
        pumps = [
            threading.Thread(target=_pump, args=(process.stdout, stdout), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, inv.stderr), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        if listing is not None:
            inv.stdout(self._windows_snapshots(bytes(listing)))
        return process.wait()

    def _windows_snapshots(self, listing: bytes) -> bytes:
        """Given `snapshots --json` (one array) or `ls --json` output (a snapshot line, then
        nodes), return it with the snapshots' paths as restic for Windows prints them."""
        try:
            snapshots = json.loads(listing)
        except ValueError:  # ls: only the first line is a snapshot
            first, newline, nodes = listing.partition(b"\n")
            try:
                snapshot = json.loads(first)
            except ValueError:
                return listing
            return json.dumps(self._windows_paths(snapshot)).encode() + newline + nodes
        return json.dumps([self._windows_paths(s) for s in snapshots or []]).encode() + b"\n"

    def _windows_paths(self, snapshot: dict) -> dict:
        for key in ("paths", "excludes"):
            if key in snapshot:
                snapshot[key] = [
                    self.windows_path(p) if p.startswith(str(self.root)) else p
                    for p in snapshot[key]
                ]
        return snapshot

    def _powershell(self, inv: Invocation) -> int:
        script = decode(inv.argv)
        if script is None:
            inv.stderr(b"the simulated host runs only -EncodedCommand scripts\r\n")
            return 1
        if "System.Diagnostics.ProcessStartInfo" in script:
            return self._start_process(script, inv)
        if "Get-WBJob" in script or "Get-WBSummary" in script:
            return self._wb_cmdlets(inv)
        if script.strip() == "[Console]::Out.Write($env:SystemDrive)":
            inv.stdout(b"C:")
            return 0
        if "[Console]::OpenStandardInput()" in script and "$file.FullName" in script:
            return self._file_facts("Get-FileHash" in script, inv)
        if "Get-FileHash" in script:
            return self._file_hashes(inv)
        if "New-Item -ItemType Directory" in script:
            return self._new_temp_folder(inv)
        if "Remove-Item -LiteralPath" in script:
            return self._remove_item(script, inv)
        inv.stderr(b"the simulated host does not interpret this script:\r\n" + script.encode())
        return 1

    def _start_process(self, script: str, inv: Invocation) -> int:
        """Interpret :func:`recoverd.powershell.start_process`: its values are literals."""
        program = parse_literal(_assignment(script, r"\$start\.FileName"))
        args = split_command_line(
            parse_literal(_assignment(script, r"\$start\.Arguments")), program=False
        )
        env: dict[str, str] = {}
        reader = _LineReader(inv.stdin)
        read_line = r"\[Console\]::In\.ReadLine\(\)"
        pattern = rf"\$start\.EnvironmentVariables\[{_LITERAL}\] = ({read_line}|{_LITERAL})"
        for match in re.finditer(pattern, script):
            name = parse_literal(match[1])
            env[name] = reader.readline() if match[2].startswith("[") else parse_literal(match[3])
        target = self.program(program)
        if target is None:
            inv.stderr(
                f"{program}: not found or cannot start (The system cannot find the file "
                "specified)\r\n".encode()
            )
            return 127
        inv.argv = [program, *args]
        inv.env = {**inv.env, **env}
        return target(inv)

    # -- files: the scripts of recoverd_plugins.drills ---------------------------------------

    def _new_temp_folder(self, inv: Invocation) -> int:
        """A new folder below GetTempPath() (a service account's: C:\\Windows\\Temp\\)."""
        path = f"C:\\Windows\\Temp\\recoverd-drill.{os.urandom(4).hex()}"
        self.local_path(path).mkdir(parents=True)
        inv.stdout(path.encode())
        return 0

    def _remove_item(self, script: str, inv: Invocation) -> int:
        """``Remove-Item -LiteralPath '...' -Recurse -Force``; a missing path is an error."""
        match = re.search(rf"Remove-Item -LiteralPath {_LITERAL}", script)
        assert match is not None
        path = parse_literal(match[1])
        local = self.local_path(path)
        if not local.exists():
            message = f"Remove-Item : Cannot find path '{path}' because it does not exist.\r\n"
            inv.stderr(message.encode())
            return 1
        if local.is_dir():
            shutil.rmtree(local)
        else:
            local.unlink()
        return 0

    def _file_hashes(self, inv: Invocation) -> int:
        """Get-FileHash -Algorithm SHA256 of each NUL-separated path on stdin that is a file:
        ``hash  path`` and a NUL, as the drill's script writes them."""
        for path in inv.stdin.read().decode("utf-8").split("\0"):
            if not path:
                continue
            local = self.local_path(path)
            if local.is_file():
                digest = hashlib.sha256(local.read_bytes()).hexdigest()
                inv.stdout(f"{digest}  {path}\0".encode())
        return 0

    def _file_facts(self, hashing: bool, inv: Invocation) -> int:
        """Interpret the file-facts script of :mod:`recoverd_plugins.windows_restore`: for each
        path on stdin that exists, ``SIZE<tab>MTIME`` or the sha256, a tab and the path as sent,
        NUL-terminated; a folder stands for every file below it (by full name)."""
        for line in inv.stdin.read().decode("utf-8").splitlines():
            try:
                local = self.local_path(line)
            except ValueError:
                continue
            files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
            for path in files or ([local] if local.is_file() else []):
                if hashing:
                    fact = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    stat = path.stat()
                    fact = f"{stat.st_size}\t{int(stat.st_mtime)}"
                name = line if path == local else self.windows_path(str(path))
                inv.stdout(f"{fact}\t{name}\0".encode())
        return 0

    def _hostname(self, inv: Invocation) -> int:
        inv.stdout(f"{self.computer_name}\r\n".encode())
        return 0

    # -- Windows Server Backup ---------------------------------------------------------------

    def _wbadmin(self, inv: Invocation) -> int:
        args = inv.argv[1:]
        words = [a.lower() for a in args[:2]]
        options = _wbadmin_options(args[2:])
        inv.stdout(WBADMIN_BANNER.encode())
        now = datetime.now(UTC).replace(microsecond=0)
        stamp = now.strftime("%d-%m-%Y_%H-%M-%S")
        state = self.wbadmin
        if words == ["start", "backup"]:
            target = options.get("backuptarget", "")
            volumes = "(C:)" if "allcritical" in options else options.get("include", "")
            if state.fail_next:
                error, state.fail_next = state.fail_next, None
                text = WBADMIN_BACKUP_FAILED.format(
                    volumes=volumes, target=target, stamp=stamp, error=error
                )
                inv.stdout(text.encode())
                inv.stderr(b"ERROR - The backup operation stopped before completing.\r\n")
                state.last_job = _job(now, 0x807800C5, error)
                return 1
            state.versions.append((now, target))
            letters = ["C"] if "allcritical" in options else re.findall(r"([A-Za-z]):", volumes)
            state.images[version_id(now)] = {
                self.windows_path(str(path)): path.read_bytes()
                for letter in letters
                for path in sorted((self.root / letter.upper()).rglob("*"))
                if path.is_file()
            }
            inv.stdout(
                WBADMIN_BACKUP_OK.format(volumes=volumes, target=target, stamp=stamp).encode()
            )
            state.last_job = _job(now, 0, "")
            return 0
        if words == ["get", "versions"]:
            target = options.get("backuptarget")
            blocks = [
                WBADMIN_VERSION_BLOCK.format(
                    time=when.strftime("%m/%d/%Y %I:%M %p"),
                    kind="Network share" if where.startswith("\\\\") else "Disk",
                    target=where,
                    version=version_id(when),
                    snapshot=f"{index:08x}-0000-0000-0000-000000000000",
                )
                for index, (when, where) in enumerate(state.versions)
                if target is None or where.lower() == target.lower()
            ]
            if not blocks:
                inv.stdout(b"There are no backups available at this location.\r\n")
                return 1
            inv.stdout("".join(blocks).encode())
            return 0
        if words == ["delete", "backup"]:
            target = options.get("backuptarget", "").lower()
            keep = int(options.get("keepversions", "0") or 0)
            here = [v for v in state.versions if v[1].lower() == target]
            doomed = here[: max(0, len(here) - keep)]
            state.versions = [v for v in state.versions if v not in doomed]
            inv.stdout(f"Deleted {len(doomed)} backup version(s).\r\n".encode())
            return 0
        if words == ["start", "recovery"]:
            version = options.get("version", "")
            known = {version_id(when): when for when, _ in state.versions}
            if version not in known:
                inv.stdout(b"ERROR - The specified backup version was not found.\r\n")
                return 1
            facts = {
                "items": options.get("items", ""),
                "target": options.get("recoverytarget", "the original location"),
                "time": known[version].strftime("%m/%d/%Y %I:%M %p"),
            }
            if state.fail_next_recovery:
                error, state.fail_next_recovery = state.fail_next_recovery, None
                inv.stdout(WBADMIN_RECOVERY_FAILED.format(**facts, error=error).encode())
                return 1
            files = self._recover(state.images.get(version, {}), options)
            size = sum(len(data) for data in files.values()) / 1024**2
            text = WBADMIN_RECOVERY_OK.format(**facts, stamp=stamp, files=len(files), size=size)
            inv.stdout(text.encode())
            return 0
        inv.stdout(f"ERROR - Command syntax incorrect: {' '.join(args[:2])}\r\n".encode())
        return 1

    def _recover(self, image: dict[str, bytes], options: dict[str, str]) -> dict[str, bytes]:
        """Write the image's files named by ``-items`` back (to ``-recoveryTarget`` if given:
        an item lands there under its last name, a volume onto that volume); return them."""
        target = options.get("recoverytarget")
        volumes = options.get("itemtype", "").lower() == "volume"
        written = {}
        for item in options.get("items", "").split(","):
            item = item.rstrip("\\")
            for path, data in image.items():
                if path.lower() != item.lower() and not path.lower().startswith(
                    item.lower() + "\\"
                ):
                    continue
                if target is None:
                    landing = path
                elif volumes:
                    landing = target.rstrip("\\")[:2] + path[2:]
                else:
                    leaf = re.split(r"[\\/]", item)[-1]
                    landing = target.rstrip("\\") + "\\" + leaf + path[len(item) :]
                local = self.local_path(landing)
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
                written[landing] = data
        return written

    def _wb_cmdlets(self, inv: Invocation) -> int:
        state = self.wbadmin
        if not state.cmdlets:
            inv.stderr(NOT_RECOGNIZED.format(name="Get-WBJob").encode())
            return 1
        if state.last_job is None:
            inv.stdout(b"null\r\n")
            return 0
        last_good = state.versions[-1][0].isoformat() if state.versions else None
        summary = {
            "NumberOfVersions": len(state.versions),
            "LastSuccessfulBackupTime": last_good,
            "LastBackupTarget": state.versions[-1][1] if state.versions else None,
        }
        inv.stdout((json.dumps({**state.last_job, **summary}) + "\r\n").encode())
        return 0


def version_id(when: datetime) -> str:
    """Return wbadmin's version identifier of a backup taken at ``when`` (MM/DD/YYYY-HH:MM)."""
    return when.strftime("%m/%d/%Y-%H:%M")


def _job(now: datetime, hresult: int, error: str) -> dict[str, object]:
    return {
        "JobState": "Completed",
        "HResult": hresult,
        "DetailedHResult": hresult,
        "ErrorDescription": error,
        "StartTime": (now - timedelta(minutes=12)).isoformat(),
        "EndTime": now.isoformat(),
    }


def _wbadmin_options(args: list[str]) -> dict[str, str]:
    """Given wbadmin's ``-name:value`` / ``-flag`` arguments, return them by lower-case name."""
    options = {}
    for arg in args:
        name, _, value = arg.lstrip("-/").partition(":")
        options[name.lower()] = value
    return options


def _assignment(script: str, target: str) -> str:
    match = re.search(rf"{target} = {_LITERAL}", script)
    if match is None:
        raise ValueError(f"no {target} in the script")
    return match[1]


class _LineReader:
    """Read lines from a pipe byte by byte, leaving the rest for the program."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def readline(self) -> str:
        data = bytearray()
        while True:
            byte = self.stream.read(1)
            if not byte or byte == b"\n":
                break
            data += byte
        return data.decode("utf-8").rstrip("\r")


def _pump(stream: BinaryIO, write: Write) -> None:
    for chunk in iter(lambda: stream.read1(64 * 1024), b""):  # type: ignore[attr-defined]
        write(chunk)
