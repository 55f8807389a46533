"""Schedules in the client's zone (slots, DST, months) and the `plan` / `status` commands."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recoverd.actions.due import level_duty, machine_duties
from recoverd.cli import main
from recoverd.clock import FakeClock, use_clock
from recoverd.controller import Controller
from recoverd.errors import MachineBusy
from recoverd.locks import machine_lock
from recoverd.log import RunFilter
from recoverd.policy.schedule import Schedule


def local(schedule: Schedule, start: datetime, end: datetime) -> list[str]:
    return [
        s.astimezone(schedule.zone).strftime("%a %Y-%m-%d %H:%M%z")
        for s in schedule.slots(start, end)
    ]


def test_slots_skipped_wall_time_runs_once_after_the_gap() -> None:
    nightly = Schedule.of("day at 02:30", "Europe/Berlin")
    assert local(nightly, datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC)) == [
        "Sat 2026-03-28 02:30+0100",
        "Sun 2026-03-29 03:30+0200",
    ]


def test_slots_repeated_wall_time_runs_once_at_its_first_pass() -> None:
    nightly = Schedule.of("day at 01:30", "America/New_York")
    slots = nightly.slots(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC))
    assert [s.isoformat() for s in slots] == [
        "2026-11-01T05:30:00+00:00",  # 01:30 EDT; 01:30 EST an hour later is the same slot
        "2026-11-02T06:30:00+00:00",
    ]


def test_slots_month_days_past_the_end_fall_on_the_last_day() -> None:
    start, end = datetime(2028, 1, 1, tzinfo=UTC), datetime(2028, 5, 1, tzinfo=UTC)
    assert [s[4:14] for s in local(Schedule.of("month on day 31 at 12:00", "UTC"), start, end)] == [
        "2028-01-31",
        "2028-02-29",
        "2028-03-31",
        "2028-04-30",
    ]
    assert local(Schedule.of("month on last day at 12:00", "UTC"), start, end) == local(
        Schedule.of("month on day 31 at 12:00", "UTC"), start, end
    )
    assert [s[4:14] for s in local(Schedule.of("month on day 1 at 00:00", "UTC"), start, end)] == [
        "2028-02-01",
        "2028-03-01",
        "2028-04-01",
        "2028-05-01",  # the window's end is included, its start is not
    ]


@pytest.mark.parametrize(
    ("every", "days"),
    [
        ("weekday at 22:00", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("mon,wed,fri at 22:00", ["Mon", "Wed", "Fri"]),
        ("sunday at 22:00", ["Sun"]),
        ("Sat at 22:00", ["Sat"]),
    ],
)
def test_slots_weekday_forms(every: str, days: list[str]) -> None:
    week = local(
        Schedule.of(every, "Asia/Shanghai"),
        datetime(2026, 11, 29, tzinfo=UTC),
        datetime(2026, 12, 6, tzinfo=UTC),
    )
    assert [s[:3] for s in week] == days
    assert {s[-10:] for s in week} == {"22:00+0800"}


def test_latest_and_next_slot_around_a_slot() -> None:
    nightly = Schedule.of("day at 01:30", "Asia/Shanghai")
    slot = datetime(2026, 11, 26, 17, 30, tzinfo=UTC)  # 01:30 in Shanghai
    assert nightly.latest_slot(slot) == slot
    assert nightly.latest_slot(slot - timedelta(seconds=1)) == slot - timedelta(days=1)
    assert nightly.next_slot(slot) == slot + timedelta(days=1)


def test_interval_forms_have_no_calendar() -> None:
    with pytest.raises(ValueError, match="counts from the last run"):
        Schedule.of("4 hours", "UTC").slots(datetime.now(UTC), datetime.now(UTC))


POLICY = """\
[client]
name = "Acme"
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
[repositories.nas]
url = "/nonexistent"
password = "env:HOME"
[machines.ws-1]
transport = "local"
[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/srv"]
every = "day at 01:30"
keep = { daily = 7 }
[[machines.ws-1.levels]]
name = "hourly"
kind = "files"
repository = "nas"
paths = ["/srv"]
every = "6 hours"
[[machines.ws-1.levels]]
name = "manual"
kind = "files"
repository = "nas"
paths = ["/srv"]
"""

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)  # 20:00 in Shanghai


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Controller:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.toml").write_text(POLICY)
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    return Controller(tmp_path / "policies", tmp_path / "state")


def record(ctl: Controller, level: str, state: str, at: datetime, **stats: object) -> None:
    run = ctl.log.start(
        client="acme", machine="ws-1", level=level, kind="files", action="backup", at=at
    )
    ctl.log.finish(
        run, state, stats=dict(stats), error=None if state == "succeeded" else "x", at=at
    )


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict]]:
    capsys.readouterr()
    with use_clock(FakeClock(NOW)):
        code = main([*args, "--json"])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_plan_lists_coming_runs_in_local_time(
    acme: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    record(acme, "nightly", "succeeded", NOW - timedelta(hours=2))
    record(acme, "hourly", "succeeded", NOW - timedelta(hours=1))
    code, rows = cli_json(capsys, "plan", "--days", "2")
    assert code == 0
    assert [(r["at"], r["level"]) for r in rows] == [
        ("2026-11-27T01:00:00+08:00", "hourly"),
        ("2026-11-27T01:30:00+08:00", "nightly"),
        ("2026-11-27T07:00:00+08:00", "hourly"),
        ("2026-11-27T13:00:00+08:00", "hourly"),
        ("2026-11-27T19:00:00+08:00", "hourly"),
        ("2026-11-28T01:00:00+08:00", "hourly"),
        ("2026-11-28T01:30:00+08:00", "nightly"),
        ("2026-11-28T07:00:00+08:00", "hourly"),
        ("2026-11-28T13:00:00+08:00", "hourly"),
        ("2026-11-28T19:00:00+08:00", "hourly"),
    ]
    with use_clock(FakeClock(NOW)):
        assert main(["plan", "--days", "1"]) == 0
    table = capsys.readouterr().out
    assert "2026-11-27 01:30 +08" in table and "manual" not in table


def test_status_flags_overdue_and_failing_levels_and_exits_1(
    acme: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    record(acme, "nightly", "succeeded", NOW - timedelta(days=3))  # missed two slots
    record(acme, "hourly", "succeeded", NOW - timedelta(hours=1))
    code, rows = cli_json(capsys, "status")
    assert code == 1
    by_level = {r["level"]: r for r in rows}
    assert by_level["nightly"]["flags"] == ["overdue"]
    assert by_level["nightly"]["age_s"] == 3 * 86400
    assert by_level["hourly"]["flags"] == []
    assert by_level["hourly"]["next_due"] == "2026-11-27T01:00:00+08:00"
    assert by_level["nightly"]["last_good"] == "2026-11-23T20:00:00+08:00"

    record(acme, "nightly", "succeeded", NOW - timedelta(minutes=5))
    assert cli_json(capsys, "status")[0] == 0
    record(acme, "hourly", "failed", NOW - timedelta(minutes=1), transient=True)
    code, rows = cli_json(capsys, "status")
    assert code == 1
    hourly = next(r for r in rows if r["level"] == "hourly")
    assert hourly["flags"] == ["failing"] and hourly["last_attempt_state"] == "failed"
    with use_clock(FakeClock(NOW)):
        assert main(["status"]) == 1
    out = capsys.readouterr()
    assert "FAILING" in out.out and "1 level(s) with problems: failing" in out.err


def test_status_exits_1_for_failed_retention_stalled_run_and_unchecked_drill(
    acme: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    record(acme, "nightly", "succeeded", NOW - timedelta(hours=2))
    record(acme, "hourly", "succeeded", NOW - timedelta(hours=1))
    assert cli_json(capsys, "status")[0] == 0
    # A good backup whose retention failed: the backup is fine, the repository grows.
    prune = acme.log.start(
        client="acme", machine="ws-1", level="nightly", kind="files", action="prune", at=NOW
    )
    acme.log.finish(prune, "failed", error="restic forget: repository is locked", at=NOW)
    code, rows = cli_json(capsys, "status")
    nightly = next(r for r in rows if r["level"] == "nightly")
    assert code == 1 and nightly["flags"] == ["retention-failed"]
    assert nightly["retention_error"] == "restic forget: repository is locked"
    with use_clock(FakeClock(NOW)):
        assert main(["status"]) == 1
    out = capsys.readouterr()
    assert "RETENTION-FAILED" in out.out and "retention failed: restic forget" in out.out
    assert "1 level(s) with problems: retention-failed" in out.err
    # A run stopped for making no progress.
    record(acme, "hourly", "failed", NOW, stalled=True, transient=True)
    rows = cli_json(capsys, "status")[1]
    assert next(r for r in rows if r["level"] == "hourly")["flags"] == ["failing", "stalled"]


def test_drill_check_missing_for_partial_or_unrun_check() -> None:
    from recoverd.alerts import drill_check_missing

    drill = {"action": "verify", "state": "succeeded", "stats": {"check": "passed"}}
    assert not drill_check_missing(drill)
    locked = {**drill, "stats": {"check": "not run: the repository is locked"}}
    assert drill_check_missing(locked)
    assert drill_check_missing({**drill, "state": "partial"})
    assert not drill_check_missing({**locked, "action": "backup"})


def test_backup_refuses_a_machine_another_run_holds(
    acme: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    machine = acme.policies.find_machine("ws-1")
    with machine_lock(acme.state_dir, machine):
        assert main(["backup", "ws-1"]) == 1
        with pytest.raises(MachineBusy), machine_lock(acme.state_dir, machine):
            pass
    assert "acme/ws-1 is busy with another run" in capsys.readouterr().err
    assert acme.log.runs() == []


def test_daemon_with_a_broken_policy_does_not_start(
    acme: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    (acme.policy_dir / "acme.toml").write_text(POLICY.replace("day at 01:30", "day at 25:00"))
    assert main(["daemon"]) == 2
    assert "'25:00' is not a time HH:MM" in capsys.readouterr().err
    assert not (acme.state_dir / "daemon.lock").exists()


@pytest.mark.parametrize("seed", range(8))
def test_machine_duties_from_index_lookups_match_the_whole_history(
    acme: Controller, seed: int
) -> None:
    # machine_duties asks the log only for each level's newest run, last good run and the
    # attempts at the current slot; level_duty given every run of the level must agree.
    rng = random.Random(seed)
    states = ["succeeded", "partial", "failed", "interrupted", "skipped", None]
    for _ in range(rng.randrange(0, 120)):
        level = rng.choice(["nightly", "hourly", "manual"])
        action = "prune" if rng.random() < 0.2 else "backup"
        at = NOW - timedelta(minutes=rng.randrange(30 * 24 * 60))  # not in log order
        run = acme.log.start(
            client="acme", machine="ws-1", level=level, kind="files", action=action, at=at
        )
        state = rng.choice(states)
        if state is not None:  # else left running (this process is alive)
            stats = {"transient": True} if rng.random() < 0.5 else {}
            end = at + timedelta(minutes=rng.randrange(1, 90))
            acme.log.finish(run, state, stats=stats, error="x", at=end)
    machine = acme.policies.find_machine("ws-1")
    zone = acme.policies.clients["acme"].timezone
    history = acme.log.runs(RunFilter(client="acme", machine="ws-1"))
    expected = []
    for level in machine.levels:
        if level.every:
            runs = [v for v in history if v["level"] == level.name and v["action"] == "backup"]
            expected.append(level_duty(machine, level, Schedule.of(level.every, zone), runs, NOW))
    assert machine_duties(acme.log, machine, zone, NOW) == expected


@pytest.mark.parametrize(
    "every",
    ["day at 01:30", "sunday at 03:00", "mon,wed,fri at 23:59", "month on day 31 at 02:30",
     "month on last day at 05:00", "weekday at 00:00"],
)  # fmt: skip
def test_latest_and_next_slot_are_those_of_the_whole_search_window(every: str) -> None:
    # latest_slot/next_slot look near the moment first; they must agree with a month's slots.
    rng = random.Random(every)
    window = timedelta(days=33)
    for zone in ("Asia/Shanghai", "Europe/Berlin", "America/New_York"):
        schedule = Schedule.of(every, zone)
        for _ in range(40):
            moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(525_600))
            assert schedule.latest_slot(moment) == schedule.slots(moment - window, moment)[-1]
            assert schedule.next_slot(moment) == schedule.slots(moment, moment + window)[0]


def _run(state: str, started_at: datetime, **stats: object) -> dict[str, object]:
    at = started_at.isoformat()
    return {"state": state, "started_at": at, "finished_at": at, "stats": dict(stats)}


def test_level_duty_permanent_failure_is_retried_once_after_the_policy_changed() -> None:
    from recoverd.policy.model import Level, Machine

    level = Level(name="nightly", kind="files", every="day at 01:30")
    machine = Machine(name="ws-042", client="acme", levels=(level,))
    schedule = Schedule.of("day at 01:30", "UTC")
    slot = datetime(2026, 5, 2, 1, 30, tzinfo=UTC)
    failed = _run("failed", slot + timedelta(minutes=1))  # permanent: no "transient"
    now = slot + timedelta(hours=3)

    waiting = level_duty(machine, level, schedule, [failed], now)
    assert waiting.run_at == slot + timedelta(days=1)
    assert waiting.reason == "failed; next try at the next slot"

    fixed = slot + timedelta(hours=2)  # the engineer pinned the new host key
    retried = level_duty(machine, level, schedule, [failed], now, changed_at=fixed)
    assert retried.runnable and retried.reason == "the policy changed after the failure"

    # The retry failed too: it started after the change, so the level waits again.
    again = _run("failed", fixed + timedelta(minutes=5))
    assert level_duty(machine, level, schedule, [failed, again], now, fixed).run_at == (
        slot + timedelta(days=1)
    )
    # A change "in the future" of the clock (a test's fake clock in the past) is ignored.
    assert level_duty(machine, level, schedule, [failed], now, now + timedelta(1)) == waiting
