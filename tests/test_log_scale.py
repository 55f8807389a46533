"""The maintenance log's store at fleet scale: queries that stay fast and never overflow."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recoverd.log import MaintenanceLog, RunFilter
from recoverd.plugins import PluginHost
from recoverd_plugins.sqlite_store import ENDED_UP_TO


def make_log(tmp_path: Path) -> MaintenanceLog:
    host = PluginHost()
    return MaintenanceLog(tmp_path / "state", host["log_sinks"], host["notifiers"])


def test_entries_of_more_runs_than_sqlite_variables_come_back_in_log_order(
    tmp_path: Path,
) -> None:
    mlog = make_log(tmp_path)
    ids = []
    for machine in ("ws-1", "ws-2", "ws-1"):
        run = mlog.start(client="acme", machine=machine, level="n", kind="files", action="backup")
        mlog.finish(run, "succeeded")
        ids.append(run)
    # A year of a 200-machine fleet asks for hundreds of thousands of runs at once.
    wanted = [f"no-such-run-{i}" for i in range(70_000)]
    wanted[10], wanted[40_000], wanted[-1] = ids[2], ids[0], ids[1]
    entries = list(mlog.store.entries(wanted))
    assert [(e.run_id, e.type) for e in entries] == [
        (run, kind) for run in ids for kind in ("start", "end")
    ]
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)


def test_run_queries_by_machine_or_date_use_an_index(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    db = mlog.store._db
    by_machine = db.execute(
        "EXPLAIN QUERY PLAN SELECT run_id FROM entries "
        "WHERE type = 'start' AND machine = ? AND at >= ? ORDER BY seq",
        ("ws-1", "2026-01-01"),
    ).fetchall()
    assert "entries_machine_at" in str(by_machine)
    by_date = db.execute(
        "EXPLAIN QUERY PLAN SELECT run_id FROM entries WHERE type = 'start' AND at >= ?",
        ("2026-01-01",),
    ).fetchall()
    assert "entries_type_at" in str(by_date)
    assert mlog.runs(RunFilter(machine="ws-1")) == []


def test_open_runs_finds_old_and_new_unfinished_runs_among_finished_ones(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    common = {"client": "acme", "level": "n", "kind": "files", "action": "backup"}
    old = mlog.start(machine="ws-old", **common)
    for _ in range(5):
        mlog.finish(mlog.start(machine="ws-1", **common), "succeeded")
    new = mlog.start(machine="ws-new", **common)
    mlog.finish(mlog.start(machine="ws-2", **common), "failed")
    assert [e.run_id for e in mlog.store.open_runs()] == [old, new]
    mlog.finish(old, "succeeded")
    mlog.finish(new, "succeeded")
    assert mlog.store.open_runs() == []


def test_open_runs_keeps_a_mark_below_the_oldest_open_run(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    common = {"client": "acme", "level": "n", "kind": "files", "action": "backup"}

    def mark() -> int:
        row = mlog.store._db.execute("SELECT seq FROM marks WHERE name = ?", (ENDED_UP_TO,))
        return (row.fetchone() or (0,))[0]

    assert mark() == 0
    for _ in range(3):
        mlog.finish(mlog.start(machine="ws-1", **common), "succeeded")
    assert mlog.store.open_runs() == [] and mark() == 6
    old = mlog.start(machine="ws-old", **common)  # seq 7
    mlog.finish(mlog.start(machine="ws-1", **common), "succeeded")
    assert [e.run_id for e in mlog.store.open_runs()] == [old]
    assert mark() == 6  # the search must still reach the open run next time
    mlog.finish(old, "succeeded")
    assert mlog.store.open_runs() == [] and mark() == 10
    # The search walks the entries above the mark, not every start entry.
    plan = mlog.store._db.execute(
        "EXPLAIN QUERY PLAN SELECT seq FROM entries AS s NOT INDEXED "
        "WHERE seq > 10 AND type = 'start'"
    ).fetchall()
    assert "INTEGER PRIMARY KEY" in str(plan)


def test_a_log_from_before_the_mark_still_reaps_an_old_orphan(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    common = {"client": "acme", "machine": "ws-1", "level": "n", "kind": "files"}
    orphan = mlog.start(action="backup", **common)
    mlog.store._db.execute(
        "UPDATE entries SET body = json_set(body, '$.owner.pid', -1) WHERE run_id = ?", (orphan,)
    )  # a controller that is gone (pid -1 never runs); the body is not re-hashed here
    for _ in range(3):
        mlog.finish(mlog.start(action="backup", **common), "succeeded")
    mlog.store._db.execute("DROP TABLE marks")  # as a database made before the mark
    mlog.close()
    reopened = make_log(tmp_path)
    assert reopened.run(orphan)["state"] == "interrupted"


def test_level_runs_are_newest_last_good_and_attempts_since(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def run(state: str | None, days: float, machine: str = "ws-1", **over: str) -> str:
        fields = {"client": "acme", "machine": machine, "level": "nightly", "action": "backup"}
        fields.update(over)
        at = t0 + timedelta(days=days)
        run_id = mlog.start(kind="files", at=at, **fields)
        if state is not None:
            mlog.finish(run_id, state, at=at + timedelta(minutes=5))
        return run_id

    good = run("succeeded", 0)
    run("succeeded", 0, machine="ws-2")  # other machines, levels and actions do not count
    run("succeeded", 200, level="hourly")
    run("succeeded", 200, action="prune")
    partial_then_failed = run("partial", 1)
    mlog.store.write(partial_then_failed, "end", (t0 + timedelta(days=1)).isoformat(), {
        "state": "failed", "stats": {}, "error": "x", "snapshot": None,
    })  # fmt: skip  # a second end: the run's state is its last end's
    failed = [run("failed", 2 + d) for d in range(100)]  # a long failing streak
    running = run(None, 150)

    def ids(since_days: float) -> list[str]:
        return [
            v["id"]
            for v in mlog.level_runs(
                "acme", "ws-1", "nightly", "backup", t0 + timedelta(days=since_days),
                ("succeeded", "partial"),
            )
        ]  # fmt: skip

    assert ids(1000) == [good, running]
    assert ids(100) == [good, *failed[98:], running]
    assert mlog.level_runs("acme", "ws-1", "other", "backup", t0, ("succeeded",)) == []


def test_level_run_queries_use_indexes(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    db = mlog.store._db
    statements: list[str] = []
    db.set_trace_callback(statements.append)  # the statement with its values filled in
    mlog.store.level_run_ids("acme", "ws-1", "n", "backup", "2026-01-01", ("succeeded",))
    db.set_trace_callback(None)
    plan = str(db.execute("EXPLAIN QUERY PLAN " + statements[-1]).fetchall())
    assert plan.count("USING INDEX entries_level (") == 2
    assert "USING INDEX entries_machine_at" in plan
    assert not re.search(r"SCAN (entries|s)\b", plan)  # only subquery results are scanned


def test_an_existing_log_gets_the_level_index_when_opened(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    mlog.finish(
        mlog.start(client="a", machine="m", level="n", kind="files", action="backup"), "succeeded"
    )
    mlog.store._db.execute("DROP INDEX entries_level")
    mlog.close()
    reopened = make_log(tmp_path)
    names = {r[0] for r in reopened.store._db.execute("SELECT name FROM sqlite_master")}
    assert "entries_level" in names
    assert len(reopened.level_runs("a", "m", "n", "backup", datetime.now(UTC), ("succeeded",))) == 1


def test_loading_the_plugins_imports_no_transport_library() -> None:
    # What every command pays in a new process: paramiko and pywinrm only when connecting.
    code = (
        "import sys; from recoverd.plugins import PluginHost; host = PluginHost(); "
        "assert 'ssh' in host['transports'] and 'winrm' in host['transports']; "
        "print(sorted(m for m in ('paramiko', 'winrm', 'requests') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_last_run_of_a_level_by_state_walks_the_level_index(tmp_path: Path) -> None:
    mlog = make_log(tmp_path)
    who = {"client": "acme", "machine": "ws-1", "level": "nightly", "kind": "files"}
    good = mlog.start(action="backup", **who)
    mlog.finish(good, "succeeded")
    pruned = mlog.start(action="prune", **who)  # retention runs are runs of the level too
    mlog.finish(pruned, "succeeded")
    failed = mlog.start(action="backup", **who)
    mlog.finish(failed, "failed")
    running = mlog.start(action="backup", **who)
    mlog.finish(mlog.start(action="backup", **{**who, "machine": "ws-2"}), "succeeded")

    def last(state: str | None) -> str | None:
        view = mlog.last_run("acme", "ws-1", "nightly", state)
        return view["id"] if view else None

    assert last(None) == running and last("running") == running
    assert last("succeeded") == pruned and last("failed") == failed
    assert last("partial") is None and mlog.last_run("acme", "ws-1", "other") is None
    statements: list[str] = []
    mlog.store._db.set_trace_callback(statements.append)
    mlog.store.newest_level_run_id("acme", "ws-1", "nightly", "succeeded")
    mlog.store._db.set_trace_callback(None)
    plan = str(mlog.store._db.execute("EXPLAIN QUERY PLAN " + statements[-1]).fetchall())
    assert "USING INDEX entries_level (" in plan and "TEMP B-TREE" not in plan
