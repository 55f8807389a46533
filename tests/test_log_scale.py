"""The maintenance log's store at fleet scale: queries that stay fast and never overflow."""

from __future__ import annotations

from pathlib import Path

from recoverd.log import MaintenanceLog, RunFilter
from recoverd.plugins import PluginHost


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
