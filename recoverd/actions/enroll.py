"""Onboarding a machine (``recoverd enroll``) and the read-only check of every machine
(``recoverd check --online``): the steps a first backup would take, one at a time, each with
what was found and, when something is wrong, the exact fix.

1. the host key: shown with its fingerprint; ``enroll`` pins it in the policy file after the
   engineer confirmed it (comments and layout kept), ``check --online`` only says;
2. the login;
3. restic on the machine: present, and its version;
4. every repository the machine's levels write to, reached *from the machine* (an sftp
   repository through the machine's own ssh, key and known_hosts); ``enroll`` creates the ones
   that do not exist yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from recoverd.controller import Controller
from recoverd.errors import (
    AuthenticationFailed,
    EngineError,
    HostKeyRejected,
    RecoverdError,
    ToolMissing,
    TransportError,
    UsageError,
)
from recoverd.policy.edit import set_machine_key
from recoverd.policy.model import Machine, Repository
from recoverd.transport import HostKey

OK, WARNING, FAILED = "ok", "warning", "failed"

Confirm = Callable[[str, bool], bool]
"""Asks the engineer a yes/no question and returns the answer; the flag marks a question that
``--yes`` must not answer for them (a changed host key)."""


@dataclass(frozen=True)
class Step:
    """One line of the checklist."""

    what: str
    """``host key``, ``login``, ``restic``, ``repository nas``."""
    state: str
    """:data:`OK`, :data:`WARNING` or :data:`FAILED`."""
    detail: str
    fix: str | None = None
    """What to do about it, when something is wrong."""


def enroll(ctl: Controller, machine: Machine, confirm: Confirm) -> Iterator[Step]:
    """Given a machine of the policies, onboard it step by step; yield each step as it is
    done. ``confirm`` is asked before the host key is pinned and before a repository is
    created."""
    return _steps(ctl, machine, confirm)


def check_online(ctl: Controller, machine: Machine) -> Iterator[Step]:
    """Given a machine, yield what tonight's runs would meet, changing nothing."""
    return _steps(ctl, machine, None)


def _steps(ctl: Controller, machine: Machine, confirm: Confirm | None) -> Iterator[Step]:
    transport = ctl.transport(machine)
    try:
        offered = transport.host_key()
    except TransportError as exc:
        yield Step("connection", FAILED, str(exc), _reach_fix(machine))
        return
    if offered is not None:
        step = _host_key_step(ctl, machine, offered, confirm)
        yield step
        if step.state == FAILED:
            return
        if confirm is not None and step.detail.startswith("pinned just now"):
            machine = ctl.reload_policies().find_machine(machine.qualified_name)
            transport = ctl.transport(machine)
    try:
        transport.connect()
    except AuthenticationFailed as exc:
        yield Step("login", FAILED, str(exc), _login_fix(machine))
        return
    except (TransportError, HostKeyRejected) as exc:
        yield Step("login", FAILED, str(exc))
        return
    with transport:
        yield Step("login", OK, transport.describe())
        engine = ctl.engine(transport, "files")
        try:
            version = engine.version()
        except ToolMissing as exc:
            yield Step("restic", FAILED, str(exc), _restic_fix(machine))
            return
        except RecoverdError as exc:
            yield Step("restic", FAILED, str(exc))
            return
        yield Step("restic", OK, f"{'.'.join(map(str, version))} ({machine.restic})")
        for repository in repositories_of(ctl, machine):
            yield _repository_step(engine, machine, repository, confirm)


def repositories_of(ctl: Controller, machine: Machine) -> list[Repository]:
    """Return the restic repositories the machine's levels write to, each once, in level
    order (a Windows image level writes to wbadmin's target instead: not a repository)."""
    repositories = ctl.policies.clients[machine.client].repositories
    names: dict[str, None] = {}
    for level in machine.levels:
        name = level.to if level.kind == "copy" else level.repository
        if name and level.target is None:
            names[name] = None
    return [repositories[name] for name in names if name in repositories]


def _host_key_step(
    ctl: Controller, machine: Machine, offered: HostKey, confirm: Confirm | None
) -> Step:
    shown = f"{offered.type} {offered.fingerprint}"
    source = ctl.policies.clients[machine.client].source
    pin_line = f'host_key = "{offered.line}"'
    if offered.trust in ("pinned", "known"):
        where = "pinned in the policy" if offered.trust == "pinned" else "in known_hosts"
        return Step("host key", OK, f"{shown} ({where})")
    verify = "verify it first, on the machine: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub"
    if offered.trust == "changed":
        detail = f"CHANGED: the machine offers {shown}, the policy expects {offered.expected}"
        fix = (
            f"a reinstalled machine has a new key, anything else may be a man-in-the-middle; "
            f"{verify}; then pin it in {source} [machines.{machine.name}]: {pin_line}"
        )
    else:
        detail = f"unknown: the machine offers {shown}"
        fix = f"{verify}; then pin it in {source} [machines.{machine.name}]: {pin_line}"
    if confirm is None:
        return Step("host key", FAILED, detail, fix)
    question = (
        f"{machine.qualified_name} offers the host key {shown}"
        + (f" (the policy expects {offered.expected})" if offered.trust == "changed" else "")
        + f".\nCompare it with the machine's own (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub)."
        f"\nPin it in {source}?"
    )
    if not confirm(question, offered.trust == "changed"):
        return Step("host key", FAILED, f"{detail}; not pinned", fix)
    set_machine_key(source, machine.name, "host_key", offered.line)
    return Step("host key", OK, f"pinned just now in {source}: {shown}")


def _repository_step(
    engine: Any, machine: Machine, repository: Repository, confirm: Confirm | None
) -> Step:
    what = f"repository {repository.name}"
    try:
        exists = engine.repository_exists(repository)
    except EngineError as exc:
        return Step(what, FAILED, str(exc), reach_repository_fix(machine, repository, str(exc)))
    if exists:
        return Step(what, OK, "reachable from the machine")
    if confirm is None:
        return Step(
            what,
            WARNING,
            "reachable, but it does not exist yet",
            f"the first backup creates it; or `recoverd enroll {machine.qualified_name}`",
        )
    if not confirm(f"Repository {repository.name} does not exist yet. Create it now?", False):
        return Step(what, WARNING, "does not exist yet; not created", "the first backup creates it")
    try:
        engine.ensure_repository(repository)
    except EngineError as exc:
        return Step(what, FAILED, str(exc), reach_repository_fix(machine, repository, str(exc)))
    return Step(what, OK, "created just now, from the machine")


_SFTP = re.compile(
    r"sftp:(?://)?(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?[:/]"
)


def reach_repository_fix(machine: Machine, repository: Repository, error: str) -> str | None:
    """Given why the machine could not open ``repository``, return the fix, or None.

    For sftp, restic runs the machine's own ``ssh``: its known_hosts must hold the NAS's key
    and the NAS must accept the machine user's key. Those are set up on the machine, not on
    the controller.
    """
    text = error.lower()
    if "wrong repository password" in text:
        return f"the password reference of repository {repository.name} does not open it"
    found = _SFTP.match(repository.url)
    if found is None:
        return None
    host, port = found["host"], found["port"]
    nas_user = found["user"] or "the NAS user"
    user = machine.user or "root"
    target = f"{nas_user}@{host}" if found["user"] else host
    port_option = f"-p {port} " if port else ""
    keyscan = (
        f"`ssh-keyscan {port_option}{host.strip('[]')} >> ~/.ssh/known_hosts` and compare the "
        "fingerprint (`ssh-keygen -lf ~/.ssh/known_hosts`) with the NAS's own "
        "(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the NAS)"
    )
    copy_id = (
        f"create a key if there is none (`ssh-keygen -t ed25519`) and add ~/.ssh/id_ed25519.pub "
        f"to ~/.ssh/authorized_keys of {nas_user} on {host} (`ssh-copy-id {port_option}{target}`)"
    )
    if "host key verification failed" in text:
        return (
            f"the machine does not know the NAS's host key: on {machine.name}, as {user}, run "
            + keyscan
        )
    if "permission denied" in text:
        return f"the NAS refuses {machine.name}'s key: on {machine.name}, as {user}, " + copy_id
    if any(
        word in text
        for word in ("connection refused", "no route", "could not resolve", "timed out")
    ):
        where = f"{host}:{port}" if port else host
        return f"{machine.name} cannot reach {where}: check its network, DNS and firewall"
    if "sftp session" in text or "subprocess ssh" in text:
        # ssh died before restic read why (its message is lost in a race): name both causes.
        return (
            f"the machine's ssh could not open an sftp session to {host}; on {machine.name}, as "
            f"{user}, `ssh {port_option}{target}` must work without a question: the NAS's host "
            f"key must be known (run {keyscan}) and the NAS must accept the machine's key "
            f"({copy_id})"
        )
    return None


def _reach_fix(machine: Machine) -> str:
    return (
        f"check that {machine.address or machine.name} is on and reachable from the controller "
        f"(port {machine.port}), and the address and port in the policy"
    )


def _login_fix(machine: Machine) -> str:
    identity = machine.identity or "~/.ssh/id_ed25519"
    return (
        f"authorise the controller's key on the machine: ssh-copy-id -i {identity}.pub "
        f"-p {machine.port} {machine.user or 'root'}@{machine.address}"
    )


def _restic_fix(machine: Machine) -> str:
    return (
        "install restic 0.14 or later on the machine (Debian/Ubuntu: apt install restic; "
        "Windows: restic.exe on the PATH), or set the machine's `restic` key to its path"
    )


def confirm_with(yes: bool, ask: Callable[[str], str] | None) -> Confirm:
    """Return the confirmation function: ``yes`` (``--yes``) answers every question but a
    dangerous one, which only ``ask`` (a prompt on a terminal) can answer. With neither a
    prompt nor ``--yes`` it raises UsageError."""

    def confirm(question: str, dangerous: bool) -> bool:
        if yes and not dangerous:
            return True
        if ask is None:
            if yes:
                return False  # the step then says why and what to do by hand
            raise UsageError(
                "enroll asks before it pins a host key or creates a repository: run it on a "
                "terminal, or pass --yes once you have verified the machine's key"
            )
        return ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")

    return confirm
