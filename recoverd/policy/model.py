"""The validated policy: plain frozen dataclasses, built only by :mod:`recoverd.policy.load`.

Everything downstream (actions, plugins, the daemon) reads these and never the raw TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from recoverd.errors import UsageError

LEVEL_KINDS = ("files", "image", "copy", "verify")
BACKUP_KINDS = ("files", "image", "copy")
TRANSPORTS = ("ssh", "winrm", "local")
KEEP_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")


@dataclass(frozen=True)
class Repository:
    """A restic repository as the machine (or the controller) reaches it."""

    name: str
    url: str
    password: str
    """A secret reference (``env:NAME``, ``file:/path``, ...), never the secret itself."""
    max_parallel: int | None = None


@dataclass(frozen=True)
class Level:
    """One tier of a machine's schedule; which keys matter depends on ``kind``."""

    name: str
    kind: str
    every: str | None = None
    keep: dict[str, Any] = field(default_factory=dict)
    repository: str | None = None
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    vss: bool = True
    device: str | None = None
    target: str | None = None
    """Windows image levels: wbadmin's backup target (a drive like ``E:`` or ``\\\\nas\\share``)."""
    via: str = "machine"
    snapshot: str | None = None
    allow_mounted: bool = False
    of: str | None = None
    to: str | None = None
    sample: str = "10%"
    where: str = "machine"
    boot: bool = False
    """Verify levels of image levels: boot the restored disk in qemu (see recoverd_plugins.boot)."""
    boot_timeout: str = "3m"
    expect: str | None = None
    """Boot drills: console text that means booted; None is a login prompt."""
    probe: tuple[str, ...] = ()


@dataclass(frozen=True)
class Machine:
    """A workstation or server of a client and how to reach it."""

    name: str
    client: str
    transport: str = "ssh"
    address: str | None = None
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    host_key: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 10.0
    restic: str = "restic"
    """The restic program on the machine (a name on its PATH, or a full path)."""
    role: str = "workstation"
    asset_tag: str | None = None
    mac: str | None = None
    restore: str = "files-in-place"
    password: str | None = None
    https: bool = True
    auth: str = "ntlm"
    ca: str | None = None
    cert: str | None = None
    """WinRM ``certificate`` auth: the client certificate (PEM file) on the controller."""
    cert_key: str | None = None
    """WinRM ``certificate`` auth: its private key (PEM file) on the controller."""
    levels: tuple[Level, ...] = ()

    @property
    def qualified_name(self) -> str:
        """``client/machine``: unique across all policy files."""
        return f"{self.client}/{self.name}"

    def level(self, name: str) -> Level | None:
        """Return the level called ``name``, or None."""
        return next((lv for lv in self.levels if lv.name == name), None)


@dataclass(frozen=True)
class Client:
    """A customer company: one policy file."""

    id: str
    name: str
    source: Path
    engineer: str | None = None
    timezone: str = "UTC"
    restore_sla: str | None = None
    repositories: dict[str, Repository] = field(default_factory=dict)
    machines: dict[str, Machine] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySet:
    """Every client of a policy directory."""

    clients: dict[str, Client]

    def machines(self, client: str | None = None) -> list[Machine]:
        """Return all machines, or those of ``client``, in a stable order."""
        return [
            m
            for cid in sorted(self.clients)
            if client is None or cid == client
            for m in self.clients[cid].machines.values()
        ]

    def find_machine(self, name: str) -> Machine:
        """Given ``ws-042`` or ``acme/ws-042``, return the machine.

        Raise UsageError if there is no such machine or the bare name is ambiguous.
        """
        if "/" in name:
            cid, _, mname = name.partition("/")
            client = self.clients.get(cid)
            if client and mname in client.machines:
                return client.machines[mname]
            raise UsageError(f"no machine {name!r} in the policies")
        found = [m for m in self.machines() if m.name == name]
        if not found:
            known = sorted(m.name for m in self.machines())
            hint = get_close_matches(name, known, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UsageError(f"no machine {name!r} in the policies{suffix}")
        if len(found) > 1:
            options = ", ".join(m.qualified_name for m in found)
            raise UsageError(f"machine name {name!r} is ambiguous: say one of {options}")
        return found[0]

    def repository_for(self, machine: Machine, level: Level) -> Repository:
        """Return the repository a backup level of ``machine`` writes to.

        A Windows image level writes to wbadmin's ``target`` instead: it is returned as a
        repository with that name and URL and no password (wbadmin needs none).
        """
        if level.target is not None:
            return Repository(name=level.target, url=level.target, password="")
        return self.clients[machine.client].repositories[level.repository or ""]
