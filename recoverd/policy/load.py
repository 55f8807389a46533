"""Load policy files (TOML, one per client) into :mod:`recoverd.policy.model`.

Every problem of every file is collected and reported at once, one line each:
``FILE: key.path: what is wrong (did you mean 'x'?)``. A file with any problem yields no
client; the others are still checked. Secret values are never echoed: a policy holds only
references, and a value that is not one may be a real password.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from difflib import get_close_matches
from functools import cache, partial
from pathlib import Path
from typing import Any, NoReturn

from recoverd.errors import PolicyError
from recoverd.policy.every import parse_every
from recoverd.policy.model import (
    BACKUP_KINDS,
    DEFAULT_ALERT_AFTER,
    DEFAULT_ANOMALY_SHARE,
    DEFAULT_STALL_AFTER,
    DEFAULT_WAKE_TO,
    DEFAULT_WAKE_WAIT,
    KEEP_KEYS,
    LEVEL_KINDS,
    TRANSPORTS,
    Client,
    Level,
    Machine,
    PolicySet,
    Provider,
    Repository,
)
from recoverd.secrets import VAULT_NAME

SECRET_SCHEMES = ("env", "file", "command", "vault")
ROLES = ("workstation", "server")
RESTORE_MODES = ("files-in-place", "image")
OFFLINE_MODES = ("skip", "fail")
IMAGE_VIA = ("machine", "controller")
VERIFY_WHERE = ("machine", "controller")
BOOT_KEYS = ("boot_timeout", "expect", "probe")
SNAPSHOT_METHODS = ("lvm",)
WINRM_AUTHS = ("ntlm", "kerberos", "credssp", "certificate", "basic")
ENCRYPTING_AUTHS = ("ntlm", "kerberos", "credssp")
"""WinRM auths that encrypt messages themselves, so they may run over plain HTTP."""
PASSWORDLESS_AUTHS = ("certificate", "kerberos")
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "rsa-sha2-256",
    "rsa-sha2-512",
)
RESTIC_BACKENDS = ("local", "sftp", "rest", "s3", "b2", "azure", "gs", "swift", "rclone")

CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""Machine and level names: safe on a command line and in file names."""

_TOP_KEYS = ("client", "repositories", "templates", "machines", "notify")
_LEVEL_COMMON_KEYS = ("name", "kind", "every", "keep", "healthchecks", "grace", "stall_after")
_LEVEL_KIND_KEYS = {
    "files": ("repository", "paths", "exclude", "vss", "anomaly_changed", "anomaly_shrink"),
    "image": ("repository", "device", "via", "snapshot", "allow_mounted", "target"),
    "copy": ("of", "to"),
    "verify": ("of", "sample", "where", "boot", "boot_timeout", "expect", "probe"),
}
_LEVEL_REQUIRED = {
    "files": ("repository", "paths"),
    "image": ("device",),  # and `repository`, or `target` on Windows: see _image_targets()
    "copy": ("of", "to"),
    "verify": ("of",),
}
# Machine keys that only mean something for some transports; the rest apply to all.
_TRANSPORT_KEYS = {
    "address": ("ssh", "winrm"),
    "port": ("ssh", "winrm"),
    "user": ("ssh", "winrm"),
    "password": ("ssh", "winrm"),
    "connect_timeout": ("ssh", "winrm"),
    "identity": ("ssh",),
    "host_key": ("ssh",),
    "known_hosts": ("ssh",),
    "https": ("winrm",),
    "auth": ("winrm",),
    "ca": ("winrm",),
    "cert": ("winrm",),
    "cert_key": ("winrm",),
}
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?")
_RESTIC_DURATION = re.compile(r"(?:[0-9]+[ymdh])+")
_RESTIC_UNIT_DAYS = {"y": 366, "m": 31, "d": 1, "h": 1 / 24}
MAX_SLA_DAYS = 366
"""The longest ``restore_sla``: a contract measures restores in hours or days."""
MAX_KEEP_DAYS = 100 * 366
"""The longest ``keep.within`` (restic cannot count far beyond it either)."""
MAX_KEEP = 1_000_000
"""The largest ``keep`` count: hourly snapshots for a century are fewer."""
MAX_SAMPLE = 1_000_000_000
"""The largest number of files a drill may sample."""
MAX_CONNECT_TIMEOUT = 3600.0
"""The longest ``connect_timeout`` in seconds."""
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SECONDS = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_WAKE_TO = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):([0-9]+)")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TABLE_HEADER = re.compile(r"^[ \t]*\[\[?([^\]\n]*)\]", re.M)
_TOML_POSITION = re.compile(r"^(.*) \(at (?:line (\d+), column (\d+)|end of document)\)$", re.S)


def load_policies(directory: Path, secret_schemes: Iterable[str] = SECRET_SCHEMES) -> PolicySet:
    """Given a policy directory, return the clients of its ``*.toml`` files (sorted by name).

    Hidden files (editor droppings like ``.#acme.toml``) are skipped. Raise PolicyError listing
    every problem of every file, or saying what to do if the directory holds no policy file.
    """
    directory = Path(directory)
    schemes = tuple(secret_schemes)
    # provider.toml holds the provider's settings, not a client; it is checked after the clients.
    from recoverd.policy.provider import PROVIDER_FILE, check_provider

    files = (
        sorted(
            p
            for p in directory.glob("*.toml")
            if not p.name.startswith(".") and p.name != PROVIDER_FILE
        )
        if directory.is_dir()
        else []
    )
    if not files:
        raise PolicyError(
            [
                f"no policy files in {directory}; create {directory}/<client>.toml, "
                "see policies/ in the source for an example"
            ]
        )
    problems: list[str] = []
    clients: dict[str, Client] = {}
    owners: dict[str, str] = {}
    for path in files:
        result = _check_file(path, schemes)
        problems.extend(result.problems)
        if result.client_id is None:
            continue
        if result.client_id in owners:
            problems.append(
                f"{path}: client.id: client id {result.client_id!r} is already used by "
                f"{owners[result.client_id]}; set a different client.id"
            )
            continue
        owners[result.client_id] = str(path)
        if result.client is not None:
            clients[result.client_id] = result.client
    provider = Provider()
    if (directory / PROVIDER_FILE).is_file():
        # Names of clients are checked only against a complete set of clients.
        provider, found = check_provider(
            directory / PROVIDER_FILE, schemes, {} if problems else clients
        )
        problems.extend(found)
    if problems:
        raise PolicyError(problems)
    return PolicySet(clients=clients, provider=provider)


def client_zones(directory: Path, client_ids: Iterable[str]) -> dict[str, str]:
    """Given a policy directory and client ids, return the time zone each client's policy file
    names, without checking anything else in the files.

    For showing times in local time (``recoverd log``): that must stay quick on a large policy
    and work while a policy is broken. A client's file is looked for as ``<id>.toml`` first,
    then among the others. A client without a readable file or a valid ``client.timezone``
    is left out.
    """
    wanted = set(client_ids)
    directory = Path(directory)
    if not wanted or not directory.is_dir():
        return {}
    files = sorted(p for p in directory.glob("*.toml") if not p.name.startswith("."))
    files.sort(key=lambda p: p.stem not in wanted)  # the likely files first
    zones: dict[str, str] = {}
    for path in files:
        if wanted <= zones.keys():
            break
        try:
            client = _client_table(path.read_bytes().decode("utf-8-sig"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, _TooDeep):
            continue
        if not isinstance(client, dict):
            continue
        client_id = client.get("id", path.stem)
        if isinstance(client_id, str) and client_id in wanted and client_id not in zones:
            try:
                zones[client_id] = _timezone(client.get("timezone", "UTC"))
            except _Invalid:
                continue
    return zones


def _client_table(text: str) -> Any:
    """Return the ``client`` table of a policy's TOML text (None if there is none).

    ``[client]`` usually comes first: the text before the next table header is parsed
    alone, which is quick for a policy of hundreds of machines. A header-like line inside a
    string or an array leaves that part unterminated, so a part that parses is exactly the
    start of the document; when it does not parse or holds no client, the whole text is.
    Raise TOMLDecodeError if the text is no TOML, _TooDeep if it nests too deeply.
    """
    for header in _TABLE_HEADER.finditer(text):
        if header.group(0).lstrip() != "[client]":
            try:
                client = _parse_toml(text[: header.start()]).get("client")
            except (tomllib.TOMLDecodeError, _TooDeep):
                break
            if client is not None:
                return client
            break
    return _parse_toml(text).get("client")


def load_policy_file(
    path: Path, secret_schemes: Iterable[str] = SECRET_SCHEMES
) -> tuple[Client | None, list[str]]:
    """Given one policy file, return its client and no problems, or None and every problem.

    Each problem is one line that starts with ``path`` as given.
    """
    result = _check_file(Path(path), tuple(secret_schemes))
    return result.client, result.problems


class _Invalid(Exception):
    """A value is wrong: ``problems`` holds (key path suffix, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _fail(message: str) -> NoReturn:
    raise _Invalid([("", message)])


_Check = Callable[[Any], Any]
"""Given a TOML value, return it converted for the model. Raise _Invalid if it is wrong."""


@dataclass
class _Table:
    """One checked TOML table: its valid values, and the key path of every known key written.

    A key in ``paths`` but not in ``values`` was written with a wrong value (already reported).
    """

    values: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    amends: bool = False
    """A machine's level that amends its template's level of the same name (no ``kind``)."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass
class _Result:
    client: Client | None
    client_id: str | None
    problems: list[str]


class _PolicyFile:
    """Checks one policy file, collecting every problem with its key path."""

    def __init__(self, path: Path, schemes: tuple[str, ...]) -> None:
        self.path = path
        self.schemes = schemes
        self._problems: dict[str, None] = {}  # ordered set: a template's problem shows once

    @property
    def problems(self) -> list[str]:
        return list(self._problems)

    def problem(self, where: str, message: str) -> None:
        self._problems[f"{self.path}: {where}: {message}"] = None

    def table(
        self,
        raw: Any,
        where: str,
        checks: dict[str, _Check],
        *,
        required: Iterable[str] = (),
        elsewhere: dict[str, str] | None = None,
    ) -> _Table | None:
        """Given a raw TOML table, check each key and return the valid values.

        ``elsewhere`` maps keys that are wrong here but right in another context to a note
        that says where they belong. Return None if ``raw`` is not a table at all.
        """
        if not isinstance(raw, dict):
            self.problem(where, _expected("a table", raw))
            return None
        checked = _Table()
        for key, value in raw.items():
            path = _join(where, key)
            if key in checks:
                checked.paths[key] = path
                try:
                    checked.values[key] = checks[key](value)
                except _Invalid as exc:
                    for suffix, message in exc.problems:
                        self.problem(path + suffix, message)
            elif elsewhere and key in elsewhere:
                self.problem(path, elsewhere[key])
            else:
                known = [*checks, *(elsewhere or ())]
                self.problem(path, "unknown key" + (_hint(key, known) or _listing(known)))
        for key in required:
            if key not in raw:
                self.problem(_join(where, key), "missing required key")
        return checked

    def check(self, raw: dict[str, Any]) -> _Result:
        """Given the parsed TOML, return the client (if the file has no problem)."""
        self.table(raw, "", dict.fromkeys(_TOP_KEYS, _any))
        client, client_id = self._client(raw.get("client"))
        repositories = self._repositories(raw.get("repositories", {}))
        # Levels may name a repository whose own table is broken: that is reported once, there.
        names = set(_keys(raw.get("repositories")))
        templates = self._templates(raw.get("templates", {}), names)
        machines = self._machines(raw.get("machines", {}), client_id or "", names, templates)
        from recoverd.policy.provider import check_routes  # it builds on this module

        routes = check_routes(self, raw.get("notify", {}), client_id=client_id or "?")
        if self._problems or client is None or client_id is None:
            return _Result(None, client_id, self.problems)
        return _Result(
            Client(
                id=client_id,
                name=client.values["name"],
                source=self.path,
                engineer=client.get("engineer"),
                timezone=client.get("timezone", "UTC"),
                restore_sla=client.get("restore_sla"),
                repositories=repositories,
                machines=machines,
                routes=routes,
            ),
            client_id,
            self.problems,
        )

    def _client(self, raw: Any) -> tuple[_Table | None, str | None]:
        """Check ``[client]``; return it and the client id (None if either is wrong)."""
        if raw is None:
            self.problem("client", "missing required table [client]")
            return None, None
        table = self.table(raw, "client", self._client_checks(), required=["name"])
        if table is None:
            return None, None
        if "id" not in table.paths:
            if CLIENT_ID.fullmatch(self.path.stem):
                return table, self.path.stem
            self.problem(
                "client.id",
                f"the file name {self.path.stem!r} is not a valid client id (lower-case "
                "letters, digits, '.', '_', '-'); rename the file or set client.id",
            )
            return table, None
        client_id = table.get("id")
        if client_id is not None and not CLIENT_ID.fullmatch(client_id):
            self.problem(
                "client.id",
                f"{client_id!r} is not a valid client id: use lower-case letters, digits, "
                "'.', '_' and '-', starting with a letter or digit",
            )
            return table, None
        return table, client_id

    def _client_checks(self) -> dict[str, _Check]:
        return {
            "id": _string,
            "name": _string,
            "engineer": _string,
            "timezone": _timezone,
            "restore_sla": _sla,
        }

    def _repository_checks(self) -> dict[str, _Check]:
        return {
            "url": _repository_url,
            "password": partial(_secret, schemes=self.schemes),
            "max_parallel": _positive_int,
        }

    def _repositories(self, raw: Any) -> dict[str, Repository]:
        repositories: dict[str, Repository] = {}
        checks = self._repository_checks()
        for name, value in self._named_tables(raw, "repositories").items():
            table = self.table(
                value, _join("repositories", name), checks, required=["url", "password"]
            )
            if table is not None and "url" in table.values and "password" in table.values:
                repositories[name] = Repository(
                    name=name,
                    url=table.values["url"],
                    password=table.values["password"],
                    max_parallel=table.get("max_parallel"),
                )
        return repositories

    def _named_tables(self, raw: Any, where: str) -> dict[str, Any]:
        """Return ``[where.NAME]`` tables by name; report ``where`` if it is not a table."""
        if isinstance(raw, dict):
            return raw
        self.problem(where, _expected("a table", raw))
        return {}

    def _machine_checks(self) -> dict[str, _Check]:
        return {
            "transport": partial(_choice, choices=TRANSPORTS),
            "address": _address,
            "port": _port,
            "user": _string,
            "identity": _string,
            "host_key": _host_key,
            "known_hosts": _string,
            "connect_timeout": _positive_number,
            "restic": _string,
            "role": partial(_choice, choices=ROLES),
            "asset_tag": _string,
            "since": _since,
            "mac": _mac,
            "restore": partial(_choice, choices=RESTORE_MODES),
            "offline": partial(_choice, choices=OFFLINE_MODES),
            "alert_after": _seconds,
            "wake": _boolean,
            "wake_via": _name,
            "wake_wait": _seconds,
            "wake_to": _wake_to,
            "stall_after": _seconds,
            "anomaly_changed": _share,
            "anomaly_shrink": _share,
            "password": partial(_secret, schemes=self.schemes),
            "https": _boolean,
            "auth": partial(_choice, choices=WINRM_AUTHS),
            "ca": _string,
            "cert": _string,
            "cert_key": _string,
            "levels": _any,
        }

    def _templates(
        self, raw: Any, repositories: set[str]
    ) -> dict[str, tuple[_Table, list[_Table]]]:
        templates: dict[str, tuple[_Table, list[_Table]]] = {}
        checks = self._machine_checks()
        elsewhere = {"template": "a template cannot use another template"}
        for name, value in self._named_tables(raw, "templates").items():
            where = _join("templates", name)
            table = self.table(value, where, checks, elsewhere=elsewhere)
            if table is not None:
                levels = self._levels(table.get("levels", []), _join(where, "levels"), repositories)
                templates[name] = (table, levels)
        return templates

    def _machines(
        self,
        raw: Any,
        client_id: str,
        repositories: set[str],
        templates: dict[str, tuple[_Table, list[_Table]]],
    ) -> dict[str, Machine]:
        machines: dict[str, Machine] = {}
        checks = self._machine_checks()
        checks["template"] = partial(_defined, names=templates, what="template")
        for name, value in self._named_tables(raw, "machines").items():
            where = _join("machines", name)
            if not NAME.fullmatch(name):
                self.problem(
                    where,
                    f"{name!r} is not a valid machine name: use letters, digits, '.', '_' "
                    "and '-', starting with a letter or digit",
                )
            own = self.table(value, where, checks)
            if own is None:
                continue
            template = templates.get(own.get("template", ""))
            amendable = {d.values["name"]: d for d in template[1]} if template else {}
            levels = self._levels(
                own.get("levels", []), _join(where, "levels"), repositories, amendable
            )
            table, levels = _merge(template, own, levels)
            for level in levels:
                if level.amends:
                    at = level.paths["name"].rpartition(".")[0]
                    self._kind_keys(level, at, level.values["kind"])
            machine = self._machine(name, where, client_id, table, levels)
            if machine is not None:
                machines[name] = machine
        for machine in machines.values():
            # Another machine of this client sends the wake-up packet on the sleeper's LAN.
            if machine.wake_via is not None and (
                machine.wake_via == machine.name or machine.wake_via not in machines
            ):
                others = sorted(set(machines) - {machine.name})
                self.problem(
                    _join(_join("machines", machine.name), "wake_via"),
                    f"no other machine {machine.wake_via!r} in this file"
                    + (_hint(machine.wake_via, others) or f"; machines: {', '.join(others)}"),
                )
        return machines

    def _level_checks(self, repositories: set[str]) -> dict[str, _Check]:
        defined = partial(_defined, names=repositories, what="repository")
        return {
            "name": _name,
            "kind": partial(_choice, choices=LEVEL_KINDS),
            "every": _every,
            "keep": _keep,
            "repository": defined,
            "paths": partial(_strings, nonempty=True),
            "exclude": _strings,
            "vss": _boolean,
            "device": _string,
            "target": _string,
            "via": partial(_choice, choices=IMAGE_VIA),
            "snapshot": partial(_choice, choices=SNAPSHOT_METHODS),
            "allow_mounted": _boolean,
            "of": _string,
            "to": defined,
            "sample": _sample,
            "where": partial(_choice, choices=VERIFY_WHERE),
            "healthchecks": partial(_secret, schemes=self.schemes),
            "grace": _sla,
            "stall_after": _seconds,
            "anomaly_changed": _share,
            "anomaly_shrink": _share,
            "boot": _boolean,
            "boot_timeout": _boot_timeout,
            "expect": _expect,
            "probe": _probes,
        }

    def _levels(
        self,
        raw: Any,
        where: str,
        repositories: set[str],
        amendable: dict[str, _Table] | None = None,
    ) -> list[_Table]:
        """Check a ``levels`` list; return the levels that have a valid, unique name.

        A machine's level without ``kind`` that names one of its template's levels
        (``amendable``) amends that level: its keys are checked against the template level's
        kind after the merge.
        """
        if not isinstance(raw, list):
            self.problem(where, _expected("a list of tables ([[...levels]])", raw))
            return []
        checks = self._level_checks(repositories)
        levels: list[_Table] = []
        first_index: dict[str, int] = {}
        for index, value in enumerate(raw):
            at = f"{where}[{index}]"
            table = self.table(value, at, checks, required=["name"])
            if table is None:
                continue
            kind = table.get("kind")
            if kind in _LEVEL_KIND_KEYS:
                self._kind_keys(table, at, kind)
            elif "kind" not in table.paths:
                name = table.get("name")
                if amendable and name in amendable:
                    table.amends = True
                else:
                    self.problem(
                        _join(at, "kind"),
                        "missing required key"
                        + (
                            f" (or name a level of the template to amend it: "
                            f"{', '.join(amendable)})"
                            if amendable
                            else ""
                        ),
                    )
            name = table.get("name")
            if name in first_index:
                self.problem(
                    _join(at, "name"),
                    f"duplicate level name {name!r} (also {where}[{first_index[name]}])",
                )
            elif name is not None:
                first_index[name] = index
                levels.append(table)
        return levels

    def _kind_keys(self, table: _Table, at: str, kind: str) -> None:
        """Report keys of another kind and the missing keys this kind requires."""
        for key, path in table.paths.items():
            if key in _LEVEL_COMMON_KEYS or key in _LEVEL_KIND_KEYS[kind]:
                continue
            owners = [k for k, keys in _LEVEL_KIND_KEYS.items() if key in keys]
            self.problem(
                path, f"{key!r} is a key of {' and '.join(owners)} levels, not of {kind} levels"
            )
        for key in _LEVEL_REQUIRED[kind]:
            if key not in table.paths:
                self.problem(_join(at, key), f"missing; required for {kind} levels")

    def _machine(
        self,
        name: str,
        where: str,
        client_id: str,
        table: _Table,
        levels: list[_Table],
    ) -> Machine | None:
        """Check the merged machine as a whole; return it, or None if something is wrong."""
        # A key written with a wrong value is reported already; checks that depend on it
        # would only add noise.
        if all(k in table.values or k not in table.paths for k in ("transport", "https", "auth")):
            self._transport_keys(where, table)
        transport = table.get("transport", "ssh")
        https = table.get("https", True)
        auth = table.get("auth", "ntlm")
        port = table.get("port")
        if transport == "winrm":
            port = port or (5986 if https else 5985)
        elif transport == "ssh":
            port = port or 22
        self._level_references(name, levels)
        self._image_targets(transport, levels)
        if table.get("restore") == "image" and not any(d.get("kind") == "image" for d in levels):
            self.problem(table.paths["restore"], "'image' needs an image level on this machine")
        if table.get("wake") and "mac" not in table.paths:
            self.problem(
                _join(where, "mac"), "missing; wake = true sends its Wake-on-LAN packet to it"
            )
        role = table.get("role", "workstation")
        if self._problems:
            return None
        return Machine(
            name=name,
            client=client_id,
            transport=transport,
            address=table.get("address"),
            port=port,
            user=table.get("user", "root" if transport == "ssh" else None),
            identity=table.get("identity"),
            host_key=table.get("host_key"),
            known_hosts=table.get("known_hosts"),
            connect_timeout=table.get("connect_timeout", 10.0),
            restic=table.get("restic", "restic"),
            role=role,
            asset_tag=table.get("asset_tag"),
            since=table.get("since"),
            mac=table.get("mac"),
            restore=table.get("restore", "files-in-place"),
            offline=table.get("offline", "fail" if role == "server" else "skip"),
            alert_after=table.get("alert_after", DEFAULT_ALERT_AFTER),
            wake=table.get("wake", False),
            wake_via=table.get("wake_via"),
            wake_wait=table.get("wake_wait", DEFAULT_WAKE_WAIT),
            wake_to=table.get("wake_to", DEFAULT_WAKE_TO),
            stall_after=table.get("stall_after", DEFAULT_STALL_AFTER),
            anomaly_changed=table.get("anomaly_changed", DEFAULT_ANOMALY_SHARE),
            anomaly_shrink=table.get("anomaly_shrink", DEFAULT_ANOMALY_SHARE),
            password=table.get("password"),
            https=https,
            auth=auth,
            ca=table.get("ca"),
            cert=table.get("cert"),
            cert_key=table.get("cert_key"),
            levels=tuple(_level(d) for d in levels),
        )

    def _transport_keys(self, where: str, table: _Table) -> None:
        """Report keys the machine's transport does not use and what WinRM needs."""
        transport = table.get("transport", "ssh")
        for key, path in table.paths.items():
            allowed = _TRANSPORT_KEYS.get(key)
            if allowed and transport not in allowed:
                self.problem(
                    path,
                    f"{key!r} applies to {' and '.join(allowed)} machines; "
                    f"this machine's transport is {transport!r}",
                )
        if transport != "local" and "address" not in table.paths:
            self.problem(_join(where, "address"), f"missing; required for transport {transport!r}")
        if transport != "winrm":
            return
        https = table.get("https", True)
        auth = table.get("auth", "ntlm")
        auth_path = table.paths.get("auth", _join(where, "auth"))
        if not https and auth == "basic":
            self.problem(
                auth_path,
                "basic authentication over plain HTTP sends the password in clear; "
                "set https = true or use ntlm, kerberos or credssp",
            )
        elif not https and auth not in ENCRYPTING_AUTHS:
            self.problem(
                auth_path,
                f"{auth!r} authentication needs https (no message encryption over plain "
                "HTTP); set https = true or use ntlm, kerberos or credssp",
            )
        if auth == "certificate" and https:  # over HTTP the auth itself is wrong (above)
            for key in ("cert", "cert_key"):
                if key not in table.paths:
                    self.problem(
                        _join(where, key), "missing; required for winrm auth 'certificate'"
                    )
        if auth not in PASSWORDLESS_AUTHS:
            for key in ("user", "password"):
                if key not in table.paths:
                    self.problem(_join(where, key), f"missing; required for winrm auth {auth!r}")

    def _image_targets(self, transport: str, levels: list[_Table]) -> None:
        """Check where image levels write: a restic repository, or on Windows wbadmin's target."""
        windows = transport == "winrm"
        wanted, unwanted = ("target", "repository") if windows else ("repository", "target")
        for draft in levels:
            if draft.get("kind") != "image":
                continue
            if unwanted in draft.paths:
                self.problem(
                    draft.paths[unwanted],
                    f"image levels of {transport} machines write to a {wanted!r}, not a "
                    f"{unwanted!r}"
                    + (
                        " (wbadmin's -backupTarget: a drive like 'E:' or a share)"
                        if windows
                        else ""
                    ),
                )
            elif wanted not in draft.paths and "name" in draft.values:
                at = draft.paths["name"].rpartition(".")[0]
                self.problem(
                    _join(at, wanted), f"missing; required for image levels on {transport}"
                )

    def _level_references(self, machine: str, levels: list[_Table]) -> None:
        """Check that each ``of`` names another backup level of the merged machine."""
        by_name = {d.values["name"]: d for d in levels}
        for draft in levels:
            of = draft.get("of")
            if of is None or draft.get("kind") not in ("copy", "verify"):
                continue
            path = draft.paths["of"]
            target = by_name.get(of)
            if of == draft.values["name"]:
                self.problem(path, "a level cannot refer to itself; name another level")
            elif target is None:
                known = sorted(by_name)
                self.problem(
                    path,
                    f"machine {machine!r} has no level {of!r}"
                    + (_hint(of, known) or f"; its levels: {', '.join(known) or 'none'}"),
                )
            elif target.get("kind", BACKUP_KINDS[0]) not in BACKUP_KINDS:
                self.problem(
                    path,
                    f"{of!r} is a {target.values['kind']} level; name a "
                    f"{', '.join(BACKUP_KINDS)} level",
                )
            elif draft.get("to") and draft.get("to") == (
                target.get("repository") or target.get("to")
            ):
                self.problem(
                    draft.paths["to"],
                    f"{of!r} already writes to {draft.values['to']!r}; copy to another repository",
                )
            elif draft.get("kind") == "verify":
                self._boot_keys(draft, target, by_name)

    def _boot_keys(self, draft: _Table, target: _Table, by_name: dict[str, _Table]) -> None:
        """Boot drills: of an image of a whole disk (or a copy of one), run on the controller;
        their keys mean nothing without ``boot = true``."""
        if not draft.get("boot"):
            for key in BOOT_KEYS:
                if key in draft.paths:
                    self.problem(draft.paths[key], f"{key!r} needs boot = true on this level")
            return
        data = by_name.get(target.get("of")) if target.get("kind") == "copy" else target
        if data is not None and data.get("kind") != "image":
            self.problem(
                draft.paths["boot"],
                f"boot drills boot disk images; {draft.values['of']!r} is a "
                f"{data.values.get('kind')} level",
            )
        if draft.get("where") == "machine":
            self.problem(
                draft.paths["where"],
                'boot drills run where qemu runs, on the controller: use where = "controller" '
                "(the default for boot drills)",
            )
        if "sample" in draft.paths:
            self.problem(draft.paths["sample"], "'sample' is for drills of files levels")


def _check_file(path: Path, schemes: tuple[str, ...]) -> _Result:
    """Given a policy file, return its client (if valid), its client id and its problems."""
    try:
        # utf-8-sig: Windows editors may save a byte-order mark the TOML parser rejects.
        raw = _parse_toml(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        return _Result(None, None, [f"{path}: cannot read: {exc.strerror or exc}"])
    except UnicodeDecodeError as exc:
        return _Result(None, None, [f"{path}: not UTF-8 text (byte {exc.start})"])
    except tomllib.TOMLDecodeError as exc:
        return _Result(None, None, [f"{path}: {_toml_error(str(exc))}"])
    except _TooDeep as exc:
        return _Result(None, None, [f"{path}: {exc}"])
    return _PolicyFile(path, schemes).check(raw)


MAX_DEPTH = 16
"""The deepest nesting a policy may have (tables, arrays and inline tables; the schema needs
5, as in ``machines.NAME.levels[0].keep.daily``). Deeper input is refused before it is parsed
or walked: the TOML parser and the checks recurse, and a document nested hundreds of levels
deep would end them with a RecursionError."""


class _TooDeep(Exception):
    """The document nests deeper than MAX_DEPTH; the message says where."""


def _parse_toml(text: str) -> dict[str, Any]:
    """Return the parsed TOML ``text``. Raise TOMLDecodeError if it is no TOML, _TooDeep if
    it nests deeper than :data:`MAX_DEPTH`."""
    line = _deep_brackets(text)
    if line is not None:
        raise _TooDeep(
            f"line {line}: arrays and inline tables nested more than {MAX_DEPTH} levels deep; "
            "a policy needs at most 3"
        )
    try:
        document = tomllib.loads(text)
    except RecursionError:  # the scan above was fooled: still a clean error
        raise _TooDeep(f"nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    where = _deep_key(document)
    if where is not None:
        raise _TooDeep(f"{where}...: nested more than {MAX_DEPTH} levels deep (tables, arrays)")
    return document


_NESTING_TOKEN = re.compile(
    r"""
    \"\"\"(?:[^\\]|\\.)*?\"\"\" | \'\'\'.*?\'\'\'       # multi-line strings
    | "(?:[^"\\\n]|\\.)*" | '[^'\n]*' | \#[^\n]*   # one-line strings, comments
    | (?P<open>[\[{]) | [\]}]
    """,
    re.S | re.X,
)


def _deep_brackets(text: str) -> int | None:
    """Return the line where brackets ``[ {`` outside strings and comments first nest deeper
    than MAX_DEPTH, or None. A quick scan, not a parser: tomllib judges the syntax."""
    depth = 0
    for token in _NESTING_TOKEN.finditer(text):
        if token["open"]:
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, token.start()) + 1
        elif token[0] in "]}":
            depth = max(0, depth - 1)
    return None


def _deep_key(document: dict[str, Any]) -> str | None:
    """Return the key path (its start) where ``document`` nests deeper than MAX_DEPTH (dotted
    keys nest without brackets), or None. Iterative: the walk itself must not recurse."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return where
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, dict | list):
                path = f"{where}[{key}]" if isinstance(key, int) else _join(where, key)
                stack.append((value, path if depth < 4 else where, depth + 1))
    return None


def _toml_error(message: str) -> str:
    """Return tomllib's message as ``line N: what (column M)``."""
    match = _TOML_POSITION.match(message)
    if not match:
        return message
    what, line, column = match.groups()
    if line is None:
        return f"end of file: {what}"
    return f"line {line}: {what} (column {column})"


def _merge(
    template: tuple[_Table, list[_Table]] | None,
    own: _Table,
    own_levels: list[_Table],
) -> tuple[_Table, list[_Table]]:
    """Return a machine's table and levels with its template's under them.

    The machine's keys override the template's; its levels add to the template's. One with a
    template level's name replaces it, or, without a ``kind``, amends it: its keys override
    the template level's. Levels are listed by kind (files, image, copy, verify: what is
    backed up before its copies and drills), in policy order within a kind.
    """
    if template is None:
        return own, _by_kind(own_levels)
    base, base_levels = template
    merged = _Table({**base.values, **own.values}, {**base.paths, **own.paths})
    mine = {d.values["name"]: d for d in own_levels}
    levels = []
    for level in base_levels:
        change = mine.pop(level.values["name"], None)
        if change is None:
            levels.append(level)
        elif change.amends:
            values = {**level.values, **change.values}
            levels.append(_Table(values, {**level.paths, **change.paths}, amends=True))
        else:
            levels.append(change)
    return merged, _by_kind(levels + list(mine.values()))


def _by_kind(levels: list[_Table]) -> list[_Table]:
    order = {kind: index for index, kind in enumerate(LEVEL_KINDS)}
    return sorted(levels, key=lambda d: order.get(d.get("kind"), len(order)))


def _level(table: _Table) -> Level:
    values = dict(table.values)
    for key in ("paths", "exclude", "probe"):
        if key in values:
            values[key] = tuple(values[key])
    if values.get("boot") and "where" not in values:
        values["where"] = "controller"  # boot drills run where qemu runs
    return Level(**values)


def _join(where: str, key: str) -> str:
    """Return the key path of ``key`` inside ``where``, quoting keys TOML would quote."""
    if not _BARE_KEY.fullmatch(key):
        key = '"' + "".join(_escape(c) for c in key) + '"'
    return f"{where}.{key}" if where else key


def _escape(char: str) -> str:
    """Return ``char`` as inside a TOML basic string: a problem stays on one line."""
    if char in '"\\':
        return "\\" + char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def _keys(raw: Any) -> list[str]:
    return list(raw) if isinstance(raw, dict) else []


def _hint(word: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the choice closest to ``word``, or ""."""
    close = get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(known: Iterable[str]) -> str:
    """Return ``; known keys: a, b`` to follow an unknown key that resembles none of them."""
    return f"; known keys: {', '.join(known)}"


def _type_name(value: Any) -> str:
    """Return the TOML name of the type of ``value``."""
    # Order matters: bool is an int, datetime is a date.
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "list"),
        (dict, "table"),
        (datetime, "date-time"),
        (date, "date"),
        (time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _describe(value: Any) -> str:
    """Return the TOML type of ``value`` and a short repr of it."""
    text = repr(value)
    return f"{_type_name(value)} {text[:40] + '...' if len(text) > 40 else text}"


def _expected(what: str, value: Any) -> str:
    return f"expected {what}, found {_describe(value)}"


def _any(value: Any) -> Any:
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        _fail(_expected("a string", value))
    if not value.strip():
        _fail("must not be empty")
    # A NUL cannot be in a command line; an escape or a line break has no place in a name,
    # a path or an address, and would reach terminals, logs and reports.
    if control := _CONTROL.search(value):
        _fail(f"contains the control character {control[0]!r}; remove it")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(_expected("a boolean (true or false)", value))
    return value


def _positive_int(value: Any) -> int:
    # bool is an int in Python but not in TOML.
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(_expected("an integer", value))
    if value < 1:
        _fail(f"must be a positive integer, not {value}")
    return value


def _positive_number(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        _fail(_expected("a number of seconds", value))
    if not (math.isfinite(value) and value > 0):
        _fail(f"must be a positive number of seconds, not {value}")
    if value > MAX_CONNECT_TIMEOUT:
        _fail(f"{value} s is too long; at most {MAX_CONNECT_TIMEOUT:g} s")
    return float(value)


def _port(value: Any) -> int:
    port = _positive_int(value)
    if port > 65535:
        _fail(f"{port} is not a port (1..65535)")
    return port


def _choice(value: Any, choices: tuple[str, ...]) -> str:
    text = _string(value)
    if text not in choices:
        options = ", ".join(repr(c) for c in choices)
        _fail(f"unknown value {text!r}{_hint(text, choices)}; one of {options}")
    return text


def _defined(value: Any, names: Iterable[str], what: str) -> str:
    """Check that ``value`` names one of ``names`` (repositories, templates)."""
    text = _string(value)
    known = sorted(names)
    if text not in known:
        listed = ", ".join(known) if known else "none"
        _fail(f"no {what} {text!r} in this file{_hint(text, known)}; defined: {listed}")
    return text


def _strings(value: Any, nonempty: bool = False) -> list[str]:
    if not isinstance(value, list):
        _fail(_expected("a list of strings", value))
    if nonempty and not value:
        _fail("must list at least one path")
    problems = [
        (f"[{i}]", _expected("a string", item) if not isinstance(item, str) else "empty string")
        for i, item in enumerate(value)
        if not isinstance(item, str) or not item
    ]
    problems += [
        (f"[{i}]", f"contains the control character {control[0]!r}; remove it")
        for i, item in enumerate(value)
        if isinstance(item, str) and (control := _CONTROL.search(item))
    ]
    if problems:
        raise _Invalid(problems)
    return value


def _name(value: Any) -> str:
    text = _string(value)
    if not NAME.fullmatch(text):
        _fail(
            f"{text!r} is not a valid name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return text


def _address(value: Any) -> str:
    text = _string(value)
    if any(c.isspace() for c in text):
        _fail(f"{text!r} is not a host name or IP address (it contains spaces)")
    return text


def _mac(value: Any) -> str:
    text = _string(value).lower()
    if not _MAC.fullmatch(text):
        _fail(f"{value!r} is not a MAC address like 'aa:bb:cc:dd:ee:ff'")
    return text


def _host_key(value: Any) -> str:
    """Check a pinned host key ``<type> <base64> [comment]``; return ``<type> <base64>``."""
    fields = _string(value).split()
    shown = value if len(value) <= 40 else value[:37] + "..."
    if len(fields) < 2:
        _fail(
            f"{shown!r} is not a host key: expected '<type> <base64>', e.g. 'ssh-ed25519 AAAA...'"
        )
    kind, blob = fields[0], fields[1]
    if kind not in HOST_KEY_TYPES:
        _fail(f"unknown host key type {kind!r}{_hint(kind, HOST_KEY_TYPES)}")
    try:
        data = base64.b64decode(blob, validate=True)
    except binascii.Error:
        _fail(f"the key data of {shown!r} is not base64")
    # The key blob starts with its own type name (RFC 4253 6.6): a mismatch means a wrong paste.
    size = int.from_bytes(data[:4], "big")
    embedded = data[4 : 4 + size].decode("ascii", "replace")
    wanted = "ssh-rsa" if kind.startswith("rsa-sha2") else kind
    if embedded != wanted:
        _fail(
            f"the key data is for {embedded[:30]!r}, not {wanted!r}: a key pasted from elsewhere?"
        )
    return f"{kind} {blob}"


def _secret(value: Any, schemes: tuple[str, ...]) -> str:
    """Check a secret reference. Never echo the value: it may be a real password."""
    if not isinstance(value, str):
        _fail(f"expected a secret reference such as 'env:NAME', found {_type_name(value)}")
    listed = ", ".join(f"{s}:" for s in schemes)
    scheme, colon, rest = value.partition(":")
    if not colon or not re.fullmatch(r"[a-z][a-z0-9_-]*", scheme):
        _fail(
            "not a secret reference; never write a password into a policy: use env:NAME or "
            f"file:/path (schemes: {listed}; the value is not shown)"
        )
    if scheme not in schemes:
        hint = get_close_matches(scheme, schemes, n=1, cutoff=0.6)
        if not hint:
            _fail(
                "not a secret reference with a known scheme; never write a password into a "
                f"policy: use env:NAME or file:/path (schemes: {listed}; the value is not shown)"
            )
        _fail(f"unknown secret scheme (did you mean '{hint[0]}:'?); use one of {listed}")
    if scheme == "env" and not _ENV_NAME.fullmatch(rest):
        _fail("env: needs an environment variable name (letters, digits and '_')")
    if scheme == "file" and not rest.startswith("/"):
        _fail("file: needs an absolute path (file:/path)")
    if "\x00" in value or (scheme == "file" and _CONTROL.search(rest)):
        _fail(f"{scheme}: contains a control character (the value is not shown); remove it")
    if scheme == "vault" and not VAULT_NAME.fullmatch(rest):
        _fail("vault: needs a secret name (letters, digits, '.', '_', '-', '/')")
    if not rest.strip():
        _fail(f"{scheme}: needs a value after the colon")
    return value


def _repository_url(value: Any) -> str:
    """Check a restic repository: an absolute path or ``backend:...``. Never echo it."""
    text = _string(value)
    if text.startswith("/") or re.match(r"[A-Za-z]:[\\/]", text):
        return text
    backend, colon, rest = text.partition(":")
    if colon and backend in RESTIC_BACKENDS and rest:
        return text
    # The URL may carry credentials (rest:https://user:pass@...): name only its backend.
    hint = _hint(backend, RESTIC_BACKENDS) if colon and backend.isalnum() else ""
    _fail(
        f"not a restic repository URL or absolute path{hint}; "
        f"backends: {', '.join(RESTIC_BACKENDS)}"
    )


def _timezone(value: Any) -> str:
    name = _string(value)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        _fail(f"unknown time zone {name!r}{_hint(name, _zones())}; use a name like 'Asia/Shanghai'")
    return name


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _since(value: Any) -> date:
    """A machine's onboarding date: a TOML date (``since = 2026-03-01``) or ``"2026-03-01"``."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    _fail(_expected("a date (2026-03-01)", value))


def _sla(value: Any) -> str:
    text = _string(value)
    match = _DURATION.fullmatch(text)
    # The numbers are compared as text first: int() refuses thousands of digits.
    numbers = [(n or "0").lstrip("0") or "0" for n in match.groups()] if match else []
    if not match or all(n == "0" for n in numbers):
        _fail(f"{text!r} is not a duration like '4h', '30m', '1d' or '1d12h'")
    too_long = f"{text!r} is longer than {MAX_SLA_DAYS} days; a restore SLA is hours or days"
    if any(len(n) > 6 for n in numbers):
        _fail(too_long)
    days, hours, minutes = (int(n) for n in numbers)
    if days + hours / 24 + minutes / 1440 > MAX_SLA_DAYS:
        _fail(too_long)
    return text


def _every(value: Any) -> str:
    text = _string(value)
    try:
        parse_every(text)
    except ValueError as exc:
        _fail(str(exc))
    return text


def _keep(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(_expected("a table like { daily = 7, weekly = 4 }", value))
    problems = [
        ("." + _join("", key), message)
        for key, amount in value.items()
        if (message := _keep_problem(key, amount))
    ]
    if problems:
        raise _Invalid(problems)
    return dict(value)


def _keep_problem(key: str, amount: Any) -> str | None:
    """Return what is wrong with ``keep.<key> = amount``, or None."""
    if key not in KEEP_KEYS:
        return "unknown key" + (_hint(key, KEEP_KEYS) or _listing(KEEP_KEYS))
    if key == "within":
        # restic rejects a duration that adds up to nothing ("0d").
        if not (
            isinstance(amount, str)
            and _RESTIC_DURATION.fullmatch(amount)
            and re.search("[1-9]", amount)
        ):
            return f"expected a restic duration like '30d' or '1y2m', found {_describe(amount)}"
        parts = re.findall(r"([0-9]+)([ymdh])", amount)
        if any(len(n.lstrip("0")) > 6 for n, _ in parts) or (
            sum(int(n) * _RESTIC_UNIT_DAYS[unit] for n, unit in parts) > MAX_KEEP_DAYS
        ):
            return f"{amount!r} is longer than 100 years; keep less"
        return None
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        return f"expected a positive integer, found {_describe(amount)}"
    if amount > MAX_KEEP:
        return f"{amount} is too many; at most {MAX_KEEP}"
    return None


def _boot_timeout(value: Any) -> str:
    text = _string(value)
    match = re.fullmatch(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?", text)
    if not text or not match or not any(int(n or 0) for n in match.groups()):
        _fail(f"{text!r} is not a duration like '3m', '90s' or '1m30s'")
    hours, minutes, seconds = (int(n or 0) for n in match.groups())
    if (hours * 60 + minutes) * 60 + seconds > 86400:
        _fail(f"{text!r} is too long for a boot: at most 24h")
    return text


def _expect(value: Any) -> str:
    text = _string(value)
    if not text.strip() or not text.isprintable():
        _fail("expected console text like 'login:' (printable, not empty)")
    return text


def _probes(value: Any) -> list[str]:
    probes = _strings(value)
    for probe in probes:
        port = re.fullmatch(r"tcp:([0-9]{1,5})", probe)
        if probe != "ssh" and not (port and 0 < int(port[1]) < 65536):
            _fail(f"{probe!r} is not a probe: use 'ssh' or 'tcp:PORT' (like 'tcp:3389')")
    if len(set(probes)) != len(probes):
        _fail("a probe is listed twice")
    return probes


def _sample(value: Any) -> str:
    text = _string(value)
    percent = re.fullmatch(r"([0-9]{1,3})%", text)
    if text == "all" or (percent and 1 <= int(percent[1]) <= 100):
        return text
    if re.fullmatch(r"[0-9]{1,10}", text) and 0 < int(text) <= MAX_SAMPLE:
        return text
    _fail(f"{text!r} is not a sample: use 'N%' (1..100), a number of files like '200', or 'all'")


def _seconds(value: Any) -> float:
    """Check a duration like ``'30m'``, ``'3d'``, ``'1h30m'`` or ``'90s'``; return seconds."""
    text = _string(value)
    match = _SECONDS.fullmatch(text)
    if not match or not any(int(n or 0) for n in match.groups()):
        _fail(f"{text!r} is not a duration like '30m', '3d', '1h30m' or '90s'")
    days, hours, minutes, seconds = (int(n or 0) for n in match.groups())
    total = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    if total > MAX_SLA_DAYS * 86400:
        _fail(f"{text!r} is too long: at most {MAX_SLA_DAYS} days")
    return total


def _share(value: Any) -> float:
    """Check a share like ``'50%'`` (1..100); return it as a fraction (0.5)."""
    text = _string(value)
    percent = re.fullmatch(r"([0-9]{1,3})%", text)
    if not percent or not 1 <= int(percent[1]) <= 100:
        _fail(f"{text!r} is not a share: use 'N%' (1..100), e.g. '50%'")
    return int(percent[1]) / 100


def _wake_to(value: Any) -> str:
    """Check where a controller sends Wake-on-LAN: ``'ADDRESS:PORT'`` (a LAN's broadcast)."""
    text = _string(value)
    match = _WAKE_TO.fullmatch(text)
    if not match or not 1 <= int(match[2]) <= 65535:
        _fail(f"{text!r} is not 'ADDRESS:PORT', e.g. '192.168.1.255:9'")
    return text
