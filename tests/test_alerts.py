"""Alerts end to end: incidents from the daemon's real scheduling, delivered by Apprise to a
real SMTP server and a loopback webhook; Healthchecks pings; Prometheus metrics.

The clock is a FakeClock and the engine the ``sim`` engine of the daemon simulation; the
policies, the log, due-ness, incidents, Apprise and the servers are real.
"""

from __future__ import annotations

import email
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller as SMTPController
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_sim import SimEngine, controller, level, policy, run_until, sim  # noqa: F401

from recoverd.actions.daemon import Daemon
from recoverd.alerts import Alerts, IncidentBook
from recoverd.cli import main
from recoverd.clock import FakeClock, use_clock
from recoverd.errors import Unreachable, UsageError, WrongPassword
from recoverd.healthchecks import RunPings, run_uuid
from recoverd.metrics import metrics_address
from recoverd.notify import Outbox, printable

TOKEN = "tok-9f8e7d6c5b4a"
"""A secret inside a notification URL: it must never appear in a message or a log line."""


class Receiver:
    """A loopback HTTP server that records every request and answers with ``statuses``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append(
                        {"method": self.command, "path": self.path, "body": body, "status": status}
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_POST = do_GET = do_HEAD = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hooks(self) -> list[dict[str, Any]]:
        """The Apprise json:// messages that were accepted."""
        return [
            json.loads(r["body"])
            for r in self.requests
            if r["path"].startswith("/hook") and r["status"] == 200
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.messages.append(
                    email.message_from_bytes(envelope.content, policy=email_policy.default)
                )
                return "250 OK"

        with socket.socket() as probe:  # aiosmtpd needs a fixed port to check it is up
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = SMTPController(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def url(self, to: str) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=recoverd@example.com&to={to}&mode=insecure"

    def texts(self) -> list[tuple[str, str]]:
        """(subject, plain text body) of every message."""
        return [
            (m["subject"], m.get_body(preferencelist=("plain",)).get_content())
            for m in self.messages
        ]

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.close()


PROVIDER = """
[provider]
name = "Hongyi IT"
timezone = "Asia/Shanghai"

[notify.oncall]
urls = ["env:ONCALL_URL", "env:ONCALL_MAIL"]
on = ["failed", "overdue", "stalled", "drill-failed", "anomaly", "offline", "resolved"]

[notify.morning]
urls = ["env:MORNING_MAIL"]
on = ["digest"]
digest = "day at 07:30"
"""


@pytest.fixture
def fleet(sim: Path, receiver: Receiver, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    monkeypatch.setenv("ONCALL_URL", f"json://127.0.0.1:{receiver.port}/hook?-token={TOKEN}")
    monkeypatch.setenv("ONCALL_MAIL", mailbox.url("oncall@example.com"))
    monkeypatch.setenv("MORNING_MAIL", mailbox.url("boss@example.com"))
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "Asia/Shanghai", level("nightly", "day at 02:00"))
    )
    (sim / "policies" / "provider.toml").write_text(PROVIDER)
    return sim


def quick_daemon(root: Path) -> tuple[Any, Daemon, Outbox]:
    ctl = controller(root)
    sender = Outbox(backoff=(0.05, 0.1))
    return ctl, Daemon(ctl, tick_seconds=3600, alerts=Alerts(ctl, sender)), sender


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_one_incident_gives_one_alert_and_one_resolved_across_a_restart(
    fleet: Path, receiver: Receiver, mailbox: Mailbox
) -> None:
    oncall_url = os.environ["ONCALL_URL"]
    secret_error = f"restic: Fatal: wrong password \x1b[31m{oncall_url}\x1b[0m"
    transient = Unreachable("srv: connection refused")
    clock = FakeClock(datetime(2026, 4, 30, 17, 0, tzinfo=UTC))  # 01:00 in Shanghai
    with use_clock(clock):
        ctl, daemon, sender = quick_daemon(fleet)
        record(ctl, "succeeded", datetime(2026, 4, 29, 18, 0, tzinfo=UTC))
        # Day 1: four transient failures (the retries used up); the alert comes after the last.
        SimEngine.failures = [transient] * 3 + [WrongPassword(secret_error)]
        run_until(daemon, clock, datetime(2026, 4, 30, 18, 5, tzinfo=UTC))
        assert sender.flush(10)
        assert receiver.hooks() == []  # still retrying: nothing said yet
        run_until(daemon, clock, datetime(2026, 4, 30, 22, 0, tzinfo=UTC))
        assert sender.flush(10)
        hooks = receiver.hooks()
        assert [h["title"] for h in hooks] == ["[recoverd] Backup failed: acme/srv nightly"]
        body = hooks[0]["message"]
        assert "Machine: srv (workstation)" in body and "Level:   nightly (files" in body
        assert "Since:   2026-05-01 02:42 +08 (Asia/Shanghai)" in body
        assert "recoverd log --machine acme/srv --since 7d" in body and "recoverd status" in body
        assert "wrong password \\x1b[31m[redacted]\\x1b[0m" in body
        assert hooks[0]["type"] == "failure"
        # The daemon restarts; the level keeps failing on day 2: no second alert.
        ctl, daemon, sender = quick_daemon(fleet)
        SimEngine.failures = [WrongPassword("wrong password")]
        run_until(daemon, clock, datetime(2026, 5, 1, 22, 0, tzinfo=UTC))
        assert sender.flush(10)
        assert len(receiver.hooks()) == 1
        # Day 3 succeeds: one resolved.
        run_until(daemon, clock, datetime(2026, 5, 2, 22, 0, tzinfo=UTC))
        assert sender.flush(10)
        titles = [h["title"] for h in receiver.hooks()]
        assert titles == [
            "[recoverd] Backup failed: acme/srv nightly",
            "[recoverd] Resolved: acme/srv nightly (failed)",
        ]
        assert receiver.hooks()[1]["type"] == "success"
    states = [v["state"] for v in ctl.log.runs()]
    assert states == ["succeeded"] + ["failed"] * 5 + ["succeeded"]
    # The same two messages reached the on-call mailbox, by real SMTP.
    mails = [
        t
        for t, m in zip(mailbox.texts(), mailbox.messages, strict=True)
        if m["to"] != "boss@example.com"
    ]
    assert [s for s, _ in mails] == titles
    assert "Reason:  restic: Fatal: wrong password" in mails[0][1]
    everything = json.dumps(receiver.hooks()) + json.dumps(mails)
    assert TOKEN not in everything and "\x1b" not in everything
    assert IncidentBook(fleet / "state").read()["incidents"] == {}


def test_failed_delivery_is_retried_and_logged_and_never_touches_the_run(
    fleet: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    (fleet / "policies" / "provider.toml").write_text(PROVIDER.replace(', "env:ONCALL_MAIL"', ""))
    receiver.statuses = [500, 503]  # the webhook is down twice, then takes the message
    clock = FakeClock(datetime(2026, 4, 30, 17, 0, tzinfo=UTC))
    caplog.set_level(logging.INFO)
    with use_clock(clock):
        ctl, daemon, sender = quick_daemon(fleet)
        SimEngine.failures = [WrongPassword("wrong password")]
        began = time.monotonic()
        run_until(daemon, clock, datetime(2026, 4, 30, 17, 30, tzinfo=UTC))
        ran_in = time.monotonic() - began
        assert sender.flush(10)
    assert [r["status"] for r in receiver.requests] == [500, 503, 200]
    assert len(receiver.hooks()) == 1
    [run] = ctl.log.runs()
    assert run["state"] == "failed" and run["error"] == "wrong password"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "failed message to route oncall (url 0" in w and "attempt 1 of 3" in w for w in warnings
    )
    assert any("delivered at attempt 3" in r.getMessage() for r in caplog.records)
    assert ran_in < 5  # the run did not wait for the deliveries
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


def test_delivery_given_up_after_bounded_retries_is_logged_as_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender = Outbox(backoff=(0.01, 0.01))
    calls = []
    sender.post("failed message to route x (url 0)", lambda: calls.append(1) or False)
    assert sender.flush(5)
    assert len(calls) == 3 and sender.results["failed"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "failed message to route x (url 0) failed 3 times, given up: the service did not accept it"
    ]


def test_daily_digest_by_mail_once_a_day_at_its_time(fleet: Path, mailbox: Mailbox) -> None:
    clock = FakeClock(datetime(2026, 4, 30, 17, 0, tzinfo=UTC))  # 01:00 in Shanghai
    with use_clock(clock):
        _ctl, daemon, sender = quick_daemon(fleet)
        run_until(daemon, clock, datetime(2026, 5, 2, 1, 0, tzinfo=UTC))  # 09:00 on day 2
        assert sender.flush(10)
    digests = [(s, b) for s, b in mailbox.texts() if "digest" in s]
    assert [s for s, _ in digests] == ["[recoverd] Daily digest of Hongyi IT"] * 2
    assert all(m["to"] == "boss@example.com" for m in mailbox.messages)
    assert "As of 2026-05-01 07:30 +08 (Asia/Shanghai)" in digests[0][1]
    assert "ok           srv nightly: last good 2026-05-01 02:00 +08" in digests[0][1]
    assert "1 level(s) of 1 client(s); 0 with an open incident." in digests[1][1]
    # Each digest carries the log's signed head: an anchor kept outside the controller.
    assert re.search(r"Maintenance log:\r?\n  log head \d+:[0-9a-f]{64} signed ", digests[1][1])


def test_overdue_once_when_no_good_run_past_schedule_and_grace(
    fleet: Path, receiver: Receiver
) -> None:
    clock = FakeClock(datetime(2026, 4, 30, 17, 0, tzinfo=UTC))
    with use_clock(clock):
        _ctl, daemon, sender = quick_daemon(fleet)
        run_until(daemon, clock, datetime(2026, 4, 30, 19, 0, tzinfo=UTC))  # one good run
        # The machine is busy elsewhere for days: nothing runs, the level falls behind.
        SimEngine.failures = [Unreachable("srv: no route to host")] * 50
        run_until(daemon, clock, datetime(2026, 5, 4, 1, 0, tzinfo=UTC))
        assert sender.flush(10)
    titles = [h["title"] for h in receiver.hooks()]
    # The unreachable machine's retries are used up first: one failed alert, then silence
    # while it stays bad (overdue is the same incident).
    assert titles == ["[recoverd] Backup failed: acme/srv nightly"]
    book = IncidentBook(fleet / "state").read()["incidents"]
    assert book["acme/srv/nightly#health"]["latest"] in ("failed", "overdue")


def test_overdue_alone_when_the_daemon_never_ran_the_level(fleet: Path, receiver: Receiver) -> None:
    clock = FakeClock(datetime(2026, 5, 3, 12, 0, tzinfo=UTC))
    with use_clock(clock):
        ctl = controller(fleet)
        good = ctl.log.start(
            client="acme",
            machine="srv",
            level="nightly",
            kind="files",
            action="backup",
            trigger="schedule",
            at=datetime(2026, 4, 30, 18, 0, tzinfo=UTC),
        )
        ctl.log.finish(good, "succeeded", at=datetime(2026, 4, 30, 18, 5, tzinfo=UTC))
        from recoverd.actions.due import duties

        sender = Outbox(backoff=(0.05,))
        alerts = Alerts(ctl, sender)
        messages = alerts.observe(duties(ctl, clock.now()), clock.now(), fleet=True)
        assert [m.event for m in messages] == ["overdue"]
        assert "no good run since 2026-05-01 02:00 +08" in messages[0].body
        assert "wanted one by 2026-05-02 02:00 +08, grace 1d" in messages[0].body
        assert alerts.observe(duties(ctl, clock.now()), clock.now(), fleet=True) == []
        assert sender.flush(10)
    assert [h["type"] for h in receiver.hooks()] == ["warning"]


def record(ctl: Any, state: str, at: datetime, **body: Any) -> str:
    run = ctl.log.start(
        client="acme",
        machine="srv",
        level="nightly",
        kind="files",
        action="backup",
        trigger=body.pop("trigger", "schedule"),
        at=at,
    )
    ctl.log.finish(run, state, at=at + timedelta(minutes=5), **body)
    return run


def observe(ctl: Any, now: datetime, **kwargs: Any) -> list[Any]:
    from recoverd.actions.due import duties

    alerts = Alerts(ctl, Outbox(backoff=(0.01,)))
    alerts.deliver = lambda message, routes=None: None  # the events, not their delivery
    return alerts.observe(duties(ctl, now), now, **kwargs)


def test_stalled_offline_and_anomaly_records_become_one_event_each(fleet: Path) -> None:
    day = datetime(2026, 5, 1, 18, 0, tzinfo=UTC)  # 02:00 in Shanghai
    ctl = controller(fleet)
    record(ctl, "succeeded", day - timedelta(days=1))
    # A run stopped for making no progress: said at once, though it is retried.
    stalled = {"stalled": True, "transient": True}
    record(ctl, "failed", day, error="no progress for 30m: stopped", stats=stalled)
    assert [m.event for m in observe(ctl, day + timedelta(minutes=6))] == ["stalled"]
    record(ctl, "failed", day + timedelta(minutes=7), error="no progress", stats=stalled)
    assert observe(ctl, day + timedelta(minutes=13)) == []
    record(ctl, "succeeded", day + timedelta(hours=2))
    assert [m.event for m in observe(ctl, day + timedelta(hours=3))] == ["resolved"]
    # An offline workstation: skipped, no alert until alert_after (3 days), then one.
    for n in range(1, 6):
        record(ctl, "skipped", day + timedelta(days=n), error="offline", stats={"offline": True})
        events = [m.event for m in observe(ctl, day + timedelta(days=n, hours=1))]
        assert events == (["offline"] if n == 4 else []), n
    record(ctl, "succeeded", day + timedelta(days=5, hours=6))
    assert [m.event for m in observe(ctl, day + timedelta(days=5, hours=7))] == ["resolved"]
    # As the skipped run records it: since when, and whether alert_after has passed.
    since = (day + timedelta(days=5, hours=8)).isoformat()
    for alert, expected in ((False, []), (True, ["offline"]), (True, [])):
        stats = {"offline": True, "offline_since": since, "offline_alert": alert}
        record(ctl, "skipped", day + timedelta(days=5, hours=9), error="offline: x", stats=stats)
        events = observe(ctl, day + timedelta(days=5, hours=10))
        assert [m.event for m in events] == expected, alert
        if events:
            assert "Since:   2026-05-07 10:00 +08 (Asia/Shanghai)" in events[0].body
    # An anomalous backup: one anomaly, on its own track; the offline incident is over.
    found = {
        "changed": {"files": 30, "of": 40, "share": 0.75, "limit": 0.5},
        "against": {"run": "20260506-180000-aaaaaa", "snapshot": "4f2a9c1e"},
    }
    record(ctl, "succeeded", day + timedelta(days=6), stats={"anomaly": found})
    messages = observe(ctl, day + timedelta(days=6, hours=1))
    assert sorted(m.event for m in messages) == ["anomaly", "resolved"]
    anomaly = next(m for m in messages if m.event == "anomaly")
    assert (
        "Reason:  30 of 40 files new or changed (75%, limit 50%); against run "
        "20260506-180000-aaaaaa (snapshot 4f2a9c1e) (possible ransomware" in anomaly.body
    )
    record(ctl, "succeeded", day + timedelta(days=7))
    assert [m.event for m in observe(ctl, day + timedelta(days=7, hours=1))] == ["resolved"]


def test_manual_runs_notify_only_with_notify(fleet: Path, receiver: Receiver) -> None:
    day = datetime(2026, 5, 1, 18, 0, tzinfo=UTC)
    ctl = controller(fleet)
    record(ctl, "failed", day, error="wrong password", trigger="manual")
    assert observe(ctl, day + timedelta(minutes=10)) == []  # the daemon ignores it
    assert [m.event for m in observe(ctl, day + timedelta(minutes=10), manual=True)] == ["failed"]


def test_backup_notify_flag_sends_through_the_route(
    fleet: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOVERD_POLICIES", str(fleet / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(fleet / "state"))
    SimEngine.failures = [WrongPassword("wrong password")]
    from test_daemon_sim import SimPlugin

    from recoverd.plugins import PluginHost

    monkeypatch.setattr(
        "recoverd.controller.PluginHost", lambda: PluginHost(extra=[("sim", SimPlugin())])
    )
    assert main(["backup", "srv"]) == 1
    assert receiver.hooks() == []
    SimEngine.failures = [WrongPassword("wrong password")]
    assert main(["backup", "srv", "--notify"]) == 1
    wait_for(lambda: len(receiver.hooks()) == 1)
    assert receiver.hooks()[0]["title"] == "[recoverd] Backup failed: acme/srv nightly"


def pinging(root: Path) -> tuple[Any, Outbox]:
    """A controller whose level pings ``env:HC_URL``, through an outbox of quick retries."""
    (root / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", level("nightly", "day at 02:00") + 'healthchecks = "env:HC_URL"\n')
    )
    ctl = controller(root)
    sender = Outbox(backoff=(0.02,))
    ctl.log.watchers[:] = [RunPings(ctl, sender)]
    return ctl, sender


def test_healthchecks_pings_start_success_and_fail_with_masked_tail(
    fleet: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HC_URL", f"http://127.0.0.1:{receiver.port}/ping/{TOKEN}")
    ctl, sender = pinging(fleet)
    ok = record(ctl, "succeeded", datetime(2026, 5, 1, 2, tzinfo=UTC))
    hc_url = os.environ["HC_URL"]
    long_error = "\n".join(f"line {i}" for i in range(100)) + f"\nFatal: {hc_url} \x07 refused"
    bad = record(ctl, "failed", datetime(2026, 5, 2, 2, tzinfo=UTC), error=long_error)
    prune = ctl.log.start(
        client="acme", machine="srv", level="nightly", kind="files", action="prune"
    )
    ctl.log.finish(prune, "failed", error="x")  # a retention is not the level's own run
    assert sender.flush(10)
    pings = [(urlsplit(r["path"]), r["body"]) for r in receiver.requests]
    assert [(u.path, parse_qs(u.query)["rid"]) for u, _ in pings] == [
        (f"/ping/{TOKEN}/start", [run_uuid(ok)]),
        (f"/ping/{TOKEN}/0", [run_uuid(ok)]),
        (f"/ping/{TOKEN}/start", [run_uuid(bad)]),
        (f"/ping/{TOKEN}/fail", [run_uuid(bad)]),
    ]
    body = pings[3][1].decode()
    assert body.startswith(f"recoverd run {bad}\n")
    assert body.splitlines()[1] == "line 81" and len(body.splitlines()) == 21
    assert body.endswith("Fatal: [redacted] \\x07 refused")


def test_healthchecks_monitor_down_never_fails_the_run(
    fleet: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("HC_URL", f"http://127.0.0.1:{closed}/ping/x")
    ctl, sender = pinging(fleet)
    run = record(ctl, "succeeded", datetime(2026, 5, 1, 2, tzinfo=UTC))
    assert ctl.log.run(run)["state"] == "succeeded"
    assert sender.flush(10) and sender.results["failed"] == 2
    assert "ConnectionRefusedError" in caplog.text or "URLError" in caplog.text


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_textfile_and_http_endpoint(fleet: Path) -> None:
    textfile = fleet / "recoverd.prom"
    (fleet / "policies" / "provider.toml").write_text(
        PROVIDER + f'\n[metrics]\ntextfile = "{textfile}"\n'
    )
    clock = FakeClock(datetime(2026, 4, 30, 17, 0, tzinfo=UTC))
    with use_clock(clock):
        _ctl, daemon, sender = quick_daemon(fleet)
        SimEngine.failures = [WrongPassword("wrong password")]
        run_until(daemon, clock, datetime(2026, 5, 1, 19, 0, tzinfo=UTC))
        assert sender.flush(10)
    labels = (("client", "acme"), ("level", "nightly"), ("machine", "srv"))
    samples = parse(textfile.read_text())
    good_end = datetime(2026, 5, 1, 18, 0, tzinfo=UTC).timestamp()
    assert samples[("recoverd_last_success_timestamp_seconds", labels)] == good_end
    assert samples[("recoverd_last_run_state", (*labels, ("state", "succeeded")))] == 1
    assert samples[("recoverd_last_run_state", (*labels, ("state", "failed")))] == 0
    assert samples[("recoverd_run_duration_seconds", labels)] == 0
    assert samples[("recoverd_overdue", labels)] == 0
    assert samples[("recoverd_runs_total", (("client", "acme"), ("state", "failed")))] == 1
    assert samples[("recoverd_runs_total", (("client", "acme"), ("state", "succeeded")))] == 2
    assert not list(fleet.glob("recoverd.prom.*"))  # written through a renamed temp file
    server = daemon.metrics.serve("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            served = parse(answer.read().decode())
    finally:
        server.shutdown()
        server.server_close()
    assert served[("recoverd_last_success_timestamp_seconds", labels)] == good_end


def test_metrics_address_needs_loopback_unless_public() -> None:
    assert metrics_address("127.0.0.1:9150") == ("127.0.0.1", 9150)
    assert metrics_address("[::1]:9150") == ("::1", 9150)
    with pytest.raises(UsageError, match="not a loopback address"):
        metrics_address("0.0.0.0:9150")
    assert metrics_address("0.0.0.0:9150", public=True) == ("0.0.0.0", 9150)
    with pytest.raises(UsageError, match="give an address and a port"):
        metrics_address("9150")


def test_printable_escapes_control_characters_and_cuts() -> None:
    # The escaping of every output (recoverd.text): line breaks kept, the rest shown.
    assert printable("a\x1b[2Jb\r\nc\td\x00") == "a\\x1b[2Jb\\r\nc\\td\\x00"
    assert printable("x" * 20, limit=5) == "xxxxx\n[... cut]"
    assert printable("\u202e evil \u2028") == "\\u202e evil \\u2028"


@pytest.mark.slow
def test_daemon_process_alerts_serves_metrics_and_logs_plainly_over_ssh(
    tmp_path: Path, sshd: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `recoverd daemon` over the throwaway sshd with real restic: a level whose
    repository refuses the password gives one failed alert; /metrics and the textfile tell
    both levels; the log has zoned times, the run id and no paramiko chatter."""
    import re
    import subprocess
    import sys

    good_password, bad_password = "alerts-Pa55-good", "alerts-Pa55-wrong"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ledger.csv").write_text("numbers\n")
    subprocess.run(
        ["restic", "init", "-r", str(tmp_path / "locked")],
        env={**os.environ, "RESTIC_PASSWORD": "someone-else"},
        capture_output=True,
        check=True,
    )
    textfile = tmp_path / "textfile" / "recoverd.prom"
    textfile.parent.mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "provider.toml").write_text(
        f'[notify.oncall]\nurls = ["env:ONCALL_URL"]\n[metrics]\ntextfile = "{textfile}"\n'
    )
    machine = (
        f'[machines.srv-1]\naddress = "127.0.0.1"\nport = {sshd.port}\nuser = "{sshd.user}"\n'
        f'identity = "{sshd.client_key}"\nhost_key = "{sshd.host_key_line}"\nrole = "server"\n'
    )
    levels = "".join(
        f'[[machines.srv-1.levels]]\nname = "{name}"\nkind = "files"\nrepository = "{repo}"\n'
        f'paths = ["{tmp_path}/data"]\nevery = "day at 01:30"\n'
        for name, repo in (("nightly", "nas"), ("ledger", "locked"))
    )
    (tmp_path / "policies" / "acme.toml").write_text(
        '[client]\nname = "Acme"\ntimezone = "Asia/Shanghai"\n'
        f'[repositories.nas]\nurl = "{tmp_path}/nas"\npassword = "env:GOOD_PW"\n'
        f'[repositories.locked]\nurl = "{tmp_path}/locked"\npassword = "env:BAD_PW"\n'
        + machine
        + levels
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "RECOVERD_POLICIES": str(tmp_path / "policies"),
        "RECOVERD_STATE": str(tmp_path / "state"),
        "GOOD_PW": good_password,
        "BAD_PW": bad_password,
        "ONCALL_URL": f"json://127.0.0.1:{receiver.port}/hook",
    }
    stderr_path = tmp_path / "daemon.err"
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from recoverd.cli import main; sys.exit(main())",
             "daemon", "--tick", "0.5", "--metrics", f"127.0.0.1:{port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: len(receiver.hooks()) >= 1, timeout=60)
        labels = lambda name: (("client", "acme"), ("level", name), ("machine", "srv-1"))  # noqa: E731

        def scraped() -> dict[Any, float]:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                return parse(answer.read().decode())

        wait_for(
            lambda: ("recoverd_last_success_timestamp_seconds", labels("nightly")) in scraped(),
            timeout=60,
        )
        served = scraped()
        time.sleep(1.5)  # a few more looks: no second alert
        process.send_signal(2)
        assert process.wait(30) == 0
    finally:
        process.kill()
    [alert] = receiver.hooks()
    assert alert["title"] == "[recoverd] Backup failed: acme/srv-1 ledger"
    assert "Machine: srv-1 (server)" in alert["message"]
    assert served[("recoverd_last_run_state", (*labels("ledger"), ("state", "failed")))] == 1
    assert served[("recoverd_last_run_state", (*labels("nightly"), ("state", "succeeded")))] == 1
    assert ("recoverd_last_success_timestamp_seconds", labels("ledger")) not in served
    on_file = parse(textfile.read_text())
    assert on_file[("recoverd_runs_total", (("client", "acme"), ("state", "failed")))] == 1
    log_text = stderr_path.read_text()
    zoned = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
    assert re.search(zoned + r"ERROR recoverd\.actions\.daemon: acme/srv-1 ledger backup run "
                     r"\d{8}-\d{6}-[0-9a-f]{6} failed: ", log_text, re.M), log_text  # fmt: skip
    assert re.search(
        zoned + "WARNING recoverd.alerts: failed for acme/srv-1 ledger", log_text, re.M
    )
    assert "paramiko" not in log_text and "Authentication (publickey)" not in log_text
    for secret in (good_password, bad_password):
        assert secret not in log_text and secret not in json.dumps(alert)


def test_check_notify_sends_a_test_through_every_route(
    fleet: Path,
    receiver: Receiver,
    mailbox: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--policies", str(fleet / "policies"), "--state", str(fleet / "state"), "check"]
    assert main([*args, "--notify"]) == 0
    out = capsys.readouterr().out
    for line in ("oncall.urls[0]", "oncall.urls[1]", "morning.urls[0]"):
        assert f"notify.{line}: delivered" in out
    assert [h["title"] for h in receiver.hooks()] == ["[recoverd] Test message"]
    assert len(mailbox.messages) == 2
    monkeypatch.delenv("MORNING_MAIL")
    receiver.statuses = [500]
    assert main([*args, "--notify"]) == 1
    out = capsys.readouterr().out
    assert "notify.oncall.urls[0]: the service did not take it" in out
    assert "notify.morning.urls[0]: notify URL: environment variable MORNING_MAIL is not set" in out
    assert TOKEN not in out


def test_plugins_lists_the_apprise_notifier(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("apprise "))
    assert line.split()[-2:] == ["notifiers:", "apprise"]


def test_status_and_log_import_neither_apprise_nor_prometheus(tmp_path: Path) -> None:
    import subprocess
    import sys

    policies = Path(__file__).resolve().parent.parent / "policies"
    probe = (
        "import sys; from recoverd.cli import main\n"
        f"for argv in (['status'], ['log']):\n"
        f"    main(['--policies', {str(policies)!r}, '--state', {str(tmp_path)!r}, *argv])\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('apprise', 'prometheus_client')]\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    ).stdout
    assert "LOADED []" in out
