"""The restore-target contract: where restored bytes go and how they are checked afterwards.

A restore target is a plugin (hook ``recoverd_add_restore_targets``). The restore action picks
one by the level's kind and the destination the engineer asked for, then calls, in order:

1. :meth:`RestoreTarget.plan` — look, never write: what will be written where, how much, which
   existing files will be replaced, and any reason the restore must not run (a mounted device,
   one too small for the image). The engineer sees the plan before confirming.
2. :meth:`RestoreTarget.write` — restore the snapshot.
3. :meth:`RestoreTarget.verify` — compare what is now on the machine with the snapshot.

A target works through the engine the controller chose for the level (restic files, disk
image), which runs the tools over the machine's transport.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recoverd.engine import Engine, ProgressCallback, Snapshot
    from recoverd.policy.model import Level, Machine, Repository

VERIFY_MODES = ("restic", "full")
"""How a files restore is checked (``--verify``): ``restic`` — restic reads every restored file
back against the snapshot's content hashes (``restore --verify``, in the same command) and
recoverd checks that every file of the snapshot is there with its size; ``full`` — an
independent second read: the snapshot is read again from the repository (``restic dump``),
hashed on the controller and compared with a sha256 of every restored file on the machine."""

DESTINATIONS = ("in-place", "path", "device", "scratch", "boot")
"""Where a restore goes: where the data came from, another path (``--to``), a device, or a
scratch place that is removed afterwards (a restore drill, ``recoverd verify``), or a scratch file
that is booted offline (a boot drill)."""


@dataclass(frozen=True)
class RestoreRequest:
    """One snapshot of one level to restore to a destination on the machine."""

    client: str
    machine: Machine
    level: Level
    repository: Repository
    snapshot: Snapshot
    destination: str | None = None
    """``--to PATH`` or ``--device DEV``; None restores to where the data came from."""
    sample: str = "all"
    """Drills: how many of the snapshot's files to restore (``"10%"``, ``"200"``, ``"all"``)."""
    seed: int = 0
    """Drills: the seed of the random sample, recorded so that the sample can be drawn again."""
    items: tuple[str, ...] = ()
    """``--item``: what to recover from a Windows system image (files, folders or volumes)."""
    verify: str = "restic"
    """Files restores: one of :data:`VERIFY_MODES` (``--verify``)."""
    replace_links: bool = False
    """Files restores: replace a symbolic link found where the snapshot has a folder (or above
    the ``--to`` destination) with that folder (``--replace-links``); without it the plan is
    refused."""
    drill: Level | None = None
    """Drills: the verify level itself, for its own keys (``boot_timeout``, ``expect``, ...)."""
    evidence_dir: str | None = None
    """Drills: where evidence worth keeping goes (a boot drill's screenshot), on the controller."""


@dataclass
class RestorePlan:
    """What a restore will do, worked out before anything is written."""

    target: str
    source: str
    """What is restored, for people: ``3 files, 2 folders from /home`` or ``image of sda2``."""
    destination: str
    bytes_total: int | None = None
    files_total: int | None = None
    created: list[str] = field(default_factory=list)
    """Files that do not exist at the destination now."""
    replaced: list[str] = field(default_factory=list)
    """Existing files that will be overwritten: they differ from the snapshot."""
    unchanged: int = 0
    """Existing files that match the snapshot already (files targets leave them alone)."""
    refusal: str | None = None
    """Why this restore must not run; set by ``plan``, nothing has been written."""
    details: dict[str, Any] = field(default_factory=dict)
    """Facts for the record (device size, file-system type, image format, ...)."""
    files: dict[str, int] = field(default_factory=dict, repr=False)
    """Files targets: every regular file the restore writes, at its destination, with its size
    in the snapshot (what verification expects to find)."""


@dataclass
class Verification:
    """How the restored data compared with the snapshot."""

    method: str
    checked: int
    mismatches: list[str] = field(default_factory=list)
    """What differs, one item each (``/home/a.txt: sha256 differs``)."""

    @property
    def ok(self) -> bool:
        return not self.mismatches


class RestoreTarget(ABC):
    """Where restored bytes go and how they are checked; built with the level's engine."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    """The level kinds (``files``, ``image``) whose snapshots this target restores."""
    destinations: tuple[str, ...] = ()
    """Which of :data:`DESTINATIONS` this target serves."""
    os_families: tuple[str, ...] = ("posix",)
    takes_items = False
    """Whether this target restores parts of a snapshot named by ``--item``
    (:attr:`RestoreRequest.items`) rather than the whole snapshot."""
    leaves_unchanged = False
    """Whether existing files that match the snapshot are left alone (else they are written
    all the same, and the plan says so)."""
    verify_modes: tuple[str, ...] = ()
    """Which of :data:`VERIFY_MODES` this target offers, the default first; empty: it has one
    way of its own (an image's sha256) and ``--verify`` does not apply."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @abstractmethod
    def plan(self, request: RestoreRequest) -> RestorePlan:
        """Given a request, return what restoring it will do; write nothing.

        A restore that must not run comes back with ``refusal`` set. Raise EngineError or
        TransportError if the machine or the repository cannot be asked.
        """

    @abstractmethod
    def write(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> dict[str, Any]:
        """Restore the snapshot as planned; return stats for the record (``bytes_restored``,
        ``files_restored``, ...). Raise EngineError or TransportError on failure."""

    @abstractmethod
    def verify(
        self, request: RestoreRequest, plan: RestorePlan, progress: ProgressCallback | None
    ) -> Verification:
        """Compare what is now at the destination with the snapshot and return the result.

        Raise EngineError or TransportError if the comparison itself cannot run.
        """

    def cleanup(self, request: RestoreRequest, plan: RestorePlan) -> None:
        """Remove what a drill restored into its scratch place (targets of other destinations
        leave their restore where it is: by default, nothing to do).

        Raise EngineError or TransportError if it cannot be removed.
        """
        return None

    def check_repository(self, request: RestoreRequest, subset: str) -> list[str] | None:
        """Check the repository's integrity, reading the data of ``subset`` (``n/N``) of it;
        return the problems found (empty when sound), or None if this target cannot check.

        Raise EngineError or TransportError if the check cannot run.
        """
        return None
