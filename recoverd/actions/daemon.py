"""The daemon: run every machine's schedule, by itself, until stopped.

Each tick reads every level's :class:`~recoverd.actions.due.Duty` from the maintenance log and
starts the runnable ones on a bounded pool of threads, under these rules:

- one run per machine at a time (in this process by the busy table, across processes by the
  machine's lock file, which ``recoverd backup`` takes too);
- at most ``max_parallel`` runs at once, and at most a repository's ``max_parallel`` writers;
- retention (forget/prune) waits until no other run writes to its repository, and no new writer
  starts meanwhile;
- a ``copy`` or ``verify`` level waits while the level it reads (``of``) is due or running.

The ``schedule`` library drives the loop (the regular tick and the hourly reaping of runs whose
controller died); months, time zones and catch-up are the project's (see
:mod:`recoverd.policy.schedule` and :mod:`recoverd.actions.due`). Time comes from
:mod:`recoverd.clock`, so tests run months of schedules in seconds by calling :meth:`tick`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import schedule

from recoverd import clock
from recoverd.actions.backup import backup_machine, written_repository
from recoverd.actions.due import Duty, machine_duties, policy_changed_at
from recoverd.actions.verify import run_drill
from recoverd.alerts import Alerts
from recoverd.controller import Controller
from recoverd.errors import MachineBusy, PolicyError, RecoverdError
from recoverd.log.maintenance import this_process
from recoverd.metrics import FleetMetrics
from recoverd.notify import safe_text
from recoverd.policy import load_policies
from recoverd.policy.model import Level, Machine
from recoverd.text import visible
from recoverd.transport import give_up_all

log = logging.getLogger(__name__)

DEFAULT_MAX_PARALLEL = 4
DEFAULT_GRACE = 60.0
"""Seconds a stopping daemon lets running runs finish before it interrupts them."""
DEFAULT_TICK = 60.0
"""Seconds between two looks at the schedules when nothing else wakes the daemon."""
REAP_EVERY_MINUTES = 60

STOP_WAIT_S = 30.0
"""How long a stopping daemon waits, after the grace, for runs to stop their remote commands
(the ssh transport needs at most about 20 s: a new connection, SIGTERM, SIGKILL)."""


def run_verify_level(ctl: Controller, machine: Machine, level: Level) -> dict[str, Any]:
    """Run a scheduled restore drill of the verify ``level``; return the run's view."""
    return run_drill(ctl, machine, level, trigger="schedule")


def log_run(machine: Machine, view: dict[str, Any]) -> None:
    """Log how a run ended: a failure at WARNING (it will be retried) or ERROR, with the
    client, machine, level, run id and reason."""
    state = view["state"]
    stats = view.get("stats") or {}
    if state in ("failed", "interrupted"):
        level = (
            logging.WARNING if stats.get("transient") or state == "interrupted" else logging.ERROR
        )
        retry = " (transient: retried)" if stats.get("transient") else ""
    else:
        level, retry = logging.INFO, ""
    log.log(
        level,
        "%s %s %s run %s %s%s%s",
        machine.qualified_name,
        view["level"],
        view["action"],
        view["id"],
        state,
        retry,
        f": {safe_text(view['error'], 2000)}" if view.get("error") else "",
    )


class RepositoryGate:
    """Writers per repository (up to its ``max_parallel``) and exclusive access for retention.

    Keys are ``client/repository``. A writer slot is taken without waiting
    (:meth:`try_write`); :meth:`exclusive`, entered by a writer, waits until it is the only
    one, and keeps new writers out while it waits and works.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._writers: Counter[str] = Counter()
        self._claimed: Counter[str] = Counter()
        """Writers waiting for, or holding, exclusive access."""

    def try_write(self, key: str, limit: int | None) -> bool:
        """Take a writer slot of ``key`` and return True, or return False if none is free."""
        with self._changed:
            full = limit is not None and self._writers[key] >= limit
            if full or self._claimed[key]:
                return False
            self._writers[key] += 1
            return True

    def end_write(self, key: str) -> None:
        """Give back a writer slot of ``key``."""
        with self._changed:
            self._writers[key] -= 1
            self._changed.notify_all()

    @contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        """Hold ``key`` alone for the block; the caller holds one of its writer slots."""
        with self._changed:
            # Step out as a writer first: two writers waiting for each other would deadlock.
            self._writers[key] -= 1
            self._claimed[key] += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._writers[key] == 0)
            self._writers[key] += 1  # the caller's slot, now the only one
        try:
            yield
        finally:
            with self._changed:
                self._claimed[key] -= 1
                self._changed.notify_all()

    def writers(self, key: str) -> int:
        with self._changed:
            return self._writers[key]


class Daemon:
    """Runs the due levels of every machine of ``ctl``'s policies."""

    def __init__(
        self,
        ctl: Controller,
        *,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        tick_seconds: float = DEFAULT_TICK,
        verify: Callable[[Controller, Machine, Level], dict[str, Any]] = run_verify_level,
        alerts: Alerts | None = None,
    ) -> None:
        self.ctl = ctl
        self.alerts = alerts or Alerts(ctl)
        try:
            self.alerts.learn_secrets()  # before any run: a machine's error may repeat one
        except Exception:
            log.exception("cannot read the notification routes")
        self.metrics = FleetMetrics()
        self._textfile_error: str | None = None
        self.max_parallel = max_parallel
        self.tick_seconds = tick_seconds
        self.verify = verify
        self.gate = RepositoryGate()
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="recoverd-run")
        self._busy: dict[str, str] = {}
        """Machines with a run in progress (qualified name -> level)."""
        self._known: dict[str, list[Duty]] = {}
        self._read_at: dict[str, datetime] = {}
        """When each machine's duties in ``_known`` were read from the log."""
        """Each machine's duties at the last look: reading the log again is only needed once
        one falls due, a run of the machine ends, or the policies change."""
        self._ended: set[str] = set()
        """Machines whose run ended since the last look."""
        self._unready: set[str] = set()
        """Machines not enrolled yet, already said in the log."""
        self._held: dict[str, datetime] = {}
        """Machines not to try again before a time: busy elsewhere, or a run that broke
        before the log could say when to retry."""
        self.started = 0
        """Runs started so far (tests drive :meth:`tick` until it starts nothing more)."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        """Notified when the last run in progress ends."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()

    # -- one look at the schedules ---------------------------------------------------------

    def tick(self) -> datetime:
        """Start every runnable level the rules allow; return when to look again."""
        now = clock.now()
        duties = [
            duty
            for machine in self.ctl.policies.machines()
            if self._ready(machine)
            for duty in self._look(machine, now)
        ]
        pending = {
            (d.machine.qualified_name, d.level.name) for d in duties if d.runnable or d.running
        }
        # A level others read (``of``) goes first; among equals, the longest-waiting.
        order = sorted(
            (d for d in duties if d.runnable),
            key=lambda d: (d.level.of is not None, d.run_at, d.machine.qualified_name),
        )
        for duty in order:
            if self._stop.is_set() or self._full():
                break  # a fleet queued behind max_parallel waits for the next run to end
            self._dispatch(duty, pending, now)
        self._watch(duties, now)
        upcoming = [d.run_at for d in duties if d.run_at is not None and d.run_at > now]
        alert_at = self.alerts.next_wake(duties, now)
        return min(
            [
                *upcoming,
                *([alert_at] if alert_at else []),
                now + timedelta(seconds=self.tick_seconds),
            ]
        )

    def _watch(self, duties: list[Duty], now: datetime) -> None:
        """Turn the levels' standing into incident messages and metrics; neither may ever
        stop the daemon from running levels."""
        try:
            self.alerts.observe(duties, now, fleet=True)
        except Exception:
            log.exception("looking for incidents failed; trying again at the next look")
        self.metrics.update(duties, now)
        self.metrics.count_deliveries(self.alerts.outbox.results)
        textfile = self.ctl.policies.provider.metrics_textfile
        if textfile:  # every look, so that its age tells a collector the daemon is alive
            try:
                self.metrics.write_textfile(textfile)
                self._textfile_error = None
            except OSError as exc:
                problem = f"cannot write the metrics textfile {textfile}: {exc.strerror or exc}"
                if problem != self._textfile_error:  # once, not at every look
                    log.error("%s", problem)
                self._textfile_error = problem

    def _ready(self, machine: Machine) -> bool:
        """Whether the machine's scheduled runs may start: a machine not enrolled yet waits
        (said once in the log), so that no run bound to fail reaches the customer's report."""
        transports = self.ctl.plugins["transports"]
        reason = (
            transports.get(machine.transport).unready(machine)
            if machine.transport in transports
            else None
        )
        name = machine.qualified_name
        with self._lock:
            if reason is None:
                self._unready.discard(name)
                return True
            if name not in self._unready:
                self._unready.add(name)
                log.warning("%s waits: %s", name, reason)
        return False

    def _look(self, machine: Machine, now: datetime) -> list[Duty]:
        """Return the machine's duties at ``now``, read from the log only when needed."""
        name = machine.qualified_name
        with self._lock:
            ended = name in self._ended
            self._ended.discard(name)
        known = self._known.get(name)
        read_at = self._read_at.get(name)
        # Re-read when a due time arrived since the last read, not merely because a level is
        # due: a machine queued behind max_parallel stays as read until its own run ends (else
        # every finished run re-reads every queued machine: quadratic in the fleet).
        if (
            ended
            or known is None
            or read_at is None
            or any(d.run_at is None or read_at < d.run_at <= now for d in known)
        ):
            client = self.ctl.policies.clients[machine.client]
            known = self._known[name] = machine_duties(
                self.ctl.log, machine, client.timezone, now, policy_changed_at(client.source)
            )
            self._read_at[name] = now
        return known

    def _full(self) -> bool:
        with self._lock:
            return len(self._busy) >= self.max_parallel

    def _dispatch(self, duty: Duty, pending: set[tuple[str, str]], now: datetime) -> bool:
        machine, level = duty.machine, duty.level
        if level.of and (machine.qualified_name, level.of) in pending:
            return False  # its source runs first; this one follows on a later tick
        key = None
        repository = written_repository(level)
        with self._lock:
            if len(self._busy) >= self.max_parallel or machine.qualified_name in self._busy:
                return False
            if machine.qualified_name in self._ended:
                # Its run ended after this tick read its duties: they are stale (the level
                # is no longer due). The run's end woke the loop, and the next tick re-reads.
                return False
            if self._held.get(machine.qualified_name, now) > now:
                return False
            if repository is not None:
                key = f"{machine.client}/{repository}"
                limit = self.ctl.policies.clients[machine.client].repositories[repository]
                if not self.gate.try_write(key, limit.max_parallel):
                    return False
            self._busy[machine.qualified_name] = level.name
            self.started += 1
        log.info("starting %s %s (%s)", machine.qualified_name, level.name, duty.reason)
        self._pool.submit(self._run, machine, level, key)
        return True

    def _run(self, machine: Machine, level: Level, key: str | None) -> None:
        try:
            if level.kind == "verify":
                views = [self.verify(self.ctl, machine, level)]
            else:
                views = backup_machine(
                    self.ctl, machine, [level], trigger="schedule", exclusive=self.gate.exclusive
                )
            for view in views:
                self.metrics.count_run(view)
                log_run(machine, view)
        except MachineBusy as exc:  # a manual run holds it: the level stays due
            log.info("%s; trying again in %gs", exc, self.tick_seconds)
            self._hold(machine)
        except RecoverdError as exc:
            log.error(
                "%s %s: the run did not start: %s", machine.qualified_name, level.name, visible(exc)
            )
            self._hold(machine)
        except Exception:
            log.exception("run of %s %s failed", machine.qualified_name, level.name)
            self._hold(machine)
        finally:
            if key is not None:
                self.gate.end_write(key)
            with self._lock:
                del self._busy[machine.qualified_name]
                self._ended.add(machine.qualified_name)
                if not self._busy:
                    self._idle.notify_all()
            self._wake.set()

    def _hold(self, machine: Machine) -> None:
        with self._lock:
            self._held[machine.qualified_name] = clock.now() + timedelta(seconds=self.tick_seconds)

    # -- the loop and its signals -----------------------------------------------------------

    def request_reload(self) -> None:
        """Ask the loop to reload the policies (SIGHUP); safe in a signal handler."""
        self._reload.set()
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the loop to stop starting runs (SIGTERM/SIGINT); safe in a signal handler."""
        self._stop.set()
        self._wake.set()

    def reload(self) -> bool:
        """Load and check the policies again; keep the old ones if the new ones are broken.

        Return True if the new policies are in use.
        """
        try:
            policies = load_policies(self.ctl.policy_dir, secret_schemes=self.ctl.secrets.schemes)
        except PolicyError as exc:
            log.error(
                "policy reload refused, the previous policies stay in force: %d problem(s):\n%s",
                len(exc.problems),
                "\n".join(exc.problems),
            )
            return False
        except Exception:  # a loader bug must not end the daemon: it serves the old policies
            log.exception("policy reload failed, the previous policies stay in force")
            return False
        self.ctl.policies = policies  # replaces the cached_property's value
        self._known.clear()
        self._read_at.clear()
        log.info(
            "policies reloaded: %d client(s), %d machine(s)",
            len(policies.clients),
            len(policies.machines()),
        )
        return True

    def serve(self) -> None:
        """Run schedules until :meth:`request_stop`; running runs are left to :meth:`shutdown`."""
        loop = schedule.Scheduler()
        next_look = clock.now()
        # A regular look even when nothing is due soon: a machine busy with a manual run, a
        # clock that jumped. And the reaping of runs whose recoverd process died elsewhere.
        loop.every(self.tick_seconds).seconds.do(self._wake.set)
        loop.every(REAP_EVERY_MINUTES).minutes.do(self.ctl.log.reap_orphans)
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            now = clock.now()
            if self._wake.is_set() or now >= next_look:
                self._wake.clear()
                try:
                    next_look = self.tick()
                except Exception:  # a bad tick (disk full, ...) must not end the daemon
                    log.exception("looking at the schedules failed; trying again later")
                    next_look = now + timedelta(seconds=self.tick_seconds)
            loop.run_pending()
            idle = loop.idle_seconds
            until_due = (next_look - clock.now()).total_seconds()
            self._wake.wait(max(0.0, min(until_due, idle if idle is not None else until_due)))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait (real time) until no run is in progress; return False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def shutdown(self, grace: float) -> list[str]:
        """Stop: let running runs finish within ``grace`` seconds, then give up on them: their
        commands are stopped on the machines and they are recorded interrupted.

        Return the ids of the runs recorded ``interrupted`` (their threads are abandoned: the
        caller ends the process, which closes their connections).
        """
        self._stop.set()
        self._pool.shutdown(wait=False)
        if self.wait_idle(grace):
            return []
        me = this_process()
        store = self.ctl.log.store

        def open_runs_of_this_process() -> list[str]:
            return [
                start.run_id
                for start in store.open_runs()
                if (start.body.get("owner") or {}).get("pid") == os.getpid()
                and (start.body.get("owner") or {}).get("since") == me["since"]
            ]

        interrupted = open_runs_of_this_process()
        # A run waiting on a remote command stops it on the machine and records itself
        # interrupted, saying whether the stop worked; the rest are recorded below.
        reason = f"the daemon was stopped and the run did not end within {grace:g}s"
        if give_up_all(reason):
            self.wait_idle(STOP_WAIT_S)
        with store.transaction():
            for run_id in open_runs_of_this_process():
                self.ctl.log.finish(run_id, "interrupted", error=reason)
        return interrupted
