"""Write runs to the maintenance log and read their current views back.

One :class:`MaintenanceLog` per process. Every entry goes to the store (the ``sqlite`` log sink)
and then to every other registered log sink; finished runs are handed to the notifiers.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets as stdlib_secrets
import socket
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from recoverd import clock
from recoverd.errors import RecoverdError, UsageError
from recoverd.log.anchors import Anchor, AnchorCheck, anchor_text, check_anchors
from recoverd.log.record import (
    STATES,
    Entry,
    add_to_view,
    current_view,
    empty_view,
    parse_body,
)
from recoverd.log.signing import KEY_ENV
from recoverd.log.verify import Finding, Verdict, verify_chain
from recoverd.people import operator
from recoverd.plugins import Kind
from recoverd.secrets import redact

log = logging.getLogger(__name__)

STORE = "sqlite"


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block.

    Reading tens of thousands of runs makes hundreds of thousands of dicts and no reference
    cycles; the collector would walk the growing heap again and again (a third of the time).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def utc_now() -> datetime:
    """Return the current time of the controller's clock, timezone-aware in UTC."""
    return clock.now()


def iso(moment: datetime) -> str:
    """Return ``moment`` as ISO 8601 in UTC with offset, to the second."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """Return the kernel's start time of process ``pid`` (to tell a reused pid), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict[str, Any]:
    """Return what identifies this controller process in a start entry."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": _process_start(os.getpid())}


def process_alive(owner: dict[str, Any]) -> bool:
    """Return False only when ``owner`` is surely gone (same host, pid dead or reused)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    return isinstance(pid, int) and _process_start(pid) == owner.get("since")


@dataclass(frozen=True)
class RunFilter:
    """Which runs to show: every field that is set must match."""

    client: str | None = None
    machine: str | None = None
    since: datetime | None = None
    state: str | None = None
    level: str | None = None
    action: str | None = None


class MaintenanceLog:
    """The maintenance log of one state directory."""

    def __init__(self, state_dir: Path, sinks: Kind, notifiers: Kind | None = None) -> None:
        self.store = sinks.get(STORE)(state_dir)
        self.mirrors = [cls(state_dir) for name, cls in sinks.entries.items() if name != STORE]
        self.notifiers = [cls() for cls in (notifiers.entries.values() if notifiers else [])]
        self.watchers: list[Any] = []
        """Told what the log records, each through the methods it has: ``run_started(run_id,
        body)``, ``run_finished(view)``, ``run_accepted(view)`` (the dead-man pings, the
        witnesses); like a notifier, a failing watcher is logged and never fails the run."""
        self.reap_orphans()

    def _write(self, run_id: str, type_: str, body: dict[str, Any], at: datetime) -> Entry:
        entry = self.store.write(run_id, type_, iso(at), body)
        for mirror in self.mirrors:
            try:
                mirror.append(entry)
            except Exception as exc:  # a mirror must never lose the run for the store
                log.warning("log sink %s failed: %s", type(mirror).__name__, exc)
        return entry

    def start(
        self,
        *,
        client: str,
        machine: str,
        level: str | None,
        kind: str | None,
        action: str,
        trigger: str = "manual",
        engineer: str | None = None,
        reported_by: str | None = None,
        symptom: str | None = None,
        repository: str | None = None,
        at: datetime | None = None,
    ) -> str:
        """Record that a run began (state ``running``) and return its id."""
        at = at or utc_now()
        run_id = f"{at.astimezone(UTC):%Y%m%d-%H%M%S}-{stdlib_secrets.token_hex(3)}"
        body = {
            "client": client,
            "machine": machine,
            "level": level,
            "kind": kind,
            "action": action,
            "trigger": trigger,
            "engineer": engineer,
            "reported_by": reported_by,
            "symptom": redact(symptom) if symptom else symptom,
            "repository": repository,
            "operator": operator(trigger),
            "owner": this_process(),
        }
        self._write(run_id, "start", body, at)
        self._tell(self.watchers, "run_started", run_id, body)
        return run_id

    def finish(
        self,
        run_id: str,
        state: str,
        *,
        snapshot: str | None = None,
        stats: dict[str, Any] | None = None,
        error: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record how a run ended and return its current view. Tell the notifiers."""
        if state not in STATES or state == "running":
            raise ValueError(f"a run cannot end in state {state!r}")
        body = {
            "state": state,
            "snapshot": snapshot,
            "stats": stats or {},
            "error": redact(error) if error else None,
            "operator": operator(),
        }
        self._write(run_id, "end", body, at or utc_now())
        view = self.run(run_id)
        self._tell([*self.notifiers, *self.watchers], "run_finished", view)
        return view

    @staticmethod
    def _tell(listeners: list[Any], event: str, *args: Any) -> None:
        """Call ``event`` on each listener that has it; a failure is logged, never raised:
        the run is recorded already."""
        for listener in listeners:
            method = getattr(listener, event, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception as exc:
                log.warning("%s of %s failed: %s", event, type(listener).__name__, exc)

    def accept(
        self, run_id: str, by: str, note: str | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        """Append an acceptance (sign-off) of a finished run; return the run's current view.

        A run may be accepted more than once (e.g. by the engineer's lead, then by the
        customer): every acceptance is kept, the view shows the latest. Raise UsageError if
        there is no such run or it is still running.
        """
        if not by.strip():
            raise UsageError("say who accepts the run: --by NAME")
        with self.store.transaction():
            try:
                view = self.run(run_id)
            except KeyError:
                raise UsageError(
                    f"no run {run_id!r} in the maintenance log (see `recoverd log`)"
                ) from None
            if view["state"] == "running":
                raise UsageError(f"run {run_id} is still running; accept it once it has ended")
            body = {
                "client": view["client"],
                "machine": view["machine"],
                "by": by.strip(),
                "note": redact(note) if note else None,
                "operator": operator(),
            }
            self._write(run_id, "accept", body, at or utc_now())
        view = self.run(run_id)
        self._tell(self.watchers, "run_accepted", view)
        return view

    def acceptances(self, run_id: str) -> list[Entry]:
        """Return the acceptance entries of a run, oldest first."""
        return [e for e in self.store.entries([run_id]) if e.type == "accept"]

    def verify(
        self,
        public_key: Ed25519PublicKey | None = None,
        *,
        signatures: bool = False,
        since: datetime | None = None,
        anchors: Iterable[Anchor] = (),
        warnings: Iterable[str] = (),
    ) -> Verdict:
        """Check the chain, the signed head and the last signature; return the verdict.

        With ``signatures`` every entry's signature is checked too (see
        :mod:`recoverd.log.verify`). With ``since`` only the entries from the first one dated
        ``since`` or later to the end of the log are checked. Each of ``anchors``, and the
        signing key's record when it keeps one, must still be in the log unchanged (see
        :mod:`recoverd.log.anchors`); ``warnings`` are passed on into the verdict. Without
        ``public_key`` the state directory's own key is used. Raise RecoverdError if there
        is neither a key given nor one where the log's key is kept.
        """
        anchors = list(anchors)
        key_file = self.store.key
        record = key_file.read_record()
        if record is not None:
            anchors.append(
                Anchor(
                    record.seq,
                    record.hash,
                    record.signature,
                    f"the signing key's record {key_file.record_path}",
                )
            )
        with self.store.snapshot() as snapshot:
            last = snapshot.last_seq()
            if last is None and snapshot.head is None and not public_key and not key_file.exists:
                if not anchors:  # a new, empty log: nothing to check
                    return Verdict(0, 0, None, None, None, None, warnings=tuple(warnings))
                # Wiped together with its key: only the anchors can tell.
                checks = tuple(
                    AnchorCheck(
                        a,
                        False,
                        "removed",
                        f"{a.source} (entry {a.seq}): the log is "
                        "empty and has no signing key; it was wiped after this anchor",
                    )
                    for a in anchors
                )
                return Verdict(
                    0, 0, None, None, None, None, anchors=checks, warnings=tuple(warnings)
                )
            if public_key is None and not key_file.exists and last is not None:
                raise RecoverdError(
                    f"the log signing key {key_file.path} is missing, but the maintenance log "
                    f"has {last} entries: restore the key from where you keep it (or point "
                    f"{KEY_ENV} at it), or check the log with --pubkey FILE"
                )
            key = public_key or key_file.public()
            first = 1
            if since is not None and last is not None:
                # Nothing dated `since` or later: check the last entry, so that the head and
                # its signature are still checked against the log.
                first = snapshot.first_seq_since(iso(since)) or last
            verdict = verify_chain(
                snapshot, key, snapshot.head, first_seq=first, signatures=signatures
            )
            if (
                last is None
                and verdict.problem is None
                and key_file.exists
                and not key_file.outside
            ):
                # The key in the state directory is made with the first entry: a log that has
                # one but no entry (and no head) had entries that were removed with the head.
                verdict = replace(
                    verdict,
                    problem=Finding(
                        None,
                        "removed",
                        f"the log is empty, but its signing key {key_file.path} exists and is only "
                        "made when the first entry is written: the log and its head were wiped",
                    ),
                )
            checks = check_anchors(snapshot, key, anchors)
        return replace(verdict, anchors=tuple(checks), warnings=tuple(warnings))

    def head_anchor(self) -> str | None:
        """Return the signed head as an anchor line (``log head SEQ:HASH signed SIG``) for
        messages that leave the controller (the daily digest), or None if there is none."""
        try:
            head = self.store.key.read_head()
        except RecoverdError:
            return None
        return anchor_text(head) if head else None

    def reap_orphans(self) -> list[str]:
        """Mark runs whose controller process is gone ``interrupted``; return their ids."""
        reaped = []
        with self.store.transaction():
            for start in self.store.open_runs():
                owner = start.body.get("owner") or {}
                if process_alive(owner):
                    continue
                error = (
                    f"the controller process (pid {owner.get('pid')} on {owner.get('host')}) "
                    "ended before the run finished"
                )
                body = {
                    "state": "interrupted",
                    "error": error,
                    "stats": {},
                    "snapshot": None,
                    "operator": operator(),
                }
                self._write(start.run_id, "end", body, utc_now())
                reaped.append(start.run_id)
        return reaped

    def run(self, run_id: str) -> dict[str, Any]:
        """Return the current view of one run. Raise KeyError if there is no such run."""
        entries = list(self.store.entries([run_id]))
        if not entries:
            raise KeyError(run_id)
        return current_view(entries)

    def runs(self, where: RunFilter | None = None) -> list[dict[str, Any]]:
        """Return the current views of the matching runs, oldest first."""
        where = where or RunFilter()
        ids = self.store.run_ids(
            client=where.client,
            machine=where.machine,
            since=iso(where.since) if where.since else None,
        )
        views = self._views(ids)
        return [
            v
            for v in views
            if (where.state is None or v["state"] == where.state)
            and (where.level is None or v["level"] == where.level)
            and (where.action is None or v["action"] == where.action)
        ]

    def level_runs(
        self,
        client: str,
        machine: str,
        level: str,
        action: str,
        since: datetime,
        good_states: tuple[str, ...],
    ) -> list[dict[str, Any]]:
        """Return the current views of the runs a level's schedule depends on, oldest first:
        the level's newest run, its newest run in one of ``good_states`` (however old), and
        every run of it started at or after ``since``. ``action`` tells the level's own runs
        from its retention runs."""
        return self._views(
            self.store.level_run_ids(client, machine, level, action, iso(since), good_states)
        )

    def _views(self, ids: list[str]) -> list[dict[str, Any]]:
        """Return the current views of the runs ``ids``, in that order."""
        grouped: dict[str, list[Entry]] = defaultdict(list)
        for entry in self.store.entries(ids):
            grouped[entry.run_id].append(entry)
        return [current_view(grouped[i]) for i in ids if i in grouped]

    def good_backups(self, client: str, machine: str, level: str) -> list[dict[str, Any]]:
        """Return the succeeded backup runs of a machine's level that made a snapshot: the
        restore points recoverd vouches for, oldest first."""
        where = RunFilter(
            client=client, machine=machine, level=level, action="backup", state="succeeded"
        )
        return [v for v in self.runs(where) if v["snapshot"]]

    def last_run(
        self,
        client: str,
        machine: str,
        level: str,
        state: str | tuple[str, ...] | None = None,
        action: str | None = None,
    ) -> dict[str, Any] | None:
        """Return the newest run of a machine's level (in ``state``, or one of several, and
        of ``action``, if given), or None."""
        run_id = self.store.newest_level_run_id(client, machine, level, state, action)
        return self.run(run_id) if run_id else None

    def runs_started(self, client: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """Return the current views of the client's runs started in [``since``, ``until``),
        in log order: one query, whatever the length of the client's history."""
        views: dict[str, dict[str, Any] | None] = {}
        others = []
        with paused_gc():
            for row in self.store.runs_started_rows(client, iso(since), iso(until)):
                run_id, count, s_seq, s_at, s_body, s_hash, s_prev, e_seq, *end = row
                if count == 2 and e_seq is not None and e_seq > s_seq:
                    # The usual run, a start and then an end: its view from the two rows.
                    view = empty_view()
                    add_to_view(view, run_id, "start", s_at, parse_body(s_body), s_hash, s_prev)
                    e_at, e_body, e_hash, e_prev = end
                    add_to_view(view, run_id, "end", e_at, parse_body(e_body), e_hash, e_prev)
                    views[run_id] = view
                elif run_id not in views:
                    views[run_id] = None  # keeps its place in log order
                    others.append(run_id)
            if others:
                grouped: dict[str, list[Entry]] = defaultdict(list)
                for entry in self.store.entries(others):
                    grouped[entry.run_id].append(entry)
                views.update((run_id, current_view(grouped[run_id])) for run_id in others)
        return [view for view in views.values() if view is not None]

    def last_good_backup(
        self, client: str, machine: str, level: str | None, before: datetime
    ) -> dict[str, Any] | None:
        """Return the newest (in log order) succeeded backup run of a machine's level (of any
        level if ``level`` is None) started before ``before``, or None."""
        run_id = self.store.last_good_backup_id(client, machine, level, iso(before))
        return self.run(run_id) if run_id else None

    def backup_history(
        self, client: str, boundaries: list[datetime]
    ) -> list[tuple[str | None, int, str | None, int, int]]:
        """Return the client's backup runs before the last of ``boundaries`` (month starts),
        per repository, month bucket (-1: before the first) and state: runs and bytes added."""
        return self.store.backup_history(client, [iso(b) for b in boundaries])

    def first_run_at(self, client: str, machine: str) -> str | None:
        """Return when the machine's first recorded run started (ISO 8601), or None."""
        return self.store.first_start_at(client, machine)

    def bytes_added(self, client: str, before: datetime) -> dict[str | None, int]:
        """Return, per repository, the bytes added by the client's backup runs started before
        ``before`` (the sum of their ``bytes_added`` stats)."""
        return self.store.bytes_added_by_repository(client, iso(before))

    def close(self) -> None:
        self.store.close()
