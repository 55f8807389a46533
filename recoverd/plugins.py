"""Load plugins and collect what they register, kind by kind.

Built-in and third-party plugins go through one path: the ``recoverd`` entry-point group. They
can be blocked by name (``RECOVERD_DISABLE_PLUGINS=a,b``).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from difflib import get_close_matches
from importlib import metadata
from typing import Any

import pluggy

from recoverd import PROJECT, hookspecs
from recoverd.errors import PluginError

KINDS = {
    "transports": "recoverd_add_transports",
    "engines": "recoverd_add_engines",
    "restore_targets": "recoverd_add_restore_targets",
    "log_sinks": "recoverd_add_log_sinks",
    "notifiers": "recoverd_add_notifiers",
    "secret_resolvers": "recoverd_add_secret_resolvers",
}
"""Plugin kinds and the registry hook that fills each."""

BUILTIN_PACKAGE = "recoverd_plugins"


class LazyModule:
    """A module imported at the first use of one of its attributes.

    Every command loads every plugin; a plugin holds its heavy library (paramiko, pywinrm) in
    one of these so that commands which never connect (``log``, ``status``) do not pay for
    importing it. The import itself is the interpreter's, so it is thread-safe.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazily imported module {self._name!r}>"


def lazy_import(name: str) -> Any:
    """Given a module name, return the module if it is imported already, else a
    :class:`LazyModule` that imports it at its first attribute access."""
    return sys.modules.get(name) or LazyModule(name)


@dataclass
class Kind:
    """The registry of one plugin kind: names mapped to what plugins provide."""

    kind: str
    entries: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    _current_plugin: str = ""

    def add(self, name: str, obj: Any) -> None:
        """Register ``obj`` as ``name``. Raise PluginError if the name is taken."""
        if name in self.entries:
            raise PluginError(
                f"plugin {self._current_plugin!r} registers {self.kind[:-1]} {name!r}, "
                f"which plugin {self.owners[name]!r} already registered"
            )
        self.entries[name] = obj
        self.owners[name] = self._current_plugin

    def get(self, name: str) -> Any:
        """Return what is registered as ``name``. Raise PluginError naming the known ones."""
        try:
            return self.entries[name]
        except KeyError:
            hint = get_close_matches(name, list(self.entries), n=1)
            known = ", ".join(sorted(self.entries)) or "none"
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise PluginError(
                f"no {self.kind[:-1].replace('_', ' ')} {name!r}{suffix}; known: {known}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries


@dataclass
class PluginInfo:
    """One loaded plugin, as ``recoverd plugins`` lists it."""

    name: str
    version: str
    hooks: list[str]
    provides: dict[str, list[str]]


class PluginHost:
    """The pluggy manager plus the per-kind registries the plugins filled."""

    def __init__(self, extra: list[tuple[str, object]] | None = None) -> None:
        """Load the entry-point plugins, then ``extra`` (name, plugin) pairs, last-first."""
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        # A distribution's version is read (its METADATA parsed) only when listed: that
        # costs a few ms per plugin, on every command otherwise.
        self._versions: dict[str, str | metadata.Distribution | None] = {}
        blocked = {n for n in os.environ.get("RECOVERD_DISABLE_PLUGINS", "").split(",") if n}
        for name in blocked:
            self.pm.set_blocked(name)
        # Built-ins first, so that a third-party plugin claiming a taken name is the one blamed.
        entry_points = sorted(
            metadata.entry_points(group=PROJECT),
            key=lambda e: (not e.value.startswith(BUILTIN_PACKAGE), e.name),
        )
        for ep in entry_points:
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party package must not hide the cause
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            self.pm.register(plugin, name=ep.name)
            self._versions[ep.name] = ep.dist
        for name, plugin in extra or []:
            if not self.pm.is_blocked(name):
                self.pm.register(plugin, name=name)
                self._versions[name] = getattr(plugin, "__version__", "-")
        self.pm.check_pending()
        self.kinds = {kind: self._collect(kind, hook) for kind, hook in KINDS.items()}

    def _collect(self, kind: str, hook_name: str) -> Kind:
        registry = Kind(kind)
        hook = getattr(self.pm.hook, hook_name)
        # Each implementation is called alone, in registration order, so that an entry is
        # credited to its plugin.
        for impl in hook.get_hookimpls():
            registry._current_plugin = impl.plugin_name
            impl.function(register=registry)
        registry._current_plugin = ""
        return registry

    def __getitem__(self, kind: str) -> Kind:
        return self.kinds[kind]

    def _version(self, name: str) -> str:
        """Return the version of plugin ``name``: its distribution's, for an entry point."""
        version = self._versions.get(name, "-")
        if isinstance(version, metadata.Distribution):
            return version.version
        return "?" if version is None else version

    def describe(self) -> list[PluginInfo]:
        """Return every loaded plugin with its version, hooks and what it registered."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            provides = {
                kind: sorted(n for n, owner in reg.owners.items() if owner == name)
                for kind, reg in self.kinds.items()
            }
            infos.append(
                PluginInfo(
                    name=name,
                    version=self._version(name),
                    hooks=hooks,
                    provides={k: v for k, v in provides.items() if v},
                )
            )
        return sorted(infos, key=lambda i: i.name)
