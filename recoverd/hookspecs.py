"""The plugin contract of recoverd: every hook a plugin may implement.

Plugins are pluggy plugins of project ``recoverd``, found through the ``recoverd`` entry-point
group (the built-ins in ``plugins/`` are registered the same way). Every hook is called with
keyword arguments. The ``recoverd_add_*`` hooks hand the plugin a :class:`~recoverd.plugins.Kind`
registry: the plugin calls ``register.add(name, obj)`` once per thing it provides; a name
registered twice is an error, so a third-party plugin cannot silently shadow a built-in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from recoverd import PROJECT

if TYPE_CHECKING:
    from recoverd.plugins import Kind

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def recoverd_add_transports(register: Kind) -> None:
    """Register transport classes, by the name a policy's ``transport`` key uses.

    :param register: ``register.add("ssh", SSHTransport)``; the class is a subclass of
        :class:`recoverd.transport.Transport`, built with ``(machine, secrets)``.
    """


@hookspec
def recoverd_add_engines(register: Kind) -> None:
    """Register engines: the code that builds a backup tool's commands and parses its output.

    :param register: ``register.add("restic", ResticEngine)``; the class declares the level
        ``kinds`` and ``os_families`` it serves and is built with ``(transport, secrets)``.
    """


@hookspec
def recoverd_add_restore_targets(register: Kind) -> None:
    """Register restore targets: where restored bytes go and how they are checked afterwards.

    :param register: ``register.add("files-in-place", FilesInPlace)``; the class is a subclass
        of :class:`recoverd.restore.RestoreTarget`, built with the engine of the level being
        restored. ``recoverd restore`` picks a target whose ``kinds`` hold the level's kind
        and whose ``destinations`` hold what the options ask for (``in-place``, ``path`` for
        ``--to``, ``device`` for ``--device``) and whose ``os_families`` hold the machine's
        (``posix``, ``windows``); of several, the one registered last, so a third-party target
        overrides a built-in one. Only a target with ``takes_items`` accepts ``--item``.
    """


@hookspec
def recoverd_add_log_sinks(register: Kind) -> None:
    """Register maintenance-log sinks.

    :param register: ``register.add("syslog", SyslogSink)``; a sink class is built with the
        state directory and receives a copy of every entry, as stored and hash-chained, through
        ``append(entry: recoverd.log.record.Entry)``. A failing sink is logged and never loses
        the run. The sink named ``sqlite`` is the store itself: it writes and chains the
        entries (``write``) and reads them back (``entries``, ``run_ids``, ``open_runs``,
        ``transaction``), see ``plugins/sqlite_store.py``.
    """


@hookspec
def recoverd_add_notifiers(register: Kind) -> None:
    """Register notifiers: the channels that deliver incident messages and digests.

    :param register: ``register.add("apprise", AppriseNotifier)``; the class is built with no
        arguments. A subclass of :class:`recoverd.notify.Notifier` declares the URL
        ``schemes`` it delivers (``("*",)`` for any) and implements ``send(urls, message)``,
        returning False (never raising) when a service did not take the message: the outbox
        retries it a bounded number of times from a worker thread. Of several notifiers for a
        scheme, the one registered last is used (a third-party notifier overrides the built-in
        ``apprise``). Every notifier's ``run_finished(record)`` is also called with each
        finished run's current view (a dict as ``recoverd log --json`` prints it); its failure
        is logged and never fails the run.
    """


@hookspec
def recoverd_add_secret_resolvers(register: Kind) -> None:
    """Register secret resolvers by the scheme of the references they resolve.

    :param register: ``register.add("env", resolve_env)``; the callable gets the part after
        ``scheme:`` and returns the secret, or raises :class:`recoverd.errors.SecretError`
        with a message that says what to fix (never the secret). A class registered instead
        (``register.add("vault", VaultResolver)``) is built with the state directory first and
        its instances are called the same way.
    """
