"""The validated policy: plain frozen dataclasses, built only by :mod:`recoverd.policy.load`.

Everything downstream (actions, plugins, the daemon) reads these and never the raw TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from difflib import get_close_matches
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from recoverd.errors import UsageError

LEVEL_KINDS = ("files", "image", "copy", "verify")
BACKUP_KINDS = ("files", "image", "copy")
TRANSPORTS = ("ssh", "winrm", "local")
KEEP_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")
EVENTS = (
    "failed",
    "overdue",
    "stalled",
    "drill-failed",
    "anomaly",
    "offline",
    "resolved",
    "digest",
)
"""What a notification route may be ``on``."""
INCIDENT_EVENTS = EVENTS[:-1]
"""The events of incidents (every event but the daily digest): a route's default ``on``."""
DEFAULT_STALL_AFTER = 30 * 60.0
"""Seconds a run may go without progress before it is stopped (``stall_after``)."""
DEFAULT_ALERT_AFTER = 3 * 86400.0
"""Seconds a skipped offline workstation may stay offline before its ``offline`` alert."""
DEFAULT_WAKE_WAIT = 180.0
"""Seconds to wait for a woken machine's SSH (``wake_wait``)."""
DEFAULT_WAKE_TO = "255.255.255.255:9"
"""Where the controller sends a Wake-on-LAN packet (``wake_to``): the local broadcast, port 9."""
DEFAULT_ANOMALY_SHARE = 0.5
"""``anomaly_changed`` / ``anomaly_shrink`` by default: 50%."""


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
    healthchecks: str | None = None
    """A secret reference to a Healthchecks-compatible ping URL (start, success, fail)."""
    grace: str | None = None
    """How long past its schedule the level may go without a good run before it is overdue
    (a duration like ``6h``; None: one period of its schedule)."""
    stall_after: float | None = None
    """Seconds without progress before a run of this level is stopped (None: the machine's)."""
    anomaly_changed: float | None = None
    """Share of new+changed files that makes a files run an anomaly (None: the machine's)."""
    anomaly_shrink: float | None = None
    """Share by which a snapshot may shrink before it is an anomaly (None: the machine's)."""
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
    since: date | None = None
    """The day the machine was onboarded: the report counts its slots from then (without it,
    from its first recorded run)."""
    mac: str | None = None
    restore: str = "files-in-place"
    offline: str = "skip"
    """``skip``: an unreachable machine's run is recorded skipped; ``fail``: failed."""
    alert_after: float = DEFAULT_ALERT_AFTER
    """Seconds offline after which the skipped run says an ``offline`` alert is due."""
    wake: bool = False
    """Send a Wake-on-LAN packet to ``mac`` before a run, then wait up to ``wake_wait``."""
    wake_via: str | None = None
    """Another machine of the client that sends the packet on this one's LAN."""
    wake_wait: float = DEFAULT_WAKE_WAIT
    wake_to: str = DEFAULT_WAKE_TO
    """``ADDRESS:PORT`` the controller (or ``wake_via``) sends the packet to."""
    stall_after: float = DEFAULT_STALL_AFTER
    anomaly_changed: float = DEFAULT_ANOMALY_SHARE
    anomaly_shrink: float = DEFAULT_ANOMALY_SHARE
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

    def stall_after_for(self, level: Level) -> float:
        """Return the seconds a run of ``level`` may go without progress."""
        return level.stall_after if level.stall_after is not None else self.stall_after


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
    routes: dict[str, NotifyRoute] = field(default_factory=dict)
    """This client's own ``[notify.NAME]`` routes; they cover only this client."""


@dataclass(frozen=True)
class NotifyRoute:
    """A ``[notify.NAME]`` table: where messages about which events (and clients) go."""

    name: str
    urls: tuple[str, ...]
    """Apprise URLs as secret references (a URL may hold a token or a password)."""
    on: tuple[str, ...] = INCIDENT_EVENTS
    clients: tuple[str, ...] = ("*",)
    """Client ids or shell patterns (``acme*``); a client file's route has its own id."""
    digest: str | None = None
    """When the daily digest goes out (an ``every`` expression); set when ``on`` has digest."""
    source: Path | None = None

    def covers(self, client: str) -> bool:
        """Return whether this route is about ``client``."""
        return any(fnmatchcase(client, pattern) for pattern in self.clients)


@dataclass(frozen=True)
class Provider:
    """``provider.toml``: the provider's own settings (every key optional)."""

    name: str | None = None
    timezone: str = "UTC"
    engineers: dict[str, str] = field(default_factory=dict)
    """OS login -> the engineer's name in records."""
    database: str | None = None
    """A secret reference to a ``postgresql://`` URL; None: the embedded SQLite log."""
    routes: dict[str, NotifyRoute] = field(default_factory=dict)
    metrics_textfile: str | None = None
    """``[metrics] textfile``: where node_exporter's textfile collector reads our metrics."""
    witness: tuple[str, ...] = ()
    """``[audit] witness``: ``client/machine:/path`` places that keep a copy of the signed head."""
    source: Path | None = None
    """The file, or None when the policy directory has no provider.toml."""


@dataclass(frozen=True)
class PolicySet:
    """Every client of a policy directory."""

    clients: dict[str, Client]
    provider: Provider = field(default_factory=Provider)

    def routes_for(self, client: str) -> list[NotifyRoute]:
        """Return the provider's routes that cover ``client``, then the client's own."""
        own = self.clients[client].routes.values() if client in self.clients else []
        return [r for r in self.provider.routes.values() if r.covers(client)] + list(own)

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
