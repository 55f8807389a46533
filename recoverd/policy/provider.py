"""``provider.toml``: the provider's own settings, and the ``[notify.NAME]`` routes that a
client file may hold too.

Checked like a client file (every problem at once, ``FILE: key.path: message``) by the same
machinery as :mod:`recoverd.policy.load`; the names of clients and machines it refers to are
checked against the clients loaded from the other files.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

from recoverd.policy.load import (
    _any,
    _every,
    _fail,
    _hint,
    _Invalid,
    _join,
    _PolicyFile,
    _secret,
    _string,
    _strings,
    _timezone,
    _toml_error,
)
from recoverd.policy.model import EVENTS, INCIDENT_EVENTS, Client, NotifyRoute, Provider

PROVIDER_FILE = "provider.toml"
DEFAULT_DIGEST = "day at 07:30"
_TOP_KEYS = ("provider", "notify", "metrics", "audit")
_CLIENT_PATTERN = re.compile(r"[a-z0-9*?\[\]._-]+")
_WITNESS = re.compile(r"([a-z0-9][a-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._-]*):(/.*)")
_LOGIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\$?")


def check_routes(
    policy: _PolicyFile, raw: Any, *, client_id: str | None = None
) -> dict[str, NotifyRoute]:
    """Given the raw ``notify`` table of ``policy``, return its valid routes.

    In a client file (``client_id`` set) a route covers that client only, so ``clients`` is
    reported as misplaced there.
    """
    routes: dict[str, NotifyRoute] = {}
    checks = {
        "urls": partial(_urls, schemes=policy.schemes),
        "on": _events,
        "digest": _every,
    }
    elsewhere = {}
    if client_id is None:
        checks["clients"] = _client_patterns
    else:
        elsewhere["clients"] = (
            "a client file's route covers that client; list clients in provider.toml's routes"
        )
        del checks["digest"]
        elsewhere["digest"] = "the digest covers every client: route it in provider.toml"
    for name, value in policy._named_tables(raw, "notify").items():
        where = _join("notify", name)
        table = policy.table(value, where, checks, required=["urls"], elsewhere=elsewhere)
        if table is None or len(table.values) != len(table.paths):
            continue
        on = tuple(table.get("on", INCIDENT_EVENTS))
        if client_id is not None and "digest" in on:
            policy.problem(
                table.paths["on"], "the digest covers every client: route it in provider.toml"
            )
            continue
        digest = table.get("digest")
        if digest is not None and "digest" not in on:
            policy.problem(
                table.paths["digest"], "the route is not on 'digest'; add \"digest\" to `on`"
            )
            continue
        if "urls" not in table.values:
            continue
        routes[name] = NotifyRoute(
            name=name,
            urls=tuple(table.values["urls"]),
            on=on,
            clients=(client_id,) if client_id else tuple(table.get("clients", ["*"])),
            digest=digest or (DEFAULT_DIGEST if "digest" in on else None),
            source=policy.path,
        )
    return routes


def check_provider(
    path: Path, schemes: tuple[str, ...], clients: dict[str, Client]
) -> tuple[Provider, list[str]]:
    """Given ``provider.toml`` and the clients loaded from the other files, return the settings
    and every problem (an empty list if there is none)."""
    import tomllib

    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        return Provider(), [f"{path}: cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return Provider(), [f"{path}: not UTF-8 text (byte {exc.start})"]
    except tomllib.TOMLDecodeError as exc:
        return Provider(), [f"{path}: {_toml_error(str(exc))}"]
    policy = _PolicyFile(path, schemes)
    policy.table(
        raw,
        "",
        dict.fromkeys(_TOP_KEYS, _any),
        elsewhere={
            key: f"[{key}] belongs in a client's policy file, not in {PROVIDER_FILE}"
            for key in ("client", "repositories", "templates", "machines")
        },
    )
    settings = policy.table(
        raw.get("provider", {}),
        "provider",
        {
            "name": _string,
            "timezone": _timezone,
            "engineers": _engineers,
            "database": partial(_secret, schemes=schemes),
        },
    )
    routes = check_routes(policy, raw.get("notify", {}))
    for route in routes.values():
        _known_clients(policy, route, clients)
    metrics = policy.table(raw.get("metrics", {}), "metrics", {"textfile": _absolute_path})
    audit = policy.table(
        raw.get("audit", {}), "audit", {"witness": partial(_witnesses, clients=clients)}
    )
    if policy.problems or settings is None or metrics is None or audit is None:
        return Provider(source=path), policy.problems
    return (
        Provider(
            name=settings.get("name"),
            timezone=settings.get("timezone", "UTC"),
            engineers=dict(settings.get("engineers", {})),
            database=settings.get("database"),
            routes=routes,
            metrics_textfile=metrics.get("textfile"),
            witness=tuple(audit.get("witness", ())),
            source=path,
        ),
        [],
    )


def _known_clients(policy: _PolicyFile, route: NotifyRoute, clients: dict[str, Client]) -> None:
    """Report a route's client that is no pattern and no loaded client (a typo)."""
    for index, name in enumerate(route.clients):
        if any(c in name for c in "*?[") or name in clients or not clients:
            continue
        policy.problem(
            f"notify.{route.name}.clients[{index}]",
            f"no client {name!r}"
            + (_hint(name, clients) or "; clients: " + ", ".join(sorted(clients))),
        )


def _urls(value: Any, schemes: tuple[str, ...]) -> list[str]:
    """Check a list of Apprise URLs written as secret references (a URL may hold a token)."""
    if isinstance(value, str):
        value = [value]
    urls = _strings(value)
    if not urls:
        _fail("must list at least one URL (a secret reference such as 'env:ONCALL_URL')")
    problems = []
    for index, url in enumerate(urls):
        try:
            _secret(url, schemes)
        except _Invalid as exc:
            problems += [(f"[{index}]", message) for _, message in exc.problems]
    if problems:
        raise _Invalid(problems)
    return urls


def _events(value: Any) -> list[str]:
    events = _strings(value)
    if not events:
        _fail(f"must list at least one event: {', '.join(EVENTS)}")
    problems = [
        (f"[{i}]", f"unknown event {e!r}{_hint(e, EVENTS)}; events: {', '.join(EVENTS)}")
        for i, e in enumerate(events)
        if e not in EVENTS
    ]
    if problems:
        raise _Invalid(problems)
    return list(dict.fromkeys(events))


def _client_patterns(value: Any) -> list[str]:
    patterns = _strings(value)
    if not patterns:
        _fail("must list at least one client id or pattern ('*' for every client)")
    problems = [
        (f"[{i}]", f"{p!r} is not a client id or a pattern like 'acme*'")
        for i, p in enumerate(patterns)
        if not _CLIENT_PATTERN.fullmatch(p)
    ]
    if problems:
        raise _Invalid(problems)
    return patterns


def _engineers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        _fail(f'expected a table like {{ lina = "Li Na" }}, found {type(value).__name__}')
    problems = []
    for login, name in value.items():
        if not _LOGIN.fullmatch(login):
            problems.append((f".{_join('', login)}", f"{login!r} is not an OS login name"))
        elif not isinstance(name, str) or not name.strip():
            problems.append((f".{_join('', login)}", "expected the engineer's name (a string)"))
    if problems:
        raise _Invalid(problems)
    return dict(value)


def _absolute_path(value: Any) -> str:
    text = _string(value)
    if not text.startswith("/") or "\x00" in text:
        _fail(f"{text!r} is not an absolute path")
    if text.endswith("/"):
        _fail("names a directory; name the file, like '/var/lib/node_exporter/textfile/x.prom'")
    return text


def _witnesses(value: Any, clients: dict[str, Client]) -> list[str]:
    """Check ``client/machine:/path`` entries; the machine must be in the policies."""
    places = _strings(value)
    problems = []
    for index, place in enumerate(places):
        match = _WITNESS.fullmatch(place)
        if not match:
            problems.append((f"[{index}]", f"{place!r} is not 'client/machine:/absolute/path'"))
            continue
        client_id, machine, _ = match.groups()
        client = clients.get(client_id)
        if clients and client is None:
            problems.append((f"[{index}]", f"no client {client_id!r}{_hint(client_id, clients)}"))
        elif client is not None and machine not in client.machines:
            problems.append(
                (
                    f"[{index}]",
                    f"client {client_id!r} has no machine {machine!r}"
                    + _hint(machine, client.machines),
                )
            )
    if problems:
        raise _Invalid(problems)
    return places
