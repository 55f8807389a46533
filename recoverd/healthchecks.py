"""Dead-man pings to a Healthchecks-compatible monitor, per level (``healthchecks = "env:HC"``).

A run of the level pings ``URL/start?rid=RID`` when it starts and ``URL/0?rid=RID`` when it
succeeds, or ``URL/fail?rid=RID`` with the masked last lines of its error in the body. RID is
the run's id as a UUID (Healthchecks takes only UUIDs: ``uuid5`` of the run id, so the start and
the end of a run carry the same one); the body names the run id too. Pings go through the
outbox: a monitor that is down delays and fails no run. The monitor alerts when the pings stop,
also when the controller itself is dead.
"""

from __future__ import annotations

import logging
from typing import Any

from recoverd.errors import SecretError
from recoverd.notify import Outbox, outbox, safe_text

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 10.0
MAX_PING_BODY = 10_000
"""Bytes of error text in a fail ping (Healthchecks keeps up to 100 kB)."""
TAIL_LINES = 20
RID_NAMESPACE = "5b0e4f5c-7f35-4c53-9d0e-2f3a8d1c6e11"
"""Namespace of the UUIDs made from run ids (fixed: the same run always gets the same rid)."""

GOOD_ENDS = ("succeeded", "partial", "skipped")
"""End states pinged as success (a partial backup is a restore point; an offline skip is not a
failure)."""


def run_uuid(run_id: str) -> str:
    """Return the rid of a run: a UUID in canonical form, derived from its id."""
    import uuid  # only a process that pings pays for its import

    return str(uuid.uuid5(uuid.UUID(RID_NAMESPACE), run_id))


def ping_url(base: str, signal: str, run_id: str) -> str:
    """Return the URL of a ping: ``signal`` is ``start``, ``0`` or ``fail``."""
    return f"{base.rstrip('/')}/{signal}?rid={run_id and run_uuid(run_id)}"


def error_tail(error: str | None, run_id: str) -> bytes:
    """Return the body of a fail ping: the run id and the masked last lines of the error."""
    lines = safe_text(error or "failed", MAX_PING_BODY * 4).splitlines()[-TAIL_LINES:]
    text = f"recoverd run {run_id}\n" + "\n".join(lines)
    data = text.encode("utf-8", "replace")
    return data[-MAX_PING_BODY:]


def send_ping(url: str, body: bytes = b"") -> bool:
    """POST ``body`` to ``url``; return True on a 2xx answer. TLS is verified."""
    import urllib.error  # only a process that pings pays for urllib's import
    import urllib.request

    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=PING_TIMEOUT_S) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # The URL holds the check's secret: the outbox logs only the reason.
        raise PingFailed(type(exc).__name__ + _reason(exc)) from None


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "code", None)
    return f" ({reason})" if reason else ""


class PingFailed(Exception):
    """A ping did not reach the monitor (the message names no URL)."""


class RunPings:
    """A run watcher of the maintenance log: pings the level's monitor at start and end."""

    def __init__(self, ctl: Any, sender: Outbox | None = None) -> None:
        self.ctl = ctl
        self._outbox = sender

    @property
    def outbox(self) -> Outbox:
        return self._outbox or outbox()

    def _url(self, client: str, machine: str, level_name: str | None, action: str) -> str | None:
        """Return the resolved ping URL of the level of a run, or None (no monitor, or a run
        that is not the level's own: a retention, a restore)."""
        from recoverd.actions.backup import level_action  # actions import the controller

        if level_name is None:
            return None
        try:
            level = self.ctl.policies.clients[client].machines[machine].level(level_name)
        except (KeyError, AttributeError):
            return None
        if level is None or not level.healthchecks or level_action(level) != action:
            return None
        try:
            return self.ctl.secrets.resolve(level.healthchecks, "healthchecks")
        except SecretError as exc:
            log.error("no ping for %s/%s %s: %s", client, machine, level_name, exc)
            return None

    def run_started(self, run_id: str, body: dict[str, Any]) -> None:
        url = self._url(body["client"], body["machine"], body.get("level"), body["action"])
        if url:
            what = f"start ping of {body['client']}/{body['machine']} {body['level']} ({run_id})"
            self.outbox.post(what, lambda: send_ping(ping_url(url, "start", run_id)))

    def run_finished(self, view: dict[str, Any]) -> None:
        url = self._url(view["client"], view["machine"], view.get("level"), view["action"])
        if not url:
            return
        run_id = view["id"]
        good = view["state"] in GOOD_ENDS
        signal = "0" if good else "fail"
        body = (
            f"recoverd run {run_id}: {view['state']}".encode()
            if good
            else error_tail(view.get("error"), run_id)
        )
        what = (
            f"{'success' if good else 'fail'} ping of {view['client']}/{view['machine']} "
            f"{view['level']} ({run_id})"
        )
        self.outbox.post(what, lambda: send_ping(ping_url(url, signal, run_id), body))
