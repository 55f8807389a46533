"""``recoverd service``: the systemd unit that runs the daemon from this installation.

The unit names the Python that runs this very command (``python -m recoverd``), so it works
wherever recoverd is installed: a checkout's ``.venv``, a virtualenv made from the wheel
under ``/opt``, pipx. ``examples/recoverd.service`` is this output for a checkout in
``/opt/recoverd``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from recoverd.commands import AddCommand
from recoverd.controller import Controller

UNIT = """\
# recoverd daemon: runs every machine's backup schedule on the controller.
# Made by `recoverd service`; install it with
#   recoverd service > /etc/systemd/system/recoverd.service
#   systemctl daemon-reload && systemctl enable --now recoverd
# Reload policies after an edit (checked first; a broken edit is refused and logged):
#   systemctl reload recoverd
# Logs:      journalctl -u recoverd
# Status:    {status}
#
# The secrets the policies reference (env:NAME) go into the EnvironmentFile, readable by root
# only.

[Unit]
Description=recoverd backup scheduler
Documentation=man:systemd.service(5)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
EnvironmentFile=-/etc/recoverd/secrets.env
# vault:NAME secrets: keep the vault key sealed outside the state directory, e.g.
#   systemd-creds encrypt --name=recoverd-vault.key /root/vault.key /etc/recoverd/vault.key.cred
#LoadCredentialEncrypted=recoverd-vault.key:/etc/recoverd/vault.key.cred
# SIGTERM: no new runs; running ones get --grace seconds, then are recorded `interrupted`
# (exit 130), and their commands on the machines are stopped (up to 30 s more). Keep
# TimeoutStopSec above --grace + 30.
KillMode=mixed
TimeoutStopSec={stop_timeout}
SuccessExitStatus=130
# Exit 1 at start: another daemon already uses this state directory. Exit 2: policy error.
RestartPreventExitStatus=2
Restart=on-failure
RestartSec=30
UMask=0077
StateDirectory=recoverd
StateDirectoryMode=0700
# restic's cache for repositories the controller itself writes to (local machines).
CacheDirectory=recoverd
Environment=XDG_CACHE_HOME=/var/cache/recoverd
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=read-only
ProtectSystem=full

[Install]
WantedBy=multi-user.target
"""

DEFAULT_POLICIES = Path("/etc/recoverd/policies")
DEFAULT_STATE = Path("/var/lib/recoverd")


def unit_text(
    python: str, policies: Path, state: Path, max_parallel: int = 4, grace: int = 300
) -> str:
    """Return the unit that runs ``python -m recoverd daemon`` with these settings."""
    command = [python, "-m", "recoverd"]
    places = ["--policies", str(policies), "--state", str(state)]
    daemon = [*command, "daemon", *places, "--max-parallel", str(max_parallel)]
    return UNIT.format(
        exec_start=shlex.join([*daemon, "--grace", str(grace)]),
        status=shlex.join([*command, *places, "status"]),
        stop_timeout=grace + 45,
    )


def cmd_service(ctl: Controller, args: argparse.Namespace) -> int:
    policies = getattr(args, "policies", None) or DEFAULT_POLICIES
    state = getattr(args, "state_dir", None) or DEFAULT_STATE
    sys.stdout.write(
        unit_text(
            sys.executable,
            Path(policies).absolute(),
            Path(state).absolute(),
            args.max_parallel,
            args.grace,
        )
    )
    return 0


def register(add: AddCommand) -> None:
    p = add(
        "service",
        cmd_service,
        "print a systemd unit that runs the daemon from this installation "
        f"(default --policies {DEFAULT_POLICIES} --state {DEFAULT_STATE})",
    )
    p.add_argument("--max-parallel", type=int, default=4, metavar="N", help="default 4")
    p.add_argument("--grace", type=int, default=300, metavar="S", help="default 300 seconds")
