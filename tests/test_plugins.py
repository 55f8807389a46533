"""The plugin contract: hooks documented and exercised, kinds registered, duplicates refused."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import recoverd
from recoverd import hookspecs
from recoverd.errors import PluginError
from recoverd.log import MaintenanceLog
from recoverd.plugins import KINDS, PluginHost

HOOKS = [
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("recoverd_")
]


def test_every_hook_is_documented_with_its_parameters() -> None:
    assert HOOKS
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 40, f"{name} has no real docstring"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name} does not document {param}"


def test_every_hook_is_a_plugin_kind_and_called() -> None:
    assert sorted(HOOKS) == sorted(KINDS.values())
    calls: list[str] = []

    class Spy:
        pass

    for name in HOOKS:

        def impl(register: Any, _name: str = name) -> None:
            calls.append(_name)

        setattr(Spy, name, staticmethod(recoverd.hookimpl(impl, specname=name)))
    PluginHost(extra=[("spy", Spy())])
    assert sorted(calls) == sorted(HOOKS)


def test_builtins_provide_every_kind_the_foundation_needs() -> None:
    host = PluginHost()
    assert {"ssh", "local"} <= set(host["transports"].entries)
    assert "restic" in host["engines"]
    assert "sqlite" in host["log_sinks"]
    assert {"env", "file", "command"} <= set(host["secret_resolvers"].entries)
    names = {info.name: info for info in host.describe()}
    assert names["restic"].provides == {"engines": ["restic"]}
    assert names["ssh"].version == recoverd.__version__


class ThirdParty:
    """What a pip-installed plugin looks like: a log sink and a notifier."""

    __version__ = "9.9"

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.finished: list[dict] = []
        plugin = self

        class Mirror:
            def __init__(self, state_dir: Path) -> None:
                pass

            def append(self, entry: Any) -> None:
                plugin.entries.append(entry)

        class Pager:
            def run_finished(self, record: dict) -> None:
                plugin.finished.append(record)

        self.mirror, self.pager = Mirror, Pager

    @recoverd.hookimpl
    def recoverd_add_log_sinks(self, register: Any) -> None:
        register.add("mirror", self.mirror)

    @recoverd.hookimpl
    def recoverd_add_notifiers(self, register: Any) -> None:
        register.add("pager", self.pager)


def test_third_party_sink_and_notifier_receive_every_run(tmp_path: Path) -> None:
    plugin = ThirdParty()
    host = PluginHost(extra=[("thirdparty", plugin)])
    log = MaintenanceLog(tmp_path, host["log_sinks"], host["notifiers"])
    run_id = log.start(client="acme", machine="m", level="n", kind="files", action="backup")
    log.finish(run_id, "succeeded")
    assert [e.type for e in plugin.entries] == ["start", "end"]
    assert plugin.entries[-1].hash == log.run(run_id)["hash"]
    assert [r["state"] for r in plugin.finished] == ["succeeded"]
    info = {i.name: i for i in host.describe()}["thirdparty"]
    assert info.version == "9.9"
    assert info.provides == {"log_sinks": ["mirror"], "notifiers": ["pager"]}


def test_failing_notifier_never_fails_the_run(tmp_path: Path) -> None:
    class Broken:
        def run_finished(self, record: dict) -> None:
            raise RuntimeError("mail server down")

    plugin = SimpleNamespace(
        recoverd_add_notifiers=recoverd.hookimpl(
            lambda register: register.add("broken", Broken), specname="recoverd_add_notifiers"
        )
    )
    host = PluginHost(extra=[("broken", plugin)])
    log = MaintenanceLog(tmp_path, host["log_sinks"], host["notifiers"])
    run_id = log.start(client="acme", machine="m", level="n", kind="files", action="backup")
    assert log.finish(run_id, "succeeded")["state"] == "succeeded"


def test_plugin_registering_a_taken_name_is_refused() -> None:
    class Impostor:
        @recoverd.hookimpl
        def recoverd_add_transports(self, register: Any) -> None:
            register.add("ssh", object)

    with pytest.raises(PluginError, match=r"'impostor' registers transport 'ssh'.*'ssh' already"):
        PluginHost(extra=[("impostor", Impostor())])


def test_blocked_plugin_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOVERD_DISABLE_PLUGINS", "ssh")
    host = PluginHost()
    assert "ssh" not in host["transports"]
    with pytest.raises(PluginError, match="no transport 'ssh'"):
        host["transports"].get("ssh")
