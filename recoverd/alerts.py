"""Incidents and their messages: what the log says about each level, turned into one message
when something breaks, one when it is good again, and a daily digest.

Each level has two tracks: its *health* (``failed``, ``stalled``, ``drill-failed``,
``offline``, ``overdue``) and its *data* (``anomaly``). A track that turns bad opens an
incident and sends its event once; it stays open, silent, however often the level fails again,
until a good run resolves it (``resolved``). Open incidents live in the state directory
(``incidents.json``, under a file lock), so a daemon restart or a manual ``--notify`` run never
announces an incident twice.

The facts come from the runs as recorded: ``stats.stalled`` (a run stopped for making no
progress), a ``skipped`` run with ``stats.offline`` (an unreachable workstation),
``stats.anomaly`` (an unusual files run), a drill whose repository check did not run.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from recoverd.actions.due import Duty, ended, started
from recoverd.actions.report import parse_sla
from recoverd.controller import Controller
from recoverd.errors import SecretError
from recoverd.notify import Message, Notifier, Outbox, outbox, safe_text, url_scheme
from recoverd.output import local_time
from recoverd.policy.model import Machine, NotifyRoute
from recoverd.policy.schedule import Schedule
from recoverd.private_files import write_private
from recoverd.secrets import redact

log = logging.getLogger(__name__)

OFFLINE_ALERT_AFTER = timedelta(days=3)
"""How long a workstation may be skipped as offline before one ``offline`` event."""

INCIDENTS_FILE = "incidents.json"
HEALTH, DATA = "health", "data"
_KEEP = "keep"
"""A track whose newest run tells nothing new (running, retrying, a manual run): unchanged."""

TITLES = {
    "failed": "Backup failed",
    "stalled": "Run stalled",
    "drill-failed": "Restore drill failed",
    "offline": "Machine offline",
    "overdue": "Backup overdue",
    "anomaly": "Unusual backup",
    "resolved": "Resolved",
}


@dataclass(frozen=True)
class Condition:
    """What is wrong with one track of a level, as an event would announce it."""

    event: str
    since: datetime
    reason: str
    run: dict[str, Any] | None = None


def offline_alert_after(machine: Machine) -> timedelta:
    """Return how long ``machine`` may be offline before its ``offline`` event (its
    ``alert_after`` when the policy has one, else three days)."""
    value = getattr(machine, "alert_after", None)  # a machine key of the offline policy
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    return parse_sla(value) if isinstance(value, str) and value else OFFLINE_ALERT_AFTER


def drill_check_missing(view: dict[str, Any] | None) -> bool:
    """Return whether ``view`` is a drill whose repository check did not run (``partial``, or
    a ``check`` stat that says so): it vouches for the restore, not for the repository."""
    if view is None or view.get("action") != "verify" or view["state"] == "running":
        return False
    check = str((view.get("stats") or {}).get("check") or "")
    return view["state"] == "partial" or check.startswith("not run")


def counts(view: dict[str, Any], manual: bool) -> bool:
    """Return whether ``view`` may open an incident: a scheduled run, or with ``--notify``."""
    return manual or view.get("trigger") == "schedule"


def health_condition(duty: Duty, now: datetime, *, manual: bool = False) -> Condition | str | None:
    """Return what is wrong with the level's health at ``now``: a Condition, None when it is
    good, or ``"keep"`` when its newest run says nothing new."""
    last = duty.last_attempt
    if last is None:
        return None  # never ran: the daemon starts it; its failures will speak
    if duty.running:
        return _KEEP
    stats = last.get("stats") or {}
    state = last["state"]
    if state in ("failed", "interrupted"):
        if not counts(last, manual):
            return _KEEP
        if stats.get("stalled"):
            # Said at once, retried or not: a stalled run held a repository slot for long.
            return Condition("stalled", started(last), last.get("error") or "no progress", last)
        # A manual run with --notify is announced at once: nothing retries it for sure.
        if duty.retrying and not manual:
            return _KEEP
        if duty.level.kind == "verify":
            event = "drill-failed"
        else:
            event = "failed"
        return Condition(event, started(last), last.get("error") or state, last)
    if state == "skipped" and stats.get("offline"):
        since = _offline_since(duty, last)
        due = stats.get("offline_alert")  # the run says whether alert_after has passed
        if due is None:
            due = now - since >= offline_alert_after(duty.machine)
        if due and counts(last, manual):
            return Condition("offline", since, last.get("error") or "unreachable", last)
        return _KEEP  # skipped, not failed: no alert yet
    if drill_check_missing(last):
        if not counts(last, manual):
            return _KEEP
        check = stats.get("check") or "not run"
        reason = f"the drill restored, but the repository check did not run ({check})"
        return Condition("drill-failed", started(last), reason, last)
    missed = duty.missed_since
    if missed is not None and duty.overdue_at(now):
        good = duty.last_good
        zone = str(duty.schedule.zone)
        since = local_time(good["started_at"], zone) if good else "ever"
        wanted = local_time(missed.isoformat(), zone)
        reason = (
            f"no good run since {since}; the schedule ({duty.level.every}) wanted one by "
            f"{wanted}, grace {_human(duty.grace)}; last attempt: {state}"
        )
        return Condition("overdue", missed, reason, last)
    return None


def _offline_since(duty: Duty, last: dict[str, Any]) -> datetime:
    """Return since when the machine is offline: as its skipped run records it, else since its
    level's last good run ended."""
    recorded = (last.get("stats") or {}).get("offline_since")
    if isinstance(recorded, str):
        try:
            return datetime.fromisoformat(recorded)
        except ValueError:
            pass
    return ended(duty.last_good) if duty.last_good else started(last)


def data_condition(duty: Duty, *, manual: bool = False) -> Condition | str | None:
    """Return the level's data anomaly: a Condition for an anomalous newest run, None for a
    good one without, ``"keep"`` otherwise."""
    last = duty.last_attempt
    if last is None or duty.running or last["state"] not in ("succeeded", "partial"):
        return _KEEP
    anomaly = (last.get("stats") or {}).get("anomaly")
    if not anomaly:
        return None
    if not counts(last, manual):
        return _KEEP
    return Condition("anomaly", started(last), _describe_anomaly(anomaly), last)


def _describe_anomaly(anomaly: Any) -> str:
    """Return ``stats.anomaly`` (``changed``, ``shrunk``, ``against``) as a sentence."""
    if not isinstance(anomaly, dict):
        return f"{anomaly} (possible ransomware or mass deletion: look at the snapshot)"
    parts = []
    changed = anomaly.get("changed")
    if isinstance(changed, dict):
        parts.append(
            f"{changed.get('files')} of {changed.get('of')} files new or changed" + _share(changed)
        )
    shrunk = anomaly.get("shrunk")
    if isinstance(shrunk, dict):
        parts.append(
            f"the snapshot shrank from {shrunk.get('files_before')} to {shrunk.get('files')} "
            f"files, {shrunk.get('bytes_before')} to {shrunk.get('bytes')} bytes" + _share(shrunk)
        )
    parts += [f"{k} {v}" for k, v in anomaly.items() if k not in ("changed", "shrunk", "against")]
    against = anomaly.get("against")
    if isinstance(against, dict) and against.get("run"):
        parts.append(f"against run {against['run']} (snapshot {against.get('snapshot')})")
    return "; ".join(parts) + " (possible ransomware or mass deletion: look at the snapshot)"


def _share(figures: dict[str, Any]) -> str:
    share, limit = figures.get("share"), figures.get("limit")
    if isinstance(share, int | float) and isinstance(limit, int | float):
        return f" ({share:.0%}, limit {limit:.0%})"
    return ""


def _human(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds()) // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
    ]
    return "".join(parts) or "0m"


class IncidentBook:
    """Open incidents and sent digests, in the state directory, shared by every process."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / INCIDENTS_FILE
        self._lock_path = Path(state_dir) / (INCIDENTS_FILE + ".lock")

    @contextmanager
    def editing(self) -> Iterator[dict[str, Any]]:
        """Hold the book for the block; what the block changes is written back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            before = json.dumps(data, sort_keys=True)
            yield data
            after = json.dumps(data, sort_keys=True)
            if after != before:
                write_private(self.path, after.encode(), replace=True)

    def read(self) -> dict[str, Any]:
        """Return the book (``incidents`` by key, ``digests`` by route)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            # A damaged book only risks a repeated message; it must not stop the alerts.
            log.error("cannot read %s (%s); starting a new one", self.path, exc)
            data = {}
        data.setdefault("incidents", {})
        data.setdefault("digests", {})
        return data


def track_key(duty: Duty, track: str) -> str:
    return f"{duty.machine.qualified_name}/{duty.level.name}#{track}"


class Alerts:
    """Turns the duties of levels into incident messages and hands them to the notifiers."""

    def __init__(self, ctl: Controller, sender: Outbox | None = None) -> None:
        self.ctl = ctl
        self.outbox = sender or outbox()
        self.book = IncidentBook(ctl.state_dir)
        # A notifier is picked by URL scheme; the one registered last wins (an override).
        self._notifiers: list[Notifier] = [
            cls() for cls in ctl.plugins["notifiers"].entries.values() if _is_notifier(cls)
        ]
        self._learnt: object = None

    def learn_secrets(self) -> None:
        """Resolve every route's URLs once per policy set, so that the masking of run errors
        and log lines knows them before a machine's output can repeat one."""
        policies = self.ctl.policies
        if self._learnt is policies:
            return
        self._learnt = policies
        routes = [*policies.provider.routes.values()]
        routes += [r for c in policies.clients.values() for r in c.routes.values()]
        for route in routes:
            for reference in route.urls:
                try:
                    self.ctl.secrets.resolve(reference, "notify URL")
                except SecretError as exc:
                    log.error("route %s: %s; its messages cannot be sent", route.name, exc)

    # -- incidents ---------------------------------------------------------------------------

    def observe(
        self, duties: Iterable[Duty], now: datetime, *, manual: bool = False, fleet: bool = False
    ) -> list[Message]:
        """Given the duties of levels at ``now``, open and resolve incidents, send the digests
        that are due, and return the messages posted.

        ``manual``: the newest runs are manual runs asked to notify (``--notify``). ``fleet``:
        the duties are every level of the policies (the daemon), so incidents of levels no
        longer in the policies are dropped and digests are sent.
        """
        duties = list(duties)
        self.learn_secrets()
        messages: list[Message] = []
        with self.book.editing() as book:
            incidents = book["incidents"]
            seen = set()
            for duty in duties:
                for track, condition in (
                    (HEALTH, health_condition(duty, now, manual=manual)),
                    (DATA, data_condition(duty, manual=manual)),
                ):
                    key = track_key(duty, track)
                    seen.add(key)
                    message = self._step(incidents, key, duty, condition, now)
                    if message is not None:
                        messages.append(message)
            if fleet:
                for key in set(incidents) - seen:
                    del incidents[key]  # its level left the policies
                messages += self._digests(book["digests"], duties, incidents, now)
        for message in messages:
            self.deliver(message)
        return messages

    def _step(
        self,
        incidents: dict[str, Any],
        key: str,
        duty: Duty,
        condition: Condition | str | None,
        now: datetime,
    ) -> Message | None:
        if condition == _KEEP:
            return None
        incident = incidents.get(key)
        if condition is None:
            if incident is None:
                return None
            del incidents[key]
            return self._resolved(duty, incident, now)
        assert isinstance(condition, Condition)
        if incident is not None:
            incident["latest"] = condition.event  # still the same incident: no new message
            return None
        incidents[key] = {
            "event": condition.event,
            "since": condition.since.isoformat(),
            "opened": now.isoformat(),
            "run": (condition.run or {}).get("id"),
        }
        return self._opened(duty, condition)

    def next_wake(self, duties: Iterable[Duty], now: datetime) -> datetime | None:
        """Return the next instant an alert may fall due without a run ending: a level
        turning overdue, a digest."""
        times = []
        for duty in duties:
            if duty.missed_since is not None and not duty.running:
                times.append(duty.missed_since + duty.grace + timedelta(seconds=1))
        for route in self._digest_routes():
            times.append(self._digest_schedule(route).next_slot(now))
        later = [t for t in times if t > now]
        return min(later) if later else None

    # -- messages ----------------------------------------------------------------------------

    def _heading(self, duty: Duty) -> list[str]:
        machine, level = duty.machine, duty.level
        client = self.ctl.policies.clients.get(machine.client)
        client_name = f"{client.name} ({machine.client})" if client else machine.client
        return [
            f"Client:  {safe_text(client_name, 200)}",
            f"Machine: {machine.name} ({machine.role})",
            f"Level:   {level.name} ({level.kind}, every {level.every})",
        ]

    def _look_closer(self, duty: Duty) -> list[str]:
        return [
            "",
            "Look closer:",
            f"  recoverd log --machine {duty.machine.qualified_name} --since 7d",
            "  recoverd status",
        ]

    def _opened(self, duty: Duty, condition: Condition) -> Message:
        zone = str(duty.schedule.zone)
        run = condition.run or {}
        good = duty.last_good
        what = {
            "failed": f"the {duty.level.kind} run failed and no retry is left",
            "stalled": "the run made no progress: it was stopped and recorded failed",
            "drill-failed": "the restore drill did not pass",
            "offline": "the machine could not be reached; its runs are skipped",
            "overdue": "the level has no good run within its schedule and grace",
            "anomaly": "the backup changed an unusual share of the files or shrank sharply",
        }[condition.event]
        lines = [
            f"What:    {what}",
            *self._heading(duty),
            f"Since:   {local_time(condition.since.isoformat(), zone)} ({zone})",
            "Last good run: "
            + (f"{local_time(good['started_at'], zone)} ({good['id']})" if good else "never"),
            f"Reason:  {safe_text(condition.reason)}",
        ]
        if run.get("id"):
            lines.append(f"Run:     {run['id']} ({run.get('trigger')}, {run.get('state')})")
        lines += self._look_closer(duty)
        return self._message(condition.event, duty, "\n".join(lines), run.get("id"))

    def _resolved(self, duty: Duty, incident: dict[str, Any], now: datetime) -> Message:
        zone = str(duty.schedule.zone)
        good = duty.last_attempt if duty.last_attempt else None
        since = datetime.fromisoformat(incident["since"])
        lines = [
            f"What:    the {incident['event']} incident is over: the level is good again",
            *self._heading(duty),
            f"Since:   {local_time(incident['since'], zone)} ({zone}), for {_human(now - since)}",
        ]
        if good is not None:
            lines.append(f"Run:     {good['id']} ({good.get('trigger')}, {good['state']})")
        lines += self._look_closer(duty)
        return self._message(
            "resolved", duty, "\n".join(lines), good["id"] if good else None, incident["event"]
        )

    def _message(
        self, event: str, duty: Duty, body: str, run_id: str | None, was: str | None = None
    ) -> Message:
        where = f"{duty.machine.qualified_name} {duty.level.name}"
        title = f"{TITLES[event]}: {where}" + (f" ({was})" if was else "")
        return Message(
            event=event,
            title=f"[recoverd] {title}",
            body=body,
            client=duty.machine.client,
            machine=duty.machine.name,
            level=duty.level.name,
            run_id=run_id,
        )

    # -- digests -----------------------------------------------------------------------------

    def _digest_routes(self) -> list[NotifyRoute]:
        return [
            r for r in self.ctl.policies.provider.routes.values() if "digest" in r.on and r.digest
        ]

    def _digest_schedule(self, route: NotifyRoute) -> Schedule:
        return Schedule.of(route.digest or "", self.ctl.policies.provider.timezone)

    def _digests(
        self,
        sent: dict[str, str],
        duties: list[Duty],
        incidents: dict[str, Any],
        now: datetime,
    ) -> list[Message]:
        """Return the digests due at ``now`` (one per route, at its slot; a slot missed while
        the daemon was down is sent late, once)."""
        messages = []
        for route in self._digest_routes():
            latest = self._digest_schedule(route).latest_slot(now)
            previous = sent.get(route.name)
            sent[route.name] = latest.isoformat()
            if previous is None or datetime.fromisoformat(previous) >= latest:
                continue  # the first look only notes the slot: a digest at its time, not now
            messages.append(self.digest(route, duties, incidents, now))
        return messages

    def digest(
        self, route: NotifyRoute, duties: list[Duty], incidents: dict[str, Any], now: datetime
    ) -> Message:
        """Return the digest of every client ``route`` covers: each level's standing."""
        provider = self.ctl.policies.provider
        covered = [d for d in duties if route.covers(d.machine.client)]
        bad = sum(1 for d in covered if any(track_key(d, t) in incidents for t in (HEALTH, DATA)))
        zone = provider.timezone
        lines = [
            f"{len(covered)} level(s) of {len({d.machine.client for d in covered})} client(s); "
            f"{bad} with an open incident.",
            f"As of {local_time(now.isoformat(), zone)} ({zone}).",
        ]
        client = None
        for duty in sorted(covered, key=lambda d: (d.machine.client, d.machine.name, d.level.name)):
            if duty.machine.client != client:
                client = duty.machine.client
                lines += ["", f"{client}:"]
            open_ = [
                incidents[k]["event"]
                for k in (track_key(duty, HEALTH), track_key(duty, DATA))
                if k in incidents
            ]
            good = duty.last_good
            last_good = local_time(good["started_at"], str(duty.schedule.zone)) if good else "never"
            standing = ", ".join(open_).upper() if open_ else "ok"
            lines.append(
                f"  {standing:<12} {duty.machine.name} {duty.level.name}: last good {last_good}"
            )
        month = now.astimezone(ZoneInfo(zone)).strftime("%Y-%m")
        lines += [
            "",
            "Look closer:",
            "  recoverd status",
            f"  recoverd report --client CLIENT --month {month}",
        ]
        head = self.ctl.log.head_anchor()
        if head:
            # Kept by the recipient, it is an anchor: `recoverd log verify --anchor SEQ:HASH`.
            lines += ["", "Maintenance log:", f"  {head}"]
        title = f"[recoverd] Daily digest{' of ' + provider.name if provider.name else ''}"
        return Message(event="digest", title=safe_text(title, 200), body="\n".join(lines))

    # -- delivery ----------------------------------------------------------------------------

    def routes(self, message: Message) -> list[NotifyRoute]:
        """Return the routes that take ``message``."""
        if message.event == "digest":
            return []  # a digest is addressed to its own route by :meth:`deliver`
        return [
            r for r in self.ctl.policies.routes_for(message.client or "") if message.event in r.on
        ]

    def deliver(self, message: Message, routes: list[NotifyRoute] | None = None) -> None:
        """Post ``message`` to every URL of its routes (each URL its own delivery, so that a
        retry never repeats a message to the services that took it)."""
        if routes is None:
            routes = self._digest_routes() if message.event == "digest" else self.routes(message)
        level = logging.INFO if message.event in ("resolved", "digest") else logging.WARNING
        log.log(
            level,
            "%s%s: %s",
            message.event,
            f" for {message.client}/{message.machine} {message.level}" if message.machine else "",
            ", ".join(f"route {r.name}" for r in routes) or "no route takes it",
        )
        targets = []
        for route in routes:
            for index, reference in enumerate(route.urls):
                what = f"{message.event} message to route {route.name} (url {index})"
                try:
                    targets.append((what, self.ctl.secrets.resolve(reference, "notify URL")))
                except SecretError as exc:
                    log.error("%s not sent: %s", what, exc)
        # Masked again now that the URLs are known secrets: a machine's error text may hold one.
        message = replace(
            message, title=safe_text(message.title, 300), body=safe_text(message.body)
        )
        for what, url in targets:
            notifier = self.notifier_for(url)
            if notifier is None:
                log.error("%s not sent: no notifier plugin delivers this kind of URL", what)
                continue
            what += f" ({url_scheme(url) or '?'}:// through {type(notifier).__name__})"
            self.outbox.post(what, _sender(notifier, url, message))

    def test_routes(self) -> list[tuple[str, int, str | None]]:
        """Send a test message to every URL of every route, now, without retries; return
        (route, URL index, problem or None) for each."""
        policies = self.ctl.policies
        routes = [*policies.provider.routes.values()]
        routes += [r for c in policies.clients.values() for r in c.routes.values()]
        results: list[tuple[str, int, str | None]] = []
        for route in routes:
            where = f"from recoverd check --notify, route {route.name}"
            message = Message(
                event="resolved",
                title="[recoverd] Test message",
                body=f"A test {where}: messages about {', '.join(route.on)} come this way.",
            )
            for index, reference in enumerate(route.urls):
                try:
                    url = self.ctl.secrets.resolve(reference, "notify URL")
                except SecretError as exc:
                    results.append((route.name, index, str(exc)))
                    continue
                notifier = self.notifier_for(url)
                if notifier is None:
                    results.append((route.name, index, "no notifier plugin delivers this URL"))
                    continue
                try:
                    ok = notifier.send([url], message)
                except Exception as exc:  # a plugin's bug is this check's finding
                    ok = False
                    log.error("notifier %s: %s", type(notifier).__name__, redact(str(exc)))
                results.append((route.name, index, None if ok else "the service did not take it"))
        return results

    def notifier_for(self, url: str) -> Notifier | None:
        scheme = url_scheme(url)
        for notifier in reversed(self._notifiers):
            if scheme in notifier.schemes or "*" in notifier.schemes:
                return notifier
        return None


MANUAL_FLUSH_S = 60.0
"""How long a command waits for the messages of its ``--notify`` to go out."""


def notify_after_manual_runs(
    ctl: Controller, machine: Machine, views: list[dict[str, Any]]
) -> list[Message]:
    """After manual runs of ``machine`` (``--notify``): open or resolve the incidents of their
    scheduled levels as the daemon would, send the messages, and return them."""
    from recoverd import clock
    from recoverd.actions.due import machine_duties

    names = {v["level"] for v in views}
    now = clock.now()
    zone = ctl.policies.clients[machine.client].timezone
    duties = [d for d in machine_duties(ctl.log, machine, zone, now) if d.level.name in names]
    alerts = Alerts(ctl)
    messages = alerts.observe(duties, now, manual=True)
    if messages and not alerts.outbox.flush(MANUAL_FLUSH_S):
        log.warning("some messages were not delivered within %gs", MANUAL_FLUSH_S)
    return messages


def _sender(notifier: Notifier, url: str, message: Message) -> Any:
    return lambda: notifier.send([url], message)


def _is_notifier(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, Notifier)
