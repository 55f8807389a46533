"""The engine contract: what a backup tool on a machine does for recoverd.

An engine builds a tool's command lines (restic, partclone, wbadmin), runs them through the
:class:`~recoverd.transport.Transport` it is given and parses their output into results. It never
opens connections itself and never writes the maintenance log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recoverd.errors import PluginError

if TYPE_CHECKING:
    from recoverd.policy.model import Level, Machine, Repository
    from recoverd.secrets import SecretResolver
    from recoverd.transport import Transport


@dataclass(frozen=True)
class Progress:
    """How far a long operation is; any figure may be unknown (None)."""

    fraction: float | None = None
    files_done: int | None = None
    files_total: int | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    eta_s: float | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass
class Outcome:
    """What an engine operation produced: a run state and what the log should keep."""

    state: str
    snapshot: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """One restore point."""

    id: str
    short_id: str
    time: str
    level: str | None
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    files: int | None = None
    size: int | None = None
    original: str | None = None
    """The id of the snapshot this one is a copy of (``restic copy``), if it is one."""
    record: dict[str, Any] | None = field(default=None, compare=False)
    """The stats the maintenance log holds for the backup that made this snapshot (an image's
    ``image_sha256``, ...), when the snapshot was chosen from the log's good backups."""


@dataclass(frozen=True)
class BackupRequest:
    """One level of one machine to back up into a repository."""

    client: str
    machine: Machine
    level: Level
    repository: Repository
    baseline: dict[str, Any] | None = field(default=None, compare=False)
    """For an image level: the log's view of the level's last good image that is a default
    restore point, which the image sanity check compares the device with (None: no such image
    yet, or not an image level)."""
    accept_change: bool = False
    """``--accept-change``: image the device even if it no longer looks like ``baseline``."""


@dataclass(frozen=True)
class CopyRequest:
    """Copy one level's snapshots (``of``) from its repository to a second one (``target``)."""

    client: str
    machine: Machine
    level: Level
    of: Level
    source: Repository
    target: Repository


class Engine(ABC):
    """A backup tool driven through a transport."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    """The level kinds (``files``, ``image``, ...) this engine serves."""
    os_families: tuple[str, ...] = ("posix",)

    def __init__(self, transport: Transport, secrets: SecretResolver) -> None:
        self.transport = transport
        self.secrets = secrets

    @classmethod
    def policy_warnings(cls, machine: Machine, level: Level) -> list[str]:
        """Return what ``recoverd check`` should point out about a level this engine would run:
        valid, but likely not what the user wants (by default, nothing)."""
        return []

    @abstractmethod
    def backup(self, request: BackupRequest, progress: ProgressCallback | None = None) -> Outcome:
        """Back up one level; return the outcome. Raise EngineError/TransportError on failure."""

    @abstractmethod
    def snapshots(
        self, client: str, machine: Machine, repository: Repository, level: str | None = None
    ) -> list[Snapshot]:
        """Return the machine's restore points in ``repository``, oldest first."""

    def snapshot(
        self, client: str, machine: Machine, repository: Repository, level: str, wanted: str
    ) -> Snapshot | None:
        """Return the level's snapshot whose id is ``wanted`` or starts with it, if there is
        exactly one; else None.

        This default looks through :meth:`snapshots`; an engine that can ask for one snapshot
        directly overrides it. Raise EngineError/TransportError if the repository cannot be
        read.
        """
        found = [
            s for s in self.snapshots(client, machine, repository, level) if s.id.startswith(wanted)
        ]
        return found[0] if len(found) == 1 else None

    @abstractmethod
    def forget(self, request: BackupRequest) -> Outcome:
        """Apply the level's ``keep`` retention to its snapshots."""

    @abstractmethod
    def prune(self, client: str, machine: Machine, repository: Repository) -> Outcome:
        """Remove data no snapshot references any more."""

    def copy(self, request: CopyRequest) -> Outcome:
        """Copy the ``of`` level's snapshots to ``request.target``; skip those copied before.

        Engines whose ``kinds`` include ``copy`` override this.
        """
        raise PluginError(f"the {self.name} engine cannot copy snapshots between repositories")
