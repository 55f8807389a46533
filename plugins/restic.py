"""The restic engine: file-level backups with restic 0.14 and later, run on the machine.

restic gets its password and repository from the first two lines of its stdin, read by a tiny
``sh`` wrapper that exports them and then ``exec``s restic, so neither shows in a process list,
an argv, an SSH environment request or a log (see DESIGN.md). Everything else is argv.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import recoverd
from recoverd import powershell
from recoverd.engine import (
    BackupRequest,
    CopyRequest,
    Engine,
    Outcome,
    Progress,
    ProgressCallback,
    Snapshot,
)
from recoverd.errors import (
    EngineError,
    Interrupted,
    RepositoryLocked,
    RestoreRefused,
    ToolMissing,
    UsageError,
    WrongPassword,
)
from recoverd.policy.model import Machine, Repository
from recoverd.secrets import redact
from recoverd.transport import CommandOutcome, CommandRequest, RecordSplitter

CREDENTIAL_VARIABLES = ("RESTIC_PASSWORD", "RESTIC_REPOSITORY")
"""What the first two lines of a restic command's stdin hold, in order."""
COPY_VARIABLES = (*CREDENTIAL_VARIABLES, "RESTIC_FROM_PASSWORD", "RESTIC_FROM_REPOSITORY")
"""A copy's stdin holds the source repository's password and location as two more lines
(restic 0.14 reads them from RESTIC_FROM_PASSWORD / RESTIC_FROM_REPOSITORY)."""


MIN_VERSION = (0, 14, 0)
VERSION_MARKER = "recoverd-restic-version "
"""Starts the stderr line on which a wrapper reports ``restic version`` before restic runs."""
TOO_OLD = 96
"""A wrapper's exit status when the machine's restic is older than MIN_VERSION."""


def version_check(restic: str) -> str:
    """Return a shell command that runs ``restic version`` (``restic`` is how the script names
    the program, e.g. ``"$1"``), reports it on stderr after :data:`VERSION_MARKER` and exits
    :data:`TOO_OLD` if restic is older than :data:`MIN_VERSION` (the status of ``restic
    version`` if that fails: 127 when restic is missing).

    It runs in the same remote command as the work that follows: a separate ``restic version``
    would cost one more command (and login shell) on the machine per run.
    """
    major, minor = MIN_VERSION[0], MIN_VERSION[1]
    return (
        f'{{ v=$({restic} version) || exit; printf "{VERSION_MARKER}%s\\n" "$v" >&2; '
        "n=${v#restic }; n=${n%% *}; M=${n%%.*}; m=${n#*.}; m=${m%%.*}; "
        f'[ "$M" -gt {major} ] 2>/dev/null || {{ [ "$M" -eq {major} ] && [ "$m" -ge {minor} ]; }} '
        f"2>/dev/null || exit {TOO_OLD}; }}"
    )


def sh_wrapper(variables: tuple[str, ...], *, check_version: bool = False) -> str:
    """Return a ``sh -c`` script that reads ``variables`` from stdin lines, then execs "$@".

    Anything after those lines (an image stream) reaches the program untouched, because
    ``read`` on a pipe stops at the newline. With ``check_version``, restic (``$1``) first
    reports its version on stderr (:data:`VERSION_MARKER`) and the script exits
    :data:`TOO_OLD` if it is older than :data:`MIN_VERSION`.
    """
    reads = " && ".join(f"IFS= read -r {name}" for name in variables)
    check = version_check('"$1"') + " && " if check_version else ""
    return f'{reads} && export {" ".join(variables)} RESTIC_PROGRESS_FPS=1 && {check}exec "$@"'


def parse_version(text: str) -> tuple[int, int, int] | None:
    """Given ``restic version`` output, return the version, or None if it names none."""
    found = re.search(r"restic (\d+)\.(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def too_old(version: tuple[int, int, int]) -> ToolMissing:
    """Return the error for a machine whose restic is older than :data:`MIN_VERSION`."""
    return ToolMissing(
        f"restic {'.'.join(map(str, version))} on the machine is too old; "
        "recoverd needs 0.14 or later"
    )


# The credentials' two lines for a shell script that runs restic inside a pipeline (an image stream
# into `restic backup --stdin`, `restic dump` into partclone): the script calls the function
# `restic_ ARGS`, and only restic's own environment holds the password.
SCRIPT_HEAD = (
    "IFS= read -r p && IFS= read -r r || "
    "{ echo 'recoverd: no credentials on stdin' >&2; exit 97; }\n"
    'restic_() { RESTIC_PASSWORD="$p" RESTIC_REPOSITORY="$r" RESTIC_PROGRESS_FPS=1 "$0" "$@"; }\n'
)
SUBFOLDER_VERSION = (0, 16, 0)
"""restic understands ``SNAPSHOT:/sub/folder`` from this version on."""
MAX_LISTED = 100
"""Unreadable files named in a record at most (the count is always exact)."""


def tag_filter(client: str, machine: str, level: str | None = None) -> str:
    """Return restic's ``--tag`` value that selects one machine's (or level's) snapshots."""
    tags = [f"client={client}", f"machine={machine}"]
    if level is not None:
        tags.append(f"level={level}")
    return ",".join(tags)


def keep_args(keep: dict[str, Any]) -> list[str]:
    """Given a level's ``keep`` table, return restic forget's ``--keep-*`` arguments."""
    args = []
    for key, value in keep.items():
        args += [f"--keep-{key}", str(value)]
    return args


def windows_in_place_args(snapshot: str, paths: list[str]) -> list[list[str]]:
    """Given Windows paths in a snapshot, return the ``restic restore`` arguments that put them
    back where they were: one restore per drive.

    restic keeps ``C:\\Users\\x`` as ``/C/Users/x``; restoring ``SNAPSHOT:/C`` into ``C:\\``
    maps it back, with ``--include`` paths relative to the drive. Raise UsageError for a path
    that is not an absolute Windows path.
    """
    by_drive: dict[str, list[str]] = {}
    for path in paths:
        match = re.fullmatch(r"([A-Za-z]):[\\/]*(.*)", path, re.S)
        if not match:
            raise UsageError(f"{path!r} is not an absolute Windows path like C:\\Users")
        inside = "/" + match[2].replace("\\", "/").strip("/")
        by_drive.setdefault(match[1].upper(), []).append(inside)
    commands = []
    for drive, includes in sorted(by_drive.items()):
        command = ["restore", f"{snapshot}:/{drive}", "--target", f"{drive}:\\"]
        if "/" not in includes:  # else the whole drive is wanted
            for include in includes:
                command += ["--include", include]
        commands.append(command)
    return commands


class LineSplitter(RecordSplitter):
    """Feed byte chunks, get complete text lines passed to ``on_line`` (each cut to
    :data:`~recoverd.transport.MAX_RECORD` bytes at most)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        super().__init__(lambda line: on_line(line.decode("utf-8", "replace")))


MAX_MESSAGES = 200
"""Lines of restic's other output kept for an error message (the last ones)."""
MAX_ERRORS = 10_000
"""Items restic could not read or restore kept in memory (their count stays exact)."""


RETRY_NOTICE = re.compile(r"\) returned error, retrying after ")
"""What restic prints while it retries an operation on the repository (``Save(<data/1f..>)
returned error, retrying after 1.5s: ...``): not progress."""


class BackupOutput:
    """Parse ``restic backup --json``: progress lines, the summary, errors and warnings."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.summary: dict[str, Any] | None = None
        self.unreadable: list[str] = []
        """The first MAX_LISTED items restic could not read (``unreadable_count``: all)."""
        self.unreadable_count = 0
        self.missing: list[str] = []
        self.messages: deque[str] = deque(maxlen=MAX_MESSAGES)
        self.version_text: str | None = None
        """``restic version`` as the wrapper reported it (:func:`version_check`), if it did."""
        self.moved_at = time.monotonic()
        """When restic last moved on: its status counters changed, or it printed anything but
        a status line or a retry notice (:meth:`moved`)."""
        self._counters: tuple[Any, ...] | None = None

    def moved(self) -> float:
        """Return when restic last moved on (``time.monotonic()``), for stall detection: a
        restic retrying a full or unreachable repository for minutes repeats its status."""
        return self.moved_at

    def stdout_line(self, line: str) -> None:
        message = _json(line)
        if message is not None and message.get("message_type") == "status":
            counters = tuple(
                message.get(key)
                for key in ("files_done", "bytes_done", "total_files", "total_bytes")
            )
            if counters != self._counters:
                self._counters, self.moved_at = counters, time.monotonic()
        elif line.strip():
            self.moved_at = time.monotonic()
        if message is None:
            return
        if message.get("message_type") == "summary":
            self.summary = message
        elif message.get("message_type") == "status" and self.progress:
            self.progress(
                Progress(
                    fraction=message.get("percent_done"),
                    files_done=message.get("files_done"),
                    files_total=message.get("total_files"),
                    bytes_done=message.get("bytes_done"),
                    bytes_total=message.get("total_bytes"),
                    eta_s=message.get("seconds_remaining"),
                )
            )

    def stderr_line(self, line: str) -> None:
        if line.startswith(VERSION_MARKER):
            self.version_text = line[len(VERSION_MARKER) :]
            return
        if line.strip() and not RETRY_NOTICE.search(line):
            self.moved_at = time.monotonic()
        message = _json(line)
        if message and message.get("message_type") == "error":
            self.unreadable_count += 1
            if len(self.unreadable) < MAX_LISTED:
                self.unreadable.append(message.get("item") or _error_text(message.get("error")))
            return
        # restic 0.14 skips a missing top-level path with exit 0 and only this text.
        skipped = re.match(r"^(?:Warning: )?(.*) does not exist, skipping$", line)
        if skipped:
            if len(self.missing) < MAX_LISTED:
                self.missing.append(skipped.group(1))
        elif line.strip():
            self.messages.append(line)


def _json(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("Path") or error)
    return str(error)


def _snapshot(item: dict[str, Any]) -> Snapshot:
    """Given a snapshot as restic prints it in JSON (``snapshots``, ``ls``), return it."""
    tags = tuple(item.get("tags") or ())
    summary = item.get("summary") or {}
    return Snapshot(
        id=item["id"],
        short_id=item.get("short_id") or item["id"][:8],
        time=item["time"],
        level=next((t[6:] for t in tags if t.startswith("level=")), None),
        paths=tuple(item.get("paths") or ()),
        tags=tags,
        files=summary.get("total_files_processed"),
        size=summary.get("total_bytes_processed"),
        original=item.get("original"),
    )


def repository_missing(exit_status: int | None, stderr: str) -> bool:
    """Given how a restic command ended, return True if it found no repository at all."""
    text = stderr.lower()
    # 0.17+ says so with exit 10; 0.14 only with its text: "unable to open config file:
    # stat .../config: no such file or directory" for a local repository, "unable to open
    # config file: Lstat: file does not exist" for an sftp one.
    return exit_status == 10 or (
        "unable to open config file" in text
        and ("no such file" in text or "file does not exist" in text)
    )


def classify_failure(outcome: CommandOutcome, what: str, program: str) -> Exception:
    """Given a failed restic command, return the typed error that says what to fix."""
    text = redact(outcome.stderr.decode("utf-8", "replace"))
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("{")]
    tail = " / ".join(lines[-3:]) or "no message"
    status = outcome.exit_status
    if status is None:
        return EngineError(f"{what}: restic was killed by signal {outcome.signal}")
    if status == 127 or re.search(r"(restic|exec).*not found", text):
        return ToolMissing(
            f"{what}: restic is not installed on the machine ({program!r} not found); "
            "install restic 0.14 or later, or set the machine's `restic` key to its path"
        )
    if status == 130:
        return Interrupted(f"{what}: restic was interrupted")
    if status == 12 or "wrong password" in text:
        return WrongPassword(
            f"{what}: wrong repository password (the password reference of the repository "
            "does not open it)"
        )
    if status == 11 or "repository is already locked" in text or "unable to create lock" in text:
        return RepositoryLocked(f"{what}: the repository is locked by another process: {tail}")
    if "no space left on device" in text.lower():
        return EngineError(
            f"{what}: no space left on device (the repository's storage, or restic's cache on "
            f"the machine, is full; free space there and run again): {tail}"
        )
    if "host key verification failed" in text.lower():
        return EngineError(
            f"{what}: Host key verification failed: restic on the machine runs ssh to reach "
            "the sftp repository, and that ssh does not know the storage server's host key; "
            "add it to the machine user's ~/.ssh/known_hosts after checking its fingerprint "
            f"(`recoverd enroll MACHINE` prints the exact command): {tail}"
        )
    if status == 10 or "Is there a repository at the following location?" in text:
        return EngineError(f"{what}: the repository does not exist or cannot be opened: {tail}")
    return EngineError(f"{what}: restic exited with status {status}: {tail}")


RESTORE_AND_STAT = (
    # restic's own lines go to stderr, so that stdout carries only the sizes; restic must not
    # read the paths on stdin, which are stat's.
    'restic_ "$@" </dev/null >&2\n'
    "status=$?\n"
    "xargs -0 -r stat --printf '%s\\t%n\\0' -- 2>/dev/null\n"
    'exit "$status"\n'
)
"""``restic restore ARGS``, then the size of every path on stdin that exists now (``SIZE<tab>
PATH<NUL>``); the exit status is restic's."""

PATH_FACTS = (
    'xargs -0 -r sh -c \'exec find "$@" -maxdepth 0 -printf '
    '"%y\\\\t%s\\\\t%T@\\\\t%m\\\\t%U\\\\t%G\\\\t%p\\\\0%l\\\\0"\' recoverd-facts'
)
"""Shell: for every absolute path on stdin (NUL-separated) that exists, two NUL-terminated
fields: ``TYPE<tab>SIZE<tab>MTIME<tab>MODE<tab>UID<tab>GID<tab>PATH`` (find's ``%y %s %T@ %m
%U %G %p``, the path's own facts: a symlink is not followed) and the link target (empty for
anything but a symlink). Every component but the last is resolved, as any write would."""

RESTORE_SELECTED = (
    "t=$(mktemp -d) || exit 97\n"
    "trap 'rm -rf \"$t\"' EXIT\n"
    'cat > "$t/list"\n'
    'sel() { sed -z -n "s/^$1//p" "$t/list"; }\n'
    # Nothing that the plan found a folder, or missing, may have become a symlink since.
    'sel C | xargs -0 -r sh -c \'exec find "$@" -maxdepth 0 -type l -printf "%p\\\\0"\' x '
    '>"$t/links" 2>/dev/null\n'
    'if [ -s "$t/links" ]; then cat "$t/links"; exit 98; fi\n'
    # What is replaced goes first; rm without -r never removes a folder.
    "sel R | xargs -0 -r rm -f -- >&2 || exit 99\n"
    "mode=$1; shift\n"
    "status=0\n"
    'if [ "$mode" = all ]; then restic_ "$@" </dev/null >&2; status=$?\n'
    'elif [ "$mode" = some ]; then\n'
    "  export p r t\n"
    # xargs splits the patterns over as few restic commands as the argv limit allows.
    "  sel I | xargs -0 -r sh -c '\n"
    "    prog=$1; k=$2; shift 2; i=0\n"
    '    for a; do i=$((i+1)); if [ $i -le $k ]; then set -- "$@" "$a"; '
    'else set -- "$@" --include "$a"; fi; done\n'
    "    shift $i\n"
    '    RESTIC_PASSWORD=$p RESTIC_REPOSITORY=$r RESTIC_PROGRESS_FPS=1 "$prog" "$@" '
    '</dev/null >&2 || { echo $? >"$t/status"; exit 255; }\n'
    '  \' recoverd-restore "$0" $# "$@"\n'
    '  [ -s "$t/status" ] && status=$(cat "$t/status")\n'
    "fi\n"
    "sel F | " + PATH_FACTS + " 2>/dev/null\n"
    'exit "$status"\n'
)
"""Restore part of a snapshot safely; stdin holds NUL-terminated records, each tagged by its
first character: ``C`` a path that must not be a symlink now (else: print those that are,
exit 98, nothing written), ``R`` a path to remove first (a file or symlink being replaced),
``I`` a restic ``--include`` pattern, ``F`` a path whose facts (:data:`PATH_FACTS`) are printed
afterwards. ``$1`` is ``all`` (restore the whole snapshot: ``restic_ $2...``), ``some`` (only
the ``I`` patterns) or ``none``; the exit status is restic's."""
OVERWRITE_VERSION = (0, 17, 0)
"""From this version restic overwrites an existing file only where its content differs from
the snapshot (it reads the file to tell), and ``--verify`` checks only what it wrote."""
LINKS_APPEARED = 98
"""RESTORE_SELECTED's exit status when a path that must not be a symlink now is one."""


def include_pattern(path: str) -> str:
    """Return a restic ``--include`` pattern that matches ``path`` (and what is below it)
    only: glob characters and backslashes in a name are escaped with a backslash (restic
    matches each name with Go's ``filepath.Match``)."""
    return re.sub(r"([*?\[\\])", r"\\\1", path)


@dataclass
class RestoreReport:
    """What one ``restic restore`` (with ``--verify``: and its check) reported."""

    failed: list[tuple[str, str]] = field(default_factory=list)
    """(item, problem) restic could not restore and went past (a damaged pack file)."""
    mismatches: list[tuple[str, str]] = field(default_factory=list)
    """(file, problem) that ``--verify`` found different from the snapshot."""
    verified: int | None = None
    """How many files ``--verify`` checked; None without ``--verify`` or when it found
    differences (restic then does not say)."""
    sizes: dict[str, int] | None = None
    """Size of every path asked about that exists after the restore (``sizes_of``); None when
    not asked."""
    version: tuple[int, int, int] | None = None
    """The version of the restic that restored (:meth:`ResticEngine.restore_selected`)."""
    facts: bytes | None = None
    """:data:`PATH_FACTS` output for the paths asked about after the restore
    (:meth:`ResticEngine.restore_selected`); None when not asked."""

    def raise_for_failed(self, snapshot: str) -> None:
        """Raise EngineError naming the items restic could not restore, if there are any."""
        if self.failed:
            items = [f"{path}: {problem}" for path, problem in self.failed]
            shown = "; ".join(items[:5]) + (" ..." if len(items) > 5 else "")
            raise EngineError(f"restore of {snapshot}: {len(items)} item(s) failed: {shown}")


class RestoreOutput:
    """Parse what ``restic restore [--verify]`` prints, stdout and stderr alike.

    restic 0.14 reports a file it could not restore, and one that ``--verify`` found different
    (``Unexpected content in PATH, starting at offset N``, ``Invalid file size for PATH:
    expected N, got M``), the same way: ``ignoring error for ITEM: PROBLEM`` on stderr, then
    ``Fatal: There were N errors`` with exit status 1. It verifies only after a restore without
    errors, and says so on stdout (``verifying files in TARGET``), so the errors of a command
    that got that far are verification's.
    """

    def __init__(self) -> None:
        self.report = RestoreReport()
        self.errors: list[tuple[str, str]] = []
        """The first MAX_ERRORS items (``error_count``: all of them)."""
        self.error_count = 0
        self.other: deque[str] = deque(maxlen=MAX_MESSAGES)
        self.version_text: str | None = None
        self._verifying = False

    def line(self, line: str) -> None:
        item = re.match(r"^ignoring error for (.*?): (.*)$", line)
        finished = re.match(r"^finished verifying (\d+) files? in ", line)
        if item:
            self.error_count += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors.append((redact(item[1]), redact(item[2])))
        elif line.startswith(VERSION_MARKER):
            self.version_text = line[len(VERSION_MARKER) :]
        elif line.startswith("verifying files in "):
            self._verifying = True
        elif finished:
            self.report.verified = (self.report.verified or 0) + int(finished[1])
        elif line.startswith(("restoring <Snapshot", "restoring snapshot")):
            self._settle()  # one more restic restore of the same run (a batch of includes)
        elif line.strip():
            self.other.append(line)

    def _settle(self) -> None:
        """File the errors seen so far: verification's if it had started, else the restore's."""
        (self.report.mismatches if self._verifying else self.report.failed).extend(self.errors)
        self.errors, self._verifying = [], False

    def finish(self) -> RestoreReport:
        self._settle()
        return self.report


class NulSizes(RecordSplitter):
    """Feed the byte chunks of ``SIZE<tab>PATH<NUL>`` records; ``found`` maps path -> size."""

    def __init__(self) -> None:
        super().__init__(self._record, b"\0")
        self.found: dict[str, int] = {}

    def _record(self, record: bytes) -> None:
        size, _, path = record.decode("utf-8", "surrogateescape").partition("\t")
        if size.isdigit():
            self.found[path] = int(size)


class ResticEngine(Engine):
    """restic on a POSIX or Windows machine."""

    name = "restic"
    kinds = ("files", "copy")
    os_families = ("posix", "windows")

    def __init__(self, transport: Any, secrets: Any) -> None:
        super().__init__(transport, secrets)
        self._version: tuple[int, int, int] | None = None
        self._listings: dict[str, list[dict[str, Any]]] = {}
        """The nodes of the snapshot :meth:`snapshot` found, by its id."""
        self.lock_hosts_elsewhere: set[str] = set()
        """Host names of the live-looking locks of other hosts that the last
        :meth:`remove_stale_locks` found: only those hosts can tell whether their pids run."""

    @property
    def program(self) -> str:
        return self.transport.machine.restic

    # -- running restic ----------------------------------------------------------------------

    def _credentials(self, repository: Repository) -> bytes:
        password = self.secrets.resolve(
            repository.password, what=f"password of repository {repository.name}"
        )
        if "\n" in password or "\r" in password:
            raise UsageError(f"the password of repository {repository.name} contains a newline")
        return f"{password}\n{repository.url}\n".encode()

    def restic(
        self,
        repository: Repository,
        args: list[str],
        *,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        from_repository: Repository | None = None,
        data: Iterable[bytes] | None = None,
        check_version: bool = False,
        moved: Callable[[], float] | None = None,
    ) -> CommandOutcome:
        """Run ``restic ARGS`` against ``repository`` on the machine and return how it ended.

        ``from_repository`` is the source of a ``restic copy``; its credentials travel on
        stdin too. ``data`` (byte chunks) follows the credentials on restic's stdin: the stream
        of ``backup --stdin``. ``check_version``: see :meth:`command`. ``moved``: see
        :attr:`CommandRequest.moved`.
        """
        variables, credentials = CREDENTIAL_VARIABLES, self._credentials(repository)
        if from_repository is not None:
            variables = COPY_VARIABLES
            credentials += self._credentials(from_repository)
        stdin = credentials if data is None else itertools.chain([credentials], data)
        return self.transport.run(
            CommandRequest(
                self.command(args, variables, check_version=check_version),
                stdin=stdin,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                timeout=timeout,
                moved=moved,
            )
        )

    def run_script(
        self,
        repository: Repository,
        script: str,
        args: list[str],
        *,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
        check_version: bool = False,
    ) -> CommandOutcome:
        """Run a POSIX sh ``script`` with positional ``args`` on the machine; in it, the shell
        function ``restic_ ARGS`` runs restic against ``repository``. Return how it ended.

        The script's stdin holds ``data`` (empty without it): the credentials before it were
        read before the script starts. With ``check_version`` restic's version is reported
        first (:func:`version_check`).
        """
        check = version_check('"$0"') + "\n" if check_version else ""
        argv = ["sh", "-c", SCRIPT_HEAD + check + script, self.program, *args]
        return self.transport.run(
            CommandRequest(
                argv,
                stdin=self._credentials(repository) + (data or b""),
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                timeout=timeout,
            )
        )

    def command(
        self,
        args: list[str],
        variables: tuple[str, ...] = CREDENTIAL_VARIABLES,
        *,
        check_version: bool = False,
    ) -> list[str]:
        """Return the argv that runs ``restic ARGS`` on the machine with ``variables`` taken
        from the first lines of stdin: through ``sh`` on POSIX, through PowerShell on Windows.

        ``check_version`` (POSIX only: see :attr:`reports_version`): the command first reports
        restic's version on stderr and refuses a restic older than 0.14 (:func:`version_check`).
        """
        if self.transport.os_family == "windows":
            script = powershell.start_process(
                self.program,
                args,
                env_from_stdin=variables,
                env={"RESTIC_PROGRESS_FPS": "1"},
            )
            return powershell.encoded(script)
        wrapper = sh_wrapper(variables, check_version=check_version)
        return ["sh", "-c", wrapper, "recoverd-restic", self.program, *args]

    @property
    def reports_version(self) -> bool:
        """Whether a command can report restic's version itself (``check_version``), so that
        no separate ``restic version`` is needed: on POSIX machines."""
        return self.transport.os_family == "posix"

    @property
    def knows_version(self) -> bool:
        """Whether restic's version was read already (this engine serves one run)."""
        return self._version is not None

    def version(self) -> tuple[int, int, int]:
        """Return restic's version on the machine. Raise ToolMissing or EngineError."""
        if self._version is None:
            outcome = self.transport.run(CommandRequest([self.program, "version"], timeout=60))
            if not outcome.ok:
                raise classify_failure(outcome, "restic version", self.program)
            self.take_version(outcome.stdout.decode("utf-8", "replace"))
        assert self._version is not None
        return self._version

    def take_reported_version(self, text: str | None, outcome: CommandOutcome) -> None:
        """Given the version a command with ``check_version`` reported (None if it did not)
        and how the command ended, remember the version. Raise ToolMissing if restic is
        missing or older than 0.14, EngineError if the version cannot be read; do nothing if
        the command failed before it asked restic (the command's own failure says why)."""
        if text is None and outcome.exit_status == 127:
            raise classify_failure(outcome, "restic version", self.program)
        if text is not None or outcome.exit_status == TOO_OLD:
            self.take_version(text, outcome.exit_status)

    def take_version(self, text: str | None, exit_status: int | None = None) -> None:
        """Given ``restic version`` output (as a wrapper reported it, with the command's
        ``exit_status``), remember the version. Raise ToolMissing if restic is older than 0.14,
        EngineError if the text names no version."""
        found = parse_version(text or "")
        if found is None:
            shown = (text or "nothing")[:80]
            raise EngineError(f"cannot read restic's version from {shown!r}")
        if found < MIN_VERSION or exit_status == TOO_OLD:
            raise too_old(found)
        self._version = found

    def repository_exists(self, repository: Repository) -> bool:
        """Return whether ``repository`` exists, as the machine reaches it (``restic cat
        config``). Raise the typed error of :func:`classify_failure` if it cannot tell (the
        machine cannot reach the storage, a wrong password, ...)."""
        probe = self.restic(repository, ["cat", "config"], timeout=300)
        if probe.ok:
            return True
        if repository_missing(probe.exit_status, probe.stderr.decode("utf-8", "replace")):
            return False
        raise classify_failure(probe, f"open repository {repository.name}", self.program)

    def ensure_repository(self, repository: Repository) -> bool:
        """Initialise ``repository`` if it does not exist; return True if it was created."""
        if self.repository_exists(repository):
            return False
        created = self.restic(repository, ["init"], timeout=300)
        if created.ok:
            return True
        if b"already" in created.stderr:  # another machine initialised it a moment ago
            return False
        raise classify_failure(created, f"initialise repository {repository.name}", self.program)

    # -- engine operations -------------------------------------------------------------------

    def backup(self, request: BackupRequest, progress: ProgressCallback | None = None) -> Outcome:
        """Back up the level's paths; ``partial`` lists the files restic could not read."""
        level, machine = request.level, request.machine
        args = [
            "backup",
            "--json",
            "--host",
            machine.name,
            "--tag",
            f"recoverd,{tag_filter(request.client, machine.name, level.name)}",
        ]
        for pattern in level.exclude:
            args += ["--exclude", pattern]
        if level.vss and self.transport.os_family == "windows":
            args.append("--use-fs-snapshot")  # a VSS snapshot: open and locked files included
        args += ["--", *level.paths]
        # A repository is opened (a key derivation: about half a second) only by the backup
        # itself; only when that finds no repository is it created, and the backup run again.
        # On Windows it is probed first: a backup that finds none would take a VSS snapshot for
        # nothing.
        created = False
        if not self.reports_version:
            self.version()
        if self.transport.os_family == "windows":
            created = self.ensure_repository(request.repository)
        parsed, outcome, duration = self._backup_command(request.repository, args, progress)
        if repository_missing(outcome.exit_status, "\n".join(parsed.messages)):
            created = self.ensure_repository(request.repository)
            parsed, outcome, duration = self._backup_command(request.repository, args, progress)
        if outcome.exit_status not in (0, 3) or parsed.summary is None:
            if parsed.messages:
                outcome.stderr = "\n".join(parsed.messages).encode()
            raise classify_failure(outcome, f"backup of {level.name}", self.program)
        version = self.version()
        summary = parsed.summary
        unreadable = parsed.unreadable + [f"{p} (does not exist)" for p in parsed.missing]
        unreadable_count = parsed.unreadable_count + len(parsed.missing)
        stats = {
            "files_new": summary.get("files_new", 0),
            "files_changed": summary.get("files_changed", 0),
            "files_unmodified": summary.get("files_unmodified", 0),
            "dirs_new": summary.get("dirs_new", 0),
            "dirs_changed": summary.get("dirs_changed", 0),
            "files_processed": summary.get("total_files_processed", 0),
            "bytes_processed": summary.get("total_bytes_processed", 0),
            "bytes_added": summary.get("data_added", 0),
            "duration_s": round(duration, 3),
            "restic_version": ".".join(map(str, version)),
            "repository_created": created,
        }
        state, error = "succeeded", None
        if unreadable:
            state = "partial"
            stats["unreadable_count"] = unreadable_count
            stats["unreadable"] = unreadable[:MAX_LISTED]
            shown = ", ".join(unreadable[:5]) + (" ..." if unreadable_count > 5 else "")
            error = f"{unreadable_count} item(s) could not be read: {shown}"
        return Outcome(state, summary.get("snapshot_id"), stats, error)

    def _backup_command(
        self, repository: Repository, args: list[str], progress: ProgressCallback | None
    ) -> tuple[BackupOutput, CommandOutcome, float]:
        """Run ``restic backup`` ARGS; return its parsed output, how it ended and its seconds.

        On POSIX the same command reports restic's version first, unless it is known already
        (this engine serves one run); raise ToolMissing or EngineError if that version is too
        old or cannot be read.
        """
        parsed = BackupOutput(progress)
        out, err = LineSplitter(parsed.stdout_line), LineSplitter(parsed.stderr_line)
        check = not self.knows_version and self.reports_version
        started = time.monotonic()
        outcome = self.restic(
            repository, args, on_stdout=out, on_stderr=err, check_version=check, moved=parsed.moved
        )
        out.flush()
        err.flush()
        if check:
            self.take_reported_version(parsed.version_text, outcome)
        return parsed, outcome, time.monotonic() - started

    def snapshots(
        self, client: str, machine: Machine, repository: Repository, level: str | None = None
    ) -> list[Snapshot]:
        """Return the machine's snapshots in ``repository`` (of ``level`` if given)."""
        args = ["snapshots", "--json", "--tag", tag_filter(client, machine.name, level)]
        outcome = self.restic(repository, args, timeout=600)
        if not outcome.ok:
            raise classify_failure(outcome, f"list snapshots of {repository.name}", self.program)
        found = [_snapshot(item) for item in json.loads(outcome.stdout or b"[]") or []]
        return sorted(found, key=lambda s: s.time)

    def snapshot(
        self, client: str, machine: Machine, repository: Repository, level: str, wanted: str
    ) -> Snapshot | None:
        """Return the level's snapshot ``wanted`` (an id or its prefix), or None if restic
        finds no single snapshot by that id or it is not one of the level's.

        One ``restic ls`` answers, and its listing is kept: the restore plan's :meth:`ls` of
        that snapshot then needs no second command (each opens the repository, a key
        derivation). Failures come back as None: :meth:`snapshots` says what is wrong.
        """
        if not re.fullmatch(r"[0-9a-f]+", wanted):
            return None  # restic would take "latest" and the like
        try:
            item, nodes = self._listing(repository, wanted)
        except EngineError:
            return None
        wanted_tags = set(tag_filter(client, machine.name, level).split(","))
        if item is None or not wanted_tags <= set(item.get("tags") or ()):
            return None
        found = _snapshot(item)
        self._listings = {found.id: nodes}
        return found

    def forget(self, request: BackupRequest) -> Outcome:
        """Apply ``keep`` to the level's snapshots (restic forget, without prune)."""
        tags = tag_filter(request.client, request.machine.name, request.level.name)
        args = ["forget", "--json", "--group-by", "host", "--tag", tags]
        args += keep_args(request.level.keep)
        started = time.monotonic()
        outcome = self.restic(request.repository, args, timeout=3600)
        if not outcome.ok:
            raise classify_failure(outcome, f"forget in {request.repository.name}", self.program)
        groups = json.loads(outcome.stdout or b"[]") or []
        kept = sum(len(g.get("keep") or []) for g in groups)
        removed = sum(len(g.get("remove") or []) for g in groups)
        stats = {
            "snapshots_kept": kept,
            "snapshots_removed": removed,
            "duration_s": round(time.monotonic() - started, 3),
        }
        return Outcome("succeeded", None, stats)

    def restore_snapshot(
        self,
        repository: Repository,
        snapshot: str,
        target: str,
        include: tuple[str, ...] = (),
    ) -> Outcome:
        """Restore ``snapshot`` (only ``include`` paths, if given) below ``target`` on the machine.

        restic recreates each file's full path under ``target`` (on Windows a snapshot's
        ``C:\\Users`` comes back as ``TARGET\\C\\Users``). Raise EngineError if restic fails.
        """
        started = time.monotonic()
        report = self.restore(repository, snapshot, target, include=include)
        report.raise_for_failed(snapshot)
        stats = {"duration_s": round(time.monotonic() - started, 3), "target": target}
        return Outcome("succeeded", snapshot, stats)

    def restore_files(
        self,
        repository: Repository,
        snapshot: str,
        target: str,
        include: tuple[str, ...] = (),
    ) -> list[str]:
        """Restore ``snapshot`` (only ``include`` patterns, if given) below ``target``; return
        the items restic could not restore (``/home/a.txt: ciphertext verification failed``)
        and went on past, as restic does for a damaged file.

        Raise EngineError (or a more precise subclass) if restic failed for another reason.
        """
        report = self.restore(repository, snapshot, target, include=include)
        return [f"{path}: {problem}" for path, problem in report.failed]

    def restore(
        self,
        repository: Repository,
        snapshot: str,
        target: str,
        *,
        include: tuple[str, ...] = (),
        verify: bool = False,
        sizes_of: list[str] | None = None,
    ) -> RestoreReport:
        """Restore ``snapshot`` (only ``include`` patterns, if given) below ``target`` and
        return what restic reported.

        With ``verify``, restic then reads every restored file back and compares it with the
        snapshot's content hashes (``restore --verify``, in the same command). With
        ``sizes_of`` (POSIX machines), the same remote command then reads the size of those
        paths, for a check of the caller's own. Items restic could not restore or found
        different are in the report, not raised.

        Raise EngineError (or a more precise subclass) if restic failed for another reason.
        """
        args = ["restore", snapshot, "--target", target, *(["--verify"] if verify else [])]
        for path in include:
            args += ["--include", path]
        output = RestoreOutput()
        out, err = LineSplitter(output.line), LineSplitter(output.line)
        if sizes_of is None:
            outcome = self.restic(repository, args, on_stdout=out, on_stderr=err)
        else:
            sizes = NulSizes()
            names = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in sizes_of)
            outcome = self.run_script(
                repository, RESTORE_AND_STAT, args, on_stdout=sizes, on_stderr=err, data=names
            )
            output.report.sizes = sizes.found
        out.flush()
        err.flush()
        report = output.finish()
        if not outcome.ok and not (report.failed or report.mismatches):
            outcome.stderr = "\n".join(output.other).encode()
            raise classify_failure(outcome, f"restore of {snapshot}", self.program)
        return report

    def restore_selected(
        self,
        repository: Repository,
        snapshot: str,
        target: str,
        *,
        includes: list[str] | None,
        remove: list[str],
        no_links: list[str],
        facts_of: list[str],
        verify: bool = False,
    ) -> RestoreReport:
        """In one command on the machine: make sure none of ``no_links`` is a symlink now,
        remove ``remove`` (files and symlinks being replaced; never a folder), restore
        ``snapshot`` below ``target`` (only the ``includes`` patterns, split over as few restic
        commands as the argv limit allows; None: all of it; empty: nothing), then read the
        facts of ``facts_of`` (:data:`PATH_FACTS`, in the report's ``facts``).

        Raise RestoreRefused naming the paths of ``no_links`` that are symlinks now (nothing
        was written), EngineError (or a more precise subclass) if restic failed for a reason
        other than damaged items or verification differences, which are in the report.
        """
        args = ["restore", snapshot, "--target", target, *(["--verify"] if verify else [])]
        mode = "all" if includes is None else "some" if includes else "none"
        records = [("C", no_links), ("R", remove), ("I", includes or []), ("F", facts_of)]
        data = b"".join(
            tag.encode() + path.encode("utf-8", "surrogateescape") + b"\0"
            for tag, paths in records
            for path in paths
        )
        output = RestoreOutput()
        err = LineSplitter(output.line)
        stdout: list[bytes] = []
        outcome = self.run_script(
            repository,
            RESTORE_SELECTED,
            [mode, *args],
            on_stdout=stdout.append,
            on_stderr=err,
            data=data,
            check_version=not self.knows_version,
        )
        err.flush()
        if not self.knows_version:
            self.take_reported_version(output.version_text, outcome)
        if outcome.exit_status == LINKS_APPEARED:
            links = [p.decode("utf-8", "surrogateescape") for p in b"".join(stdout).split(b"\0")]
            links = [link for link in links if link]
            shown = ", ".join(links[:5]) + (" ..." if len(links) > 5 else "")
            raise RestoreRefused(
                f"{len(links)} path(s) became symbolic link(s) after the plan was made: {shown}; "
                "nothing was written. Look at who changes them, then plan again"
            )
        if outcome.exit_status == 99:
            raise EngineError(
                f"cannot remove the files the restore replaces on {self.transport.machine.name}: "
                f"{redact(' '.join(output.other))[-300:]}"
            )
        report = output.finish()
        report.facts, report.version = b"".join(stdout), self._version
        if not outcome.ok and not (report.failed or report.mismatches):
            outcome.stderr = "\n".join(output.other).encode()
            raise classify_failure(outcome, f"restore of {snapshot}", self.program)
        return report

    def check(self, repository: Repository, subset: str) -> list[str]:
        """Run ``restic check --read-data-subset SUBSET`` (``n/N``): the repository's
        structure and the data of one N-th of its pack files. Return the problems restic
        found (an empty list when the repository is sound).

        Raise EngineError (or a more precise subclass) if the check could not run.
        """
        outcome = self.restic(repository, ["check", "--read-data-subset", subset], timeout=None)
        text = redact((outcome.stdout + b"\n" + outcome.stderr).decode("utf-8", "replace"))
        if outcome.ok:
            return []
        if "repository contains errors" not in text:
            raise classify_failure(outcome, f"check of {repository.name}", self.program)
        problems = [
            line.strip()
            for line in text.splitlines()
            if line.strip()
            and not line.startswith(("[", "using temporary cache", "create exclusive lock"))
            and not re.match(r"^(load|check|read|Fatal: repository contains)", line)
        ]
        return problems or ["restic check found errors in the repository"]

    def windows_in_place_problem(self) -> str | None:
        """Return why the machine's restic cannot restore in place on Windows, or None.

        Raise ToolMissing or EngineError if restic's version cannot be read.
        """
        if self.version() >= SUBFOLDER_VERSION:
            return None
        found = ".".join(map(str, self.version()))
        return (
            f"restoring in place on Windows needs restic 0.16 or later on the machine (it has "
            f"{found}); restore to a folder instead (--to)"
        )

    def restore_windows_in_place(
        self, repository: Repository, snapshot: str, paths: list[str], verify: bool = False
    ) -> RestoreReport:
        """Put ``paths`` of ``snapshot`` back where they were on a Windows machine, overwriting
        (with ``verify``, restic checks every file it wrote: ``restore --verify``); return what
        restic reported, for all drives together.

        Raise ToolMissing if the machine's restic is older than 0.16 (it cannot restore a
        snapshot's subfolder), UsageError for a path that is not absolute, EngineError if
        restic fails.
        """
        problem = self.windows_in_place_problem()
        if problem:
            raise ToolMissing(problem)
        report = RestoreReport()
        for args in windows_in_place_args(snapshot, paths):
            _restore, source, _flag, target, *rest = args
            include = tuple(rest[1::2])
            drive = self.restore(repository, source, target, include=include, verify=verify)
            drive.raise_for_failed(snapshot)
            report.mismatches += drive.mismatches
            if drive.verified is not None:
                report.verified = (report.verified or 0) + drive.verified
        return report

    def prune(self, client: str, machine: Machine, repository: Repository) -> Outcome:
        """Run restic prune on the repository."""
        started = time.monotonic()
        outcome = self.restic(repository, ["prune"], timeout=6 * 3600)
        if not outcome.ok:
            raise classify_failure(outcome, f"prune of {repository.name}", self.program)
        return Outcome("succeeded", None, {"duration_s": round(time.monotonic() - started, 3)})

    def copy(self, request: CopyRequest) -> Outcome:
        """Copy the ``of`` level's snapshots to the target repository (restic copy).

        restic skips snapshots it copied before, so a repeated or caught-up copy sends only
        what is new. The target repository is created if it does not exist.
        """
        self.version()
        created = self.ensure_repository(request.target)
        tags = tag_filter(request.client, request.machine.name, request.of.name)
        started = time.monotonic()
        # --verbose: restic 0.17+ names the snapshots it skips ("was already copied") only then.
        outcome = self.restic(
            request.target, ["copy", "--verbose", "--tag", tags], from_repository=request.source
        )
        if not outcome.ok:
            raise classify_failure(
                outcome,
                f"copy of {request.of.name} from {request.source.name} to {request.target.name}",
                self.program,
            )
        text = outcome.stdout.decode("utf-8", "replace")
        saved = re.findall(r"^snapshot (\w+) saved$", text, re.MULTILINE)
        stats = {
            "snapshots_copied": len(saved),
            "snapshots_already_copied": len(re.findall(r"was already copied", text)),
            "duration_s": round(time.monotonic() - started, 3),
            "repository_created": created,
        }
        return Outcome("succeeded", saved[-1] if saved else None, stats)

    # -- restore side ------------------------------------------------------------------------

    def ls(self, repository: Repository, snapshot: str) -> list[dict[str, Any]]:
        """Return the nodes of ``snapshot`` (``restic ls --json``: name, type, path, size,
        mode, mtime), without the snapshot line. Raise EngineError if restic fails."""
        if snapshot in self._listings:
            return self._listings[snapshot]
        return self._listing(repository, snapshot)[1]

    def _listing(
        self, repository: Repository, snapshot: str
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Return the snapshot line and the nodes of ``restic ls --json SNAPSHOT``. Raise
        EngineError if restic fails."""
        found: list[dict[str, Any] | None] = [None]
        nodes = []

        def keep(line: str) -> None:
            item = _json(line)
            # 0.14 marks lines with struct_type, 0.17 with message_type.
            kind = item and (item.get("struct_type") or item.get("message_type"))
            if kind == "node":
                nodes.append(item)
            elif kind == "snapshot":
                found[0] = item

        lines = LineSplitter(keep)
        outcome = self.restic(repository, ["ls", "--json", snapshot], on_stdout=lines)
        lines.flush()
        if not outcome.ok:
            raise classify_failure(outcome, f"list snapshot {snapshot}", self.program)
        return found[0], nodes

    def link_targets(
        self, repository: Repository, snapshot: str, paths: list[str]
    ) -> dict[str, str]:
        """Return the target of the symlinks at ``paths`` in ``snapshot``, by path (``ls
        --json`` does not show them; ``ls -l`` prints ``PATH -> TARGET``). A target with a line
        break is left out. Raise EngineError if restic fails."""
        wanted, found = set(paths), {}
        batch: list[str] = []
        size = 0
        for path in [*paths, None]:
            # A remote command line is one argument of the shell: stay far below its limit.
            if path is None or size + len(path) > 60_000:
                if batch:
                    outcome = self.restic(repository, ["ls", "-l", snapshot, *batch])
                    if not outcome.ok:
                        raise classify_failure(outcome, f"list links of {snapshot}", self.program)
                    for line in outcome.stdout.decode("utf-8", "surrogateescape").splitlines():
                        # MODE UID GID SIZE DATE TIME PATH -> TARGET
                        listed = re.match(r"^l\S+\s+\d+\s+\d+\s+\d+\s+\S+\s+\S+ (/.*)$", line, re.I)
                        rest = listed[1] if listed else ""
                        for arrow in re.finditer(" -> ", rest):
                            if rest[: arrow.start()] in wanted:
                                found[rest[: arrow.start()]] = rest[arrow.end() :]
                                break
                batch, size = [], 0
            if path is not None:
                batch.append(path)
                size += len(path) + 3
        return found

    def dump(
        self,
        repository: Repository,
        snapshot: str,
        path: str,
        on_stdout: Callable[[bytes], None],
        *,
        archive: str | None = None,
    ) -> None:
        """Stream ``path`` of ``snapshot`` (a folder as a ``tar`` or ``zip`` ``archive``) to
        ``on_stdout``. Raise EngineError if restic fails."""
        args = ["dump", *(["--archive", archive] if archive else []), snapshot, path]
        outcome = self.restic(repository, args, on_stdout=on_stdout)
        if not outcome.ok:
            raise classify_failure(outcome, f"dump of {path} from {snapshot}", self.program)

    def tag(self, repository: Repository, snapshot: str, add: list[str]) -> str:
        """Add tags to ``snapshot`` and return the id of the snapshot that now carries them
        (restic rewrites a snapshot to change its tags). Raise EngineError if restic fails."""
        args = ["tag", *itertools.chain.from_iterable(("--add", t) for t in add), snapshot]
        outcome = self.restic(repository, args, timeout=600)
        if not outcome.ok:
            raise classify_failure(outcome, f"tag snapshot {snapshot}", self.program)
        listed = self.restic(repository, ["snapshots", "--json", "--tag", ",".join(add)])
        if not listed.ok:
            raise classify_failure(listed, f"find tagged snapshot {snapshot}", self.program)
        for item in json.loads(listed.stdout or b"[]") or []:
            if str(item.get("original") or item["id"]).startswith(snapshot):
                return str(item["id"])
        raise EngineError(f"snapshot {snapshot} was tagged but cannot be found again")

    def forget_snapshot(self, repository: Repository, snapshot: str) -> None:
        """Remove one snapshot (one that must not be restored from). Raise EngineError."""
        outcome = self.restic(repository, ["forget", snapshot], timeout=600)
        if not outcome.ok:
            raise classify_failure(outcome, f"forget snapshot {snapshot}", self.program)

    def remove_stale_locks(self, repository: Repository) -> list[dict[str, Any]]:
        """Remove the repository's stale locks, whoever wrote them; return them (``id``,
        ``host``, ``pid``, ``age_s``, ``why``), none if no lock is stale.

        restic's own rule decides, as ``restic unlock`` applies it where it runs: a lock is
        stale when it was not refreshed for 30 minutes (restic refreshes a live lock every 5),
        or when it names this machine's host name and its pid does not run here (a restic
        killed with its connection). The host is asked, with its own clock: never judged by
        the name in the lock alone. Then ``restic unlock`` runs on this machine, which removes
        exactly those; a live lock is never touched. Return none on Windows machines (their
        process ids cannot be checked this way). Raise EngineError if restic cannot list the
        locks or the machine cannot be asked.
        """
        self.lock_hosts_elsewhere = set()
        if self.transport.os_family != "posix":
            return []
        locks = self._locks(repository)
        if not locks:
            return []
        # One command: the host name as restic sees it, the machine's clock, then the pids
        # that still run there.
        probe = self.transport.run(
            CommandRequest(
                [
                    "sh",
                    "-c",
                    'uname -n; date +%s; for p; do ps -p "$p" >/dev/null 2>&1 && echo "$p"; '
                    "done; true",
                    "recoverd-locks",
                    *sorted({str(lock.get("pid") or 0) for _id, lock in locks}),
                ],
                timeout=60,
            )
        )
        words = probe.stdout.decode("utf-8", "replace").split()
        if not probe.ok or len(words) < 2 or not words[1].isdigit():
            raise EngineError(f"cannot check the lock owners on {self.transport.machine.name}")
        hostname, now, running = words[0], int(words[1]), set(words[2:])
        stale = []
        for lock_id, lock in locks:
            why = stale_lock_reason(lock, hostname, now, running)
            if why is None and lock.get("hostname") != hostname:
                self.lock_hosts_elsewhere.add(str(lock.get("hostname")))
            if why is not None:
                stale.append(
                    {
                        "id": lock_id[:8],
                        "host": str(lock.get("hostname")),
                        "pid": lock.get("pid"),
                        "age_s": lock_age(lock, now),
                        "why": why,
                    }
                )
        if not stale:
            return []
        unlocked = self.restic(repository, ["unlock"], timeout=300)
        if not unlocked.ok:
            raise classify_failure(unlocked, f"unlock {repository.name}", self.program)
        return stale

    def _locks(self, repository: Repository) -> list[tuple[str, dict[str, Any]]]:
        """Return the repository's locks: (id, the lock as restic stores it)."""
        listed = self.restic(repository, ["--no-lock", "list", "locks"], timeout=300)
        if not listed.ok:
            raise classify_failure(listed, f"list locks of {repository.name}", self.program)
        locks = []
        for lock_id in listed.stdout.decode().split():
            shown = self.restic(repository, ["--no-lock", "cat", "lock", lock_id], timeout=300)
            lock = _json(shown.stdout.decode("utf-8", "replace").strip()) if shown.ok else None
            if lock is not None:  # else removed meanwhile: its owner finished
                locks.append((lock_id, lock))
        return locks


STALE_LOCK_S = 30 * 60
"""restic's staleTimeout (0.14 to 0.18): a lock not refreshed for this long is stale."""


def lock_age(lock: dict[str, Any], now: int) -> int | None:
    """Return the seconds since ``lock`` was written or refreshed, by the clock ``now`` (Unix
    seconds) of the machine that judges it; None if its time cannot be read."""
    try:
        written = datetime.fromisoformat(str(lock.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return None
    if written.tzinfo is None:
        return None
    return int(now - written.timestamp())


def stale_lock_reason(
    lock: dict[str, Any], hostname: str, now: int, running: set[str]
) -> str | None:
    """Given a restic lock and what the machine that judges it said (its host name, its clock
    ``now``, which of the locks' pids run there), return why the lock is stale by restic's own
    rule, or None if it may belong to a live restic."""
    age = lock_age(lock, now)
    if age is not None and age > STALE_LOCK_S:
        return f"not refreshed for {age // 60} minutes (restic refreshes live locks every 5)"
    pid = str(lock.get("pid") or "")
    if lock.get("hostname") == hostname and pid.isdigit() and pid not in running:
        return f"pid {pid} no longer runs on {hostname}"
    return None


@recoverd.hookimpl
def recoverd_add_engines(register: Any) -> None:
    register.add("restic", ResticEngine)
