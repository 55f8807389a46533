"""The daemon in simulated time: months of schedules in seconds.

The clock is a :class:`FakeClock`; machines use the real ``local`` transport and a ``sim``
engine registered through the plugin registry (restic is blocked by name), which records what
it was asked to do and succeeds or fails as the test says. Everything else — policies, the
maintenance log, due-ness, the daemon's rules — is the real code.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest

import recoverd
from recoverd.actions.daemon import Daemon, RepositoryGate
from recoverd.clock import FakeClock, SystemClock, use_clock
from recoverd.controller import Controller
from recoverd.engine import BackupRequest, CopyRequest, Engine, Outcome
from recoverd.errors import Unreachable, WrongPassword
from recoverd.locks import machine_lock
from recoverd.log import RunFilter
from recoverd.plugins import PluginHost


class SimEngine(Engine):
    """Backs up nothing; records each call; ``failures`` says which calls fail and how."""

    name = "sim"
    kinds = ("files", "copy")
    calls: ClassVar[list[tuple[str, str, str, float, float]]] = []
    failures: ClassVar[list[Exception]] = []
    duration = 0.0

    def _work(self, request: BackupRequest | CopyRequest, what: str) -> Outcome:
        began = time.monotonic()
        if SimEngine.duration:
            time.sleep(SimEngine.duration)
        SimEngine.calls.append(
            (request.machine.name, request.level.name, what, began, time.monotonic())
        )
        if SimEngine.failures:
            raise SimEngine.failures.pop(0)
        return Outcome("succeeded", "5eed", {"files_new": 0})

    def backup(self, request: BackupRequest, progress: Any = None) -> Outcome:
        return self._work(request, "backup")

    def copy(self, request: CopyRequest) -> Outcome:
        return self._work(request, "copy")

    def forget(self, request: BackupRequest) -> Outcome:
        return self._work(request, "forget")

    def prune(self, client: str, machine: Any, repository: Any) -> Outcome:
        return Outcome("succeeded")

    def snapshots(self, *args: Any, **kwargs: Any) -> list:
        return []


class SimPlugin:
    @recoverd.hookimpl
    def recoverd_add_engines(self, register: Any) -> None:
        register.add("sim", SimEngine)


def policy(
    client: str, zone: str, levels: str, machines: tuple[str, ...] = ("srv",), **repo: Any
) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in repo.items())
    text = (
        f'[client]\nname = "{client}"\nengineer = "Wang Lei"\ntimezone = "{zone}"\n'
        f'[repositories.nas]\nurl = "/nonexistent/nas"\npassword = "env:HOME"\n{extra}'
        '[repositories.off]\nurl = "/nonexistent/off"\npassword = "env:HOME"\n'
    )
    for machine in machines:
        text += f'[machines.{machine}]\ntransport = "local"\n'
        text += levels.replace("MACHINE", machine)
    return text


def level(name: str, every: str, kind: str = "files", extra: str = "") -> str:
    where = 'repository = "nas"\npaths = ["/srv"]' if kind == "files" else extra
    head = f'[[machines.MACHINE.levels]]\nname = "{name}"\nkind = "{kind}"\n'
    return head + f'every = "{every}"\n{where}\n'


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RECOVERD_DISABLE_PLUGINS", "restic")
    SimEngine.calls, SimEngine.failures, SimEngine.duration = [], [], 0.0
    (tmp_path / "policies").mkdir()
    yield tmp_path


def controller(root: Path) -> Controller:
    return Controller(
        root / "policies", root / "state", plugins=PluginHost(extra=[("sim", SimPlugin())])
    )


def run_until(daemon: Daemon, clock: FakeClock, until: datetime) -> None:
    """Drive the daemon as its loop would: look, let started runs end, jump to the next look."""
    while True:
        started = daemon.started
        next_look = daemon.tick()
        assert daemon.wait_idle(10)
        if daemon.started != started:
            continue  # runs ended: look again at the same instant, as the loop's wake-up does
        if next_look > until:
            clock.set(until)
            return
        clock.set(next_look)


def local_runs(ctl: Controller, action: str = "backup") -> list[tuple[str, str, str]]:
    """Every run of ``action`` as (client, level, local wall time with offset)."""
    zones = {cid: ZoneInfo(c.timezone) for cid, c in ctl.policies.clients.items()}
    return [
        (
            v["client"],
            v["level"],
            datetime.fromisoformat(v["started_at"])
            .astimezone(zones[v["client"]])
            .strftime("%Y-%m-%d %H:%M%z"),
        )
        for v in ctl.log.runs(RunFilter(action=action))
    ]


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def wall(day: date, clock_time: str, zone: str) -> str:
    """The local wall time with offset of the first occurrence of ``clock_time`` on ``day``."""
    hour, minute = map(int, clock_time.split(":"))
    moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone))
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M%z")


BERLIN_LEVELS = (
    level("nightly", "day at 02:30")
    + level("weekly", "sunday at 03:00")
    + level("monthly", "month on last day at 23:00")
)
NEW_YORK_LEVELS = (
    level("nightly", "day at 01:30")
    + level("weekly", "saturday at 23:00")
    + level("monthly", "month on day 31 at 01:00")
)


def test_ninety_days_in_two_zones_across_dst_give_the_exact_run_list(sim: Path) -> None:
    (sim / "policies" / "berlin.toml").write_text(policy("berlin", "Europe/Berlin", BERLIN_LEVELS))
    (sim / "policies" / "newyork.toml").write_text(
        policy("newyork", "America/New_York", NEW_YORK_LEVELS)
    )
    start = datetime(2026, 9, 1, tzinfo=UTC)
    end = start + timedelta(days=90)
    with use_clock(FakeClock(start)) as clock:
        ctl = controller(sim)
        daemon = Daemon(ctl, tick_seconds=40 * 86400)
        run_until(daemon, clock, end)
    runs = local_runs(ctl)

    first = [r for r in runs if r[2] in ("2026-09-01 02:00+0200", "2026-08-31 20:00-0400")]
    # Never succeeded: every level runs at once when the daemon starts.
    assert sorted((c, lv) for c, lv, _ in first) == sorted(
        (c, lv) for c in ("berlin", "newyork") for lv in ("nightly", "weekly", "monthly")
    )
    period = days(date(2026, 9, 1), date(2026, 11, 29))
    sundays = [d for d in period if d.weekday() == 6]
    saturdays = [d for d in period if d.weekday() == 5]
    month_ends = (date(2026, 9, 30), date(2026, 10, 31))
    berlin, new_york = "Europe/Berlin", "America/New_York"
    expected = [
        *first,
        *(("berlin", "nightly", wall(d, "02:30", berlin)) for d in period),
        *(("berlin", "weekly", wall(d, "03:00", berlin)) for d in sundays),
        *(("berlin", "monthly", wall(d, "23:00", berlin)) for d in month_ends),
        *(("newyork", "nightly", wall(d, "01:30", new_york)) for d in period),
        *(("newyork", "weekly", wall(d, "23:00", new_york)) for d in saturdays),
        *(("newyork", "monthly", wall(d, "01:00", new_york)) for d in month_ends),
    ]
    assert sorted(runs) == sorted(expected)
    assert len(runs) == len(set(runs))
    # The nights a DST change repeats 02:30 (Berlin) and 01:30 (New York): one run each, at
    # the first pass; the offset changes the next day.
    nightly = {(c, at[:10]): at for c, lv, at in runs if lv == "nightly"}
    assert [nightly["berlin", f"2026-10-{d}"] for d in (24, 25, 26)] == [
        "2026-10-24 02:30+0200",
        "2026-10-25 02:30+0200",
        "2026-10-26 02:30+0100",
    ]
    assert [nightly["newyork", d] for d in ("2026-10-31", "2026-11-01", "2026-11-02")] == [
        "2026-10-31 01:30-0400",
        "2026-11-01 01:30-0400",
        "2026-11-02 01:30-0500",
    ]
    assert all(v["trigger"] == "schedule" for v in ctl.log.runs())
    assert {v["engineer"] for v in ctl.log.runs()} == {"Wang Lei"}


def test_spring_forward_runs_a_skipped_time_once_an_hour_later(sim: Path) -> None:
    (sim / "policies" / "berlin.toml").write_text(
        policy("berlin", "Europe/Berlin", level("nightly", "day at 02:30"))
    )
    start = datetime(2026, 3, 27, 12, tzinfo=UTC)
    with use_clock(FakeClock(start)) as clock:
        ctl = controller(sim)
        run_until(Daemon(ctl, tick_seconds=86400), clock, start + timedelta(days=3))
    assert [r[2] for r in local_runs(ctl)] == [
        "2026-03-27 13:00+0100",  # never succeeded: at once
        "2026-03-28 02:30+0100",
        "2026-03-29 03:30+0200",  # 02:30 does not exist that night
        "2026-03-30 02:30+0200",
    ]


def test_daemon_down_three_days_catches_up_once_per_level_source_first(sim: Path) -> None:
    levels = BERLIN_LEVELS + level(
        "offsite", "sunday at 04:00", kind="copy", extra='of = "nightly"\nto = "off"'
    )
    (sim / "policies" / "berlin.toml").write_text(policy("berlin", "Europe/Berlin", levels))
    start = datetime(2026, 10, 28, tzinfo=UTC)
    down, up = datetime(2026, 10, 30, 12, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC)
    with use_clock(FakeClock(start)) as clock:
        run_until(Daemon(controller(sim), tick_seconds=86400), clock, down)
        clock.set(up)  # the daemon was down: Oct 31, Nov 1 and Nov 2 slots passed unserved
        ctl = controller(sim)  # a fresh process
        daemon = Daemon(ctl, tick_seconds=86400)
        run_until(daemon, clock, up)
    after = [v for v in ctl.log.runs() if v["started_at"] > "2026-10-30T12:00"]
    assert sorted(v["level"] for v in after) == ["monthly", "nightly", "offsite", "weekly"]
    assert {v["started_at"] for v in after} == {"2026-11-02T12:00:00+00:00"}
    order = [v["level"] for v in after]
    assert order.index("nightly") < order.index("offsite")  # the copy waits for its source
    offsite = next(v for v in after if v["level"] == "offsite")
    assert offsite["action"] == "copy" and offsite["repository"] == "off"


def test_transient_failures_retry_with_backoff_permanent_wait_for_next_slot(sim: Path) -> None:
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", level("nightly", "day at 02:00"))
    )
    start = datetime(2026, 5, 1, 2, tzinfo=UTC)
    transient = Unreachable("srv: connection refused")
    with use_clock(FakeClock(start)) as clock:
        ctl = controller(sim)
        daemon = Daemon(ctl, tick_seconds=86400)
        # May 1: four attempts (2, 10 and 30 minutes apart), then it waits for the next slot.
        # May 2: a permanent failure is not retried. May 3: good.
        SimEngine.failures = [transient] * 4 + [WrongPassword("wrong repository password")]
        run_until(daemon, clock, datetime(2026, 5, 3, 3, tzinfo=UTC))
    attempts = [(v["started_at"][5:16], v["state"]) for v in ctl.log.runs()]
    assert attempts == [
        ("05-01T02:00", "failed"),
        ("05-01T02:02", "failed"),
        ("05-01T02:12", "failed"),
        ("05-01T02:42", "failed"),
        ("05-02T02:00", "failed"),
        ("05-03T02:00", "succeeded"),
    ]
    runs = ctl.log.runs()
    assert runs[0]["stats"] == {"transient": True} and "connection refused" in runs[0]["error"]
    assert runs[4]["stats"] == {} and runs[4]["error"] == "wrong repository password"


def test_two_machines_sharing_a_repository_limited_to_one_never_overlap(sim: Path) -> None:
    SimEngine.duration = 0.2
    levels = level("nightly", "day at 02:00") + level("hourly", "1 hours")
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", levels, machines=("ws-1", "ws-2", "ws-3"), max_parallel=1)
    )
    with use_clock(SystemClock()):
        ctl = controller(sim)
        daemon = Daemon(ctl, max_parallel=4, tick_seconds=3600)
        for _ in range(6):  # the loop's wake-ups after each finished run
            daemon.tick()
            while daemon.wait_idle(0.05) is False:
                daemon.tick()
    work = sorted((began, ended) for *_, what, began, ended in SimEngine.calls)
    assert len(work) == 6  # 3 machines x 2 levels, each once
    for (_, end), (next_start, _) in itertools.pairwise(work):
        assert next_start >= end
    views = sorted(ctl.log.runs(), key=lambda v: v["started_at"])
    for a, b in itertools.pairwise(views):
        assert b["started_at"] >= a["finished_at"]


def test_runs_on_different_repositories_do_overlap_but_never_on_one_machine(sim: Path) -> None:
    SimEngine.duration = 0.3
    levels = level("nightly", "day at 02:00") + level(
        "offsite", "day at 03:00", kind="copy", extra='of = "nightly"\nto = "off"'
    )
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", levels, machines=("ws-1", "ws-2", "ws-3"))
    )
    with use_clock(SystemClock()):
        daemon = Daemon(controller(sim), max_parallel=4, tick_seconds=3600)
        for _ in range(4):
            daemon.tick()
            while daemon.wait_idle(0.05) is False:
                daemon.tick()
    by_machine: dict[str, list[tuple[float, float]]] = {}
    for machine, _, _, began, ended in SimEngine.calls:
        by_machine.setdefault(machine, []).append((began, ended))
    assert sorted(by_machine) == ["ws-1", "ws-2", "ws-3"]
    for spans in by_machine.values():
        spans.sort()
        assert len(spans) == 2 and spans[1][0] >= spans[0][1]
    firsts = sorted(spans[0] for spans in by_machine.values())
    assert firsts[1][0] < firsts[0][1]  # the machines did run side by side


def test_repository_gate_retention_waits_for_writers_and_keeps_new_ones_out() -> None:
    gate = RepositoryGate()
    assert gate.try_write("acme/nas", None) and gate.try_write("acme/nas", None)
    entered = threading.Event()

    def retention() -> None:
        with gate.exclusive("acme/nas"):
            entered.set()

    worker = threading.Thread(target=retention)
    worker.start()
    time.sleep(0.1)
    assert not entered.is_set()  # the other writer is still at work
    assert not gate.try_write("acme/nas", None)  # and no new writer may start
    gate.end_write("acme/nas")
    assert entered.wait(2)
    worker.join(2)
    gate.end_write("acme/nas")
    assert gate.writers("acme/nas") == 0 and gate.try_write("acme/nas", 1)


def test_reload_with_a_broken_policy_keeps_the_old_one(
    sim: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sim / "policies" / "acme.toml"
    path.write_text(policy("acme", "UTC", level("nightly", "day at 02:00")))
    ctl = controller(sim)
    daemon = Daemon(ctl)
    old = ctl.policies
    path.write_text(policy("acme", "UTC", level("nightly", "dayly at 02:00")))
    assert daemon.reload() is False
    assert ctl.policies is old
    assert "policy reload refused" in caplog.text and "did you mean 'day at 02:00'" in caplog.text
    path.write_text(policy("acme", "UTC", level("nightly", "day at 04:00")))
    assert daemon.reload() is True
    assert ctl.policies.find_machine("srv").levels[0].every == "day at 04:00"


def test_machine_busy_with_a_manual_run_is_tried_again_after_a_tick(sim: Path) -> None:
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", level("nightly", "day at 02:00"))
    )
    start = datetime(2026, 5, 1, 2, tzinfo=UTC)
    with use_clock(FakeClock(start)) as clock:
        ctl = controller(sim)
        daemon = Daemon(ctl, tick_seconds=60)
        with machine_lock(ctl.state_dir, ctl.policies.find_machine("srv")):
            for _ in range(3):  # the wake-ups after each try: no busy loop
                daemon.tick()
                assert daemon.wait_idle(5)
            assert daemon.started == 1 and ctl.log.runs() == []
        clock.advance(timedelta(seconds=61))
        daemon.tick()
        assert daemon.wait_idle(5)
    assert [(v["level"], v["state"]) for v in ctl.log.runs()] == [("nightly", "succeeded")]


def test_retention_never_runs_beside_another_writer_of_its_repository(sim: Path) -> None:
    SimEngine.duration = 0.15
    levels = level("nightly", "day at 02:00") + "keep = { last = 7 }\n"
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", levels, machines=("ws-1", "ws-2", "ws-3", "ws-4"))
    )
    daemon = Daemon(controller(sim), max_parallel=4, tick_seconds=3600)
    daemon.tick()
    assert daemon.wait_idle(20)
    spans = [(what, began, ended) for _, _, what, began, ended in SimEngine.calls]
    assert sorted(what for what, *_ in spans) == ["backup"] * 4 + ["forget"] * 4
    backups = [(b, e) for what, b, e in spans if what == "backup"]
    assert max(b for b, _ in backups) < min(e for _, e in backups)  # the backups ran together
    for what, began, ended in spans:
        if what == "forget":
            others = [(b, e) for w, b, e in spans if (w, b, e) != (what, began, ended)]
            assert all(e <= began or b >= ended for b, e in others)


def test_run_that_ends_while_a_tick_looks_is_not_started_again(
    sim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (sim / "policies" / "acme.toml").write_text(
        policy("acme", "UTC", level("nightly", "day at 02:00"), machines=("ws-1", "ws-2"))
    )
    release = threading.Event()
    real_backup = SimEngine.backup

    def held_backup(self: SimEngine, request: BackupRequest, progress: Any = None) -> Outcome:
        release.wait(10)
        return real_backup(self, request, progress)

    monkeypatch.setattr(SimEngine, "backup", held_backup)
    with use_clock(FakeClock(datetime(2026, 5, 1, 3, tzinfo=UTC))):
        ctl = controller(sim)
        daemon = Daemon(ctl, max_parallel=1, tick_seconds=60)
        daemon.tick()  # ws-1 runs, ws-2 waits for the one slot
        real_look = daemon._look

        def look_then_end_the_run(machine: Any, now: datetime) -> list:
            duties = real_look(machine, now)
            if machine.name == "ws-2":  # the last machine looked at: ws-1's run ends now
                release.set()
                assert daemon.wait_idle(10)
            return duties

        daemon._look = look_then_end_the_run  # type: ignore[method-assign]
        daemon.tick()  # ws-1's duty was read before its run ended: it must not run again
        assert daemon.wait_idle(10)
        daemon._look = real_look  # type: ignore[method-assign]
        for _ in range(2):
            daemon.tick()
            assert daemon.wait_idle(10)
    assert sorted(name for name, *_ in SimEngine.calls) == ["ws-1", "ws-2"]
