"""Who did it: the OS user behind a run (``operator``) and the engineer named in its record.

The maintenance log names two people per run. ``operator`` is the OS login that started it,
taken from the system, not typed: ``SUDO_USER`` first (an engineer who runs ``sudo recoverd``),
else the process's own user; a scheduled run's operator is the daemon's user. ``engineer`` is
the name the customer reads: ``--engineer`` if given, else, for a manual run, the operator's
name in ``[provider] engineers`` (OS login -> name), else the operator's login. The client's
``engineer`` is the default for scheduled runs only: a run someone started by hand is never
silently recorded under the client's engineer.
"""

from __future__ import annotations

import getpass
import os
import pwd
from collections.abc import Mapping
from typing import Any


def process_user() -> str:
    """Return the login of this process's effective user (the daemon's user)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return str(os.geteuid())


def operator(trigger: str = "manual") -> str:
    """Return the OS user who started a run with ``trigger``: for a manual run ``SUDO_USER``
    if set, else this process's user; for a scheduled run this process's (the daemon's) user."""
    if trigger == "schedule":
        return process_user()
    sudo_user = os.environ.get("SUDO_USER", "").strip()
    if sudo_user and sudo_user != "root":
        return sudo_user
    try:
        return getpass.getuser() if os.geteuid() == os.getuid() else process_user()
    except (KeyError, OSError):
        return process_user()


def provider_engineers(policies: Any) -> Mapping[str, str]:
    """Return ``[provider] engineers`` (OS login -> name) of a policy set, or {} without one."""
    provider = getattr(policies, "provider", None)
    engineers = getattr(provider, "engineers", None)
    return engineers if isinstance(engineers, Mapping) else {}


def engineer_of_run(
    trigger: str,
    explicit: str | None,
    client_engineer: str | None,
    engineers: Mapping[str, str],
) -> str | None:
    """Return the engineer a run's record names (see the module docstring)."""
    if explicit and explicit.strip():
        return explicit.strip()
    if trigger == "schedule":
        return client_engineer
    login = operator(trigger)
    return engineers.get(login) or login
