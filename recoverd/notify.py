"""Notification delivery: the message a notifier sends, the notifier contract, and the outbox
that sends from a worker thread so that no run ever waits for a mail server.

A delivery that fails (the notifier returns False or raises) is logged and retried a bounded
number of times; it never reaches the run that caused it.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recoverd.secrets import redact
from recoverd.text import visible_lines

log = logging.getLogger(__name__)

RETRY_BACKOFF = (2.0, 10.0, 30.0)
"""Seconds to wait after the 1st, 2nd, 3rd failed attempt of a delivery; then it is given up."""

EXIT_FLUSH_S = 15.0
"""How long a process that ends waits for its outbox to deliver."""

MAX_BODY = 8000
"""Characters of a message body: past it the text is cut (a hostile machine's error text)."""


@dataclass(frozen=True)
class Message:
    """One notification: what happened to whom, as text ready to send."""

    event: str
    """``failed``, ``overdue``, ``stalled``, ``drill-failed``, ``anomaly``, ``offline``,
    ``resolved`` or ``digest``."""
    title: str
    body: str
    client: str | None = None
    machine: str | None = None
    level: str | None = None
    run_id: str | None = None

    @property
    def severity(self) -> str:
        """``failure``, ``warning``, ``success`` or ``info``, as chat and mail services show."""
        if self.event in ("failed", "stalled", "drill-failed", "anomaly"):
            return "failure"
        if self.event in ("overdue", "offline"):
            return "warning"
        return "success" if self.event == "resolved" else "info"


class Notifier:
    """A channel that delivers messages to URLs (the contract of ``recoverd_add_notifiers``).

    ``schemes`` are the URL schemes it delivers (``("*",)``: any); of several notifiers that
    deliver a scheme, the one registered last is used, so a third-party notifier overrides a
    built-in one. ``run_finished`` is told about every finished run, for notifiers that watch
    runs themselves; it does nothing by default.
    """

    schemes: tuple[str, ...] = ()

    def send(self, urls: Sequence[str], message: Message) -> bool:
        """Deliver ``message`` to every URL; return True only if each one took it.

        Never raise for a delivery that did not work: return False (the outbox retries). The
        URLs hold secrets: never log them.
        """
        raise NotImplementedError

    def run_finished(self, record: dict[str, Any]) -> None:
        """Given a finished run's view (as ``recoverd log --json`` prints it), act on it."""


def printable(text: str, limit: int = MAX_BODY) -> str:
    """Return ``text`` with control and format characters escaped (a terminal, mail client or
    chat never sees raw escapes or bidi overrides from a machine's output), line breaks kept,
    cut to ``limit``."""
    cut = "\n[... cut]" if len(text) > limit else ""
    return visible_lines(text[:limit]) + cut


def safe_text(text: str | None, limit: int = MAX_BODY) -> str:
    """Return ``text`` masked (no secret resolved so far) and escaped, for a message."""
    return printable(redact(text or ""), limit)


def url_scheme(url: str) -> str:
    """Return the scheme of a notification URL (``mailto``, ``json``, ...), or ""."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


@dataclass
class _Delivery:
    what: str
    send: Callable[[], bool]
    attempt: int = 1
    due: float = 0.0


class Outbox:
    """Sends deliveries from one worker thread, in order, retrying a failed one.

    ``post`` never blocks and never raises. The worker thread runs only while there is work.
    The process's outbox (:func:`outbox`) is flushed at exit for at most ``EXIT_FLUSH_S``: a
    command that posted a ping or a message delivers it, and a monitor that is down delays
    the end of a command by at most that long.
    """

    def __init__(self, backoff: Sequence[float] = RETRY_BACKOFF) -> None:
        self.backoff = tuple(backoff)
        self.results: Counter[str] = Counter()
        """``delivered`` and ``failed`` (given up) deliveries, for the metrics."""
        self._queue: queue.Queue[_Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def post(self, what: str, send: Callable[[], bool]) -> None:
        """Queue ``send`` (True when delivered); ``what`` names it in the log (no secret)."""
        with self._lock:
            self._pending += 1
            self._queue.put(_Delivery(what, send))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._work, name="recoverd-notify", daemon=True
                )
                self._worker.start()

    @property
    def pending(self) -> int:
        """Deliveries posted and neither delivered nor given up yet."""
        with self._lock:
            return self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every posted delivery was delivered or given up; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _work(self) -> None:
        waiting: list[_Delivery] = []
        while True:
            now = time.monotonic()
            ready = [d for d in waiting if d.due <= now]
            waiting = [d for d in waiting if d.due > now]
            try:
                timeout = min((d.due for d in waiting), default=now + 5.0) - now
                ready.append(self._queue.get(timeout=max(0.0, timeout) if not ready else 0))
            except queue.Empty:
                pass
            for delivery in ready:
                retry = self._attempt(delivery)
                if retry:
                    waiting.append(delivery)
                else:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()
            with self._lock:
                if not waiting and self._queue.empty() and self._pending == 0:
                    self._worker = None
                    return

    def _attempt(self, delivery: _Delivery) -> bool:
        """Try ``delivery`` once; return True if it is to be tried again."""
        attempts = len(self.backoff) + 1
        try:
            ok = bool(delivery.send())
            problem = "the service did not accept it"
        except Exception as exc:  # a notifier's bug must not end the worker
            ok, problem = False, redact(f"{type(exc).__name__}: {exc}")
        if ok:
            self.results["delivered"] += 1
            if delivery.attempt > 1:
                log.info("%s delivered at attempt %d", delivery.what, delivery.attempt)
            return False
        if delivery.attempt >= attempts:
            self.results["failed"] += 1
            log.error("%s failed %d times, given up: %s", delivery.what, delivery.attempt, problem)
            return False
        wait = self.backoff[delivery.attempt - 1]
        log.warning(
            "%s failed (attempt %d of %d): %s; trying again in %gs",
            delivery.what,
            delivery.attempt,
            attempts,
            problem,
            wait,
        )
        delivery.attempt += 1
        delivery.due = time.monotonic() + wait
        return True


def _flush_at_exit(box: Outbox) -> None:
    if not box.flush(EXIT_FLUSH_S):
        log.warning(
            "%d notification(s) or ping(s) not delivered within %gs of exit: dropped",
            box.pending,
            EXIT_FLUSH_S,
        )


_outbox: Outbox | None = None
_outbox_lock = threading.Lock()


def outbox() -> Outbox:
    """Return this process's outbox."""
    global _outbox
    with _outbox_lock:
        if _outbox is None:
            _outbox = Outbox()
            atexit.register(_flush_at_exit, _outbox)
        return _outbox
