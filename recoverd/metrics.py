"""Prometheus metrics of every scheduled level, for node_exporter's textfile collector and for
``recoverd daemon --metrics ADDRESS:PORT``.

The daemon hands its view of the levels to :meth:`FleetMetrics.update` at every look; a scrape
or the textfile reads that view, never the log. ``recoverd_runs_total`` counts the runs this
daemon saw end since it started (a Prometheus counter may restart at zero).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from recoverd.actions.due import Duty, ended, started
from recoverd.errors import UsageError
from recoverd.log.record import STATES
from recoverd.plugins import lazy_import

prometheus = lazy_import("prometheus_client")
prometheus_core = lazy_import("prometheus_client.core")

log = logging.getLogger(__name__)

LEVEL_LABELS = ("client", "machine", "level")


class FleetMetrics:
    """A prometheus_client collector of the levels' standing, as the daemon last saw it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._levels: list[dict[str, Any]] = []
        self._runs: Counter[tuple[str, str]] = Counter()
        self._deliveries: Counter[str] = Counter()
        self._registry: Any = None

    def update(self, duties: Iterable[Duty], now: datetime) -> None:
        """Take the standing of every level from its duty at ``now``."""
        levels = []
        for duty in duties:
            good, last = duty.last_good, duty.last_attempt
            finished = last if last is not None and last["state"] != "running" else None
            stats = (finished or {}).get("stats") or {}
            levels.append(
                {
                    "labels": (duty.machine.client, duty.machine.name, duty.level.name),
                    "last_success": ended(good).timestamp() if good else None,
                    "state": last["state"] if last else None,
                    "duration": (
                        (ended(finished) - started(finished)).total_seconds() if finished else None
                    ),
                    "bytes_added": stats.get("bytes_added"),
                    "overdue": duty.overdue_at(now),  # as `recoverd status` shows it
                }
            )
        with self._lock:
            self._levels = levels

    def count_run(self, view: dict[str, Any]) -> None:
        """Count a run that ended."""
        with self._lock:
            self._runs[(view["client"], view["state"])] += 1

    def count_deliveries(self, results: Counter[str]) -> None:
        """Take the outbox's counts of delivered and given-up messages."""
        with self._lock:
            self._deliveries = Counter(results)

    def collect(self) -> Iterator[Any]:
        core = prometheus_core
        with self._lock:
            levels, runs, deliveries = list(self._levels), Counter(self._runs), self._deliveries
        success = core.GaugeMetricFamily(
            "recoverd_last_success_timestamp_seconds",
            "When the last good run of the level ended (Unix time).",
            labels=LEVEL_LABELS,
        )
        state = core.GaugeMetricFamily(
            "recoverd_last_run_state",
            "The state of the level's newest run: 1 for its state, 0 for the others.",
            labels=(*LEVEL_LABELS, "state"),
        )
        duration = core.GaugeMetricFamily(
            "recoverd_run_duration_seconds",
            "How long the level's newest finished run took.",
            labels=LEVEL_LABELS,
        )
        added = core.GaugeMetricFamily(
            "recoverd_bytes_added",
            "Bytes the level's newest finished backup added to its repository.",
            labels=LEVEL_LABELS,
        )
        overdue = core.GaugeMetricFamily(
            "recoverd_overdue",
            "1 when the level has had no good run for longer than its schedule plus grace.",
            labels=LEVEL_LABELS,
        )
        for row in levels:
            labels = list(row["labels"])
            if row["last_success"] is not None:
                success.add_metric(labels, row["last_success"])
            if row["state"] is not None:
                for name in STATES:
                    state.add_metric([*labels, name], 1.0 if row["state"] == name else 0.0)
            if row["duration"] is not None:
                duration.add_metric(labels, row["duration"])
            if isinstance(row["bytes_added"], int | float):
                added.add_metric(labels, row["bytes_added"])
            overdue.add_metric(labels, 1.0 if row["overdue"] else 0.0)
        total = core.CounterMetricFamily(
            "recoverd_runs",
            "Runs that ended since the daemon started, by client and state.",
            labels=("client", "state"),
        )
        for (client, name), count in sorted(runs.items()):
            total.add_metric([client, name], count)
        notifications = core.CounterMetricFamily(
            "recoverd_notifications",
            "Notification deliveries since the daemon started: delivered or failed (given up).",
            labels=("result",),
        )
        for result in ("delivered", "failed"):
            notifications.add_metric([result], deliveries.get(result, 0))
        yield from (success, state, duration, added, overdue, total, notifications)

    def registry(self) -> Any:
        """Return a registry that holds only these metrics."""
        if self._registry is None:
            self._registry = prometheus.CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return self._registry

    def write_textfile(self, path: str | Path) -> None:
        """Write the metrics for node_exporter's textfile collector (atomically: a temporary
        file renamed into place, so the collector never reads half a file)."""
        prometheus.write_to_textfile(str(path), self.registry())

    def serve(self, address: str, port: int) -> Any:
        """Serve ``/metrics`` on ``address:port`` from a thread; return the server (its
        ``shutdown()`` stops it)."""
        server, _thread = prometheus.start_http_server(port, addr=address, registry=self.registry())
        return server


def metrics_address(text: str, *, public: bool = False) -> tuple[str, int]:
    """Given ``HOST:PORT`` (``[::1]:9150`` for IPv6), return the address and port to serve on.

    Raise UsageError for a malformed value, or for an address that is not loopback unless
    ``public``: the metrics name every client and machine.
    """
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(
            f"--metrics {text!r}: give an address and a port, like 127.0.0.1:9150 or [::1]:9150"
        )
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not public:
        raise UsageError(
            f"--metrics {text!r}: {host} is not a loopback address; the metrics name every "
            "client and machine. Serve on 127.0.0.1 behind a proxy, or add --metrics-public"
        )
    return host, int(port_text)
