"""Witnesses: machines of a client that keep a copy of the signed head after every run.

``[audit] witness = ["acme/srv-01:/var/lib/recoverd-witness"]`` in provider.toml names places on
client machines, reached over the machines' own transports. After every run of that client (and
every acceptance of one) the controller appends one line to ``heads`` in that directory::

    2026-11-04T01:05:00+00:00 log head 1234:<hash> signed <signature> key ed25519:<fingerprint>

Each line is an anchor (see :mod:`recoverd.log.anchors`): the customer's own server then holds
evidence of what the log said that the provider cannot rewrite from the controller (the
customer can make the file append-only, ``chattr +a``). ``recoverd log verify --witness`` and
the report's integrity line read the lines back and check every one.

A witness that cannot be reached is a warning: it never fails, delays much or loses a run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from recoverd.errors import RecoverdError
from recoverd.log.anchors import Anchor, anchor_text, anchors_in_text
from recoverd.log.signing import Head, key_fingerprint
from recoverd.transport import CommandRequest

log = logging.getLogger(__name__)

HEADS_FILE = "heads"
TIMEOUT = 30.0
"""Seconds for one command on a witness (its connection has the transport's own timeout)."""

_PLACE = re.compile(r"([^/]+)/([^:]+):(/.*)")

# $1 is the directory: the command line holds no data, the head comes on stdin.
_APPEND = 'umask 077 && mkdir -p -- "$1" && cat >> "$1/heads"'
_READ = '[ -e "$1/heads" ] || exit 3; cat -- "$1/heads"'


@dataclass(frozen=True)
class Place:
    """One witness: a machine of a client and a directory on it."""

    client: str
    machine: str
    path: str

    def __str__(self) -> str:
        return f"{self.client}/{self.machine}:{self.path}"


def places(policies: Any, client: str | None = None) -> list[Place]:
    """Return the witnesses of ``[audit] witness`` (of ``client`` only, if given)."""
    found = []
    for text in getattr(getattr(policies, "provider", None), "witness", ()) or ():
        match = _PLACE.fullmatch(text)
        if match and (client is None or match[1] == client):
            found.append(Place(match[1], match[2], match[3]))
    return found


def _run(ctl: Any, place: Place, script: str, stdin: bytes | None = None) -> Any:
    """Run ``script`` on the witness with its directory as $1; return the outcome.

    Raise RecoverdError if the machine is not in the policies or cannot be reached.
    """
    client = ctl.policies.clients.get(place.client)
    machine = client.machines.get(place.machine) if client else None
    if machine is None:
        raise RecoverdError(f"witness {place}: no machine {place.client}/{place.machine}")
    transport = ctl.transport(machine)
    if transport.os_family != "posix":
        raise RecoverdError(f"witness {place}: only POSIX machines can be witnesses")
    transport.connect()
    try:
        request = CommandRequest(
            ["sh", "-c", script, "recoverd-witness", place.path], stdin=stdin, timeout=TIMEOUT
        )
        return transport.run(request)
    finally:
        transport.close()


def witness_line(head: Head, at: str | None, key: str) -> str:
    """Return the line a witness keeps for ``head``."""
    return f"{at or '-'} {anchor_text(head)} key {key}\n"


def push(ctl: Any, client: str) -> list[str]:
    """Append the current signed head to every witness of ``client``; return the warnings
    (one per witness that could not be written), never raise."""
    targets = places(ctl.policies, client)
    if not targets:
        return []
    store = ctl.log.store
    with store.snapshot() as snapshot:
        head = snapshot.head
        at = snapshot.at_of(head.seq) if head else None
    if head is None:
        return []
    line = witness_line(head, at, key_fingerprint(store.key.public())).encode("ascii")
    warnings = []
    for place in targets:
        try:
            outcome = _run(ctl, place, _APPEND, line)
            if not outcome.ok:
                detail = outcome.stderr.decode("utf-8", "replace").strip()[-200:]
                raise RecoverdError(f"writing {place.path}/{HEADS_FILE} failed: {detail}")
        except Exception as exc:  # a witness never fails a run
            warnings.append(f"witness {place} did not get head {head.seq}: {exc}")
            log.warning("%s", warnings[-1])
    return warnings


class WitnessPush:
    """A log watcher: after every run's end and every acceptance, the client's witnesses get
    the signed head ([audit] witness)."""

    def __init__(self, ctl: Any) -> None:
        self.ctl = ctl

    def run_finished(self, view: dict[str, Any]) -> None:
        try:
            targets = places(self.ctl.policies, view.get("client"))
        except Exception as exc:  # broken policies are reported by the command itself
            log.debug("no witnesses after run %s: %s", view.get("id"), exc)
            return
        if not targets:
            return
        try:
            push(self.ctl, view["client"])
        except Exception as exc:  # a bug: the run is already recorded
            log.warning("witnesses not updated after run %s: %s", view.get("id"), exc)

    run_accepted = run_finished


def witness_anchors(ctl: Any, client: str | None = None) -> tuple[list[Anchor], list[str]]:
    """Return the heads every witness (of ``client``, if given) keeps, as anchors, and a
    warning per witness that could not be read."""
    anchors: list[Anchor] = []
    warnings: list[str] = []
    for place in places(ctl.policies, client):
        try:
            outcome = _run(ctl, place, _READ)
        except Exception as exc:
            warnings.append(f"witness {place} could not be read: {exc}")
            continue
        if outcome.exit_status == 3:
            warnings.append(f"witness {place} holds no heads yet ({place.path}/{HEADS_FILE})")
            continue
        if not outcome.ok:
            detail = outcome.stderr.decode("utf-8", "replace").strip()[-200:]
            warnings.append(f"witness {place} could not be read: {detail}")
            continue
        found = anchors_in_text(outcome.stdout.decode("utf-8", "replace"), f"witness {place}")
        if not found:
            warnings.append(f"witness {place}: {HEADS_FILE} holds no head")
        anchors += found
    return anchors, warnings
