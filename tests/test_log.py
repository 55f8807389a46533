"""The maintenance log: append-only entries, hash chain, current views, interrupted runs."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.errors import WrongPassword
from recoverd.log import MaintenanceLog, RunFilter
from recoverd.log.record import GENESIS, VIEW_FIELDS, entry_hash
from recoverd.plugins import PluginHost
from recoverd.runs import exit_code, recorded_run


@pytest.fixture
def host() -> PluginHost:
    return PluginHost()


@pytest.fixture
def mlog(tmp_path: Path, host: PluginHost) -> MaintenanceLog:
    return MaintenanceLog(tmp_path / "state", host["log_sinks"], host["notifiers"])


def start(mlog: MaintenanceLog, machine: str = "ws-1", **extra: object) -> str:
    fields = {
        "client": "acme",
        "machine": machine,
        "level": "nightly",
        "kind": "files",
        "action": "backup",
        "engineer": "Wang Lei",
        **extra,
    }
    return mlog.start(**fields)


def test_run_view_has_spec_fields_and_latest_state(mlog: MaintenanceLog) -> None:
    run_id = start(mlog, symptom="disk clicks", reported_by="Ms. Li")
    assert mlog.run(run_id)["state"] == "running"
    view = mlog.finish(run_id, "succeeded", snapshot="abcd1234", stats={"files_new": 3})
    assert set(VIEW_FIELDS) <= set(view)
    assert view["state"] == "succeeded"
    assert view["snapshot"] == "abcd1234"
    assert view["stats"] == {"files_new": 3}
    assert view["symptom"] == "disk clicks" and view["reported_by"] == "Ms. Li"
    assert view["started_at"].endswith("+00:00") and view["finished_at"].endswith("+00:00")


def test_entries_are_appended_and_chained(mlog: MaintenanceLog) -> None:
    first = start(mlog)
    mlog.finish(first, "failed", error="host unreachable")
    second = start(mlog, machine="ws-2")
    mlog.finish(second, "succeeded")
    entries = list(mlog.store.entries())
    assert [e.type for e in entries] == ["start", "end", "start", "end"]
    prev = GENESIS
    for entry in entries:
        assert entry.prev_hash == prev
        assert entry.hash == entry_hash(
            entry.seq, entry.run_id, entry.type, entry.at, entry.body, entry.prev_hash
        )
        prev = entry.hash
    # One view per run, oldest first, filters applied.
    assert [v["id"] for v in mlog.runs()] == [first, second]
    assert [v["id"] for v in mlog.runs(RunFilter(state="failed"))] == [first]
    assert [v["id"] for v in mlog.runs(RunFilter(machine="ws-2"))] == [second]


def test_recorded_run_maps_errors_to_failed_with_reason(mlog: MaintenanceLog) -> None:
    with recorded_run(
        mlog, client="acme", machine="ws-1", level="n", kind="files", action="backup"
    ) as run:
        raise WrongPassword("wrong repository password")
    assert run.view["state"] == "failed"
    assert run.view["error"] == "wrong repository password"
    assert exit_code([run.view]) == 1


def test_recorded_run_interrupt_is_recorded_and_reraised(mlog: MaintenanceLog) -> None:
    with pytest.raises(KeyboardInterrupt):
        with recorded_run(
            mlog, client="acme", machine="ws-1", level="n", kind="files", action="backup"
        ):
            raise KeyboardInterrupt
    assert mlog.runs()[-1]["state"] == "interrupted"


def test_exit_code_worst_state_wins() -> None:
    assert exit_code([{"state": "succeeded"}, {"state": "partial"}]) == 3
    assert exit_code([{"state": "partial"}, {"state": "failed"}]) == 1
    assert exit_code([{"state": "succeeded"}]) == 0


def test_run_of_killed_controller_shows_interrupted_on_next_start(
    tmp_path: Path, host: PluginHost
) -> None:
    state = tmp_path / "state"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from recoverd.log import MaintenanceLog
        from recoverd.plugins import PluginHost
        host = PluginHost()
        log = MaintenanceLog(Path({str(state)!r}), host["log_sinks"])
        print(log.start(client="acme", machine="ws-1", level="n", kind="files",
                        action="backup"), flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        run_id = child.stdout.readline().strip()
        # While its process lives, another recoverd must not call the run interrupted.
        assert MaintenanceLog(state, host["log_sinks"]).run(run_id)["state"] == "running"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    log = MaintenanceLog(state, host["log_sinks"])
    view = log.run(run_id)
    assert view["state"] == "interrupted"
    assert f"pid {child.pid}" in view["error"]
    # Reaping appends exactly one end entry, also when another start reaps again.
    MaintenanceLog(state, host["log_sinks"])
    assert [e.type for e in log.store.entries([run_id])] == ["start", "end"]


def test_store_file_is_private(mlog: MaintenanceLog) -> None:
    assert (mlog.store.path.stat().st_mode & 0o777) == 0o600
    assert (mlog.store.path.parent.stat().st_mode & 0o077) == 0


def test_concurrent_writers_extend_one_chain(tmp_path: Path, host: PluginHost) -> None:
    state = tmp_path / "state"
    MaintenanceLog(state, host["log_sinks"])
    script = textwrap.dedent(f"""
        from pathlib import Path
        from recoverd.log import MaintenanceLog
        from recoverd.plugins import PluginHost
        log = MaintenanceLog(Path({str(state)!r}), PluginHost()["log_sinks"])
        for i in range(40):
            log.finish(log.start(client="acme", machine="m", level="n", kind="files",
                                 action="backup"), "succeeded")
    """)
    children = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(3)]
    deadline = time.monotonic() + 60
    for child in children:
        assert child.wait(timeout=max(1, deadline - time.monotonic())) == 0
    db = sqlite3.connect(state / "maintenance.db")
    rows = db.execute("SELECT seq, prev_hash, hash FROM entries ORDER BY seq").fetchall()
    assert len(rows) == 240
    assert all(rows[i][1] == rows[i - 1][2] for i in range(1, len(rows)))
    bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM entries")]
    assert all("owner" not in b or b["owner"]["pid"] for b in bodies)


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("acme", '[client]\nname = "Acme"\ntimezone = "Asia/Shanghai"\n[machines.ws-1]\n'),
        # [client] after other tables, an id other than the file name, a header in a string
        (
            "clients",
            '[machines.ws-1]\nnote = """\n[client]\n"""\n[client]\nid = "acme"\nname = "A"\n'
            'timezone = "Asia/Shanghai"\n',
        ),
    ],
)
def test_log_shows_local_times_also_while_a_policy_is_broken(
    tmp_path: Path, name: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / f"{name}.toml").write_text(policy)  # not valid: the machine lacks keys
    (policies / "broken.toml").write_text("[client\n")
    host = PluginHost()
    mlog = MaintenanceLog(tmp_path / "state", host["log_sinks"])
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    mlog.start(client="acme", machine="ws-1", level="n", kind="files", action="backup", at=at)
    mlog.start(client="other", machine="x", level="n", kind="files", action="backup", at=at)
    mlog.close()
    args = ["--policies", str(policies), "--state", str(tmp_path / "state"), "log"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("2026-11-26 20:00 +08  acme")
    assert lines[2].startswith("2026-11-26 12:00 +00  other")  # no policy: UTC


def test_log_cuts_long_results_at_a_word_and_wide_shows_them_whole(
    tmp_path: Path, mlog: MaintenanceLog, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = (
        "open repository nas: Host key verification failed: restic on the machine runs ssh "
        "to reach the sftp repository, and that ssh does not know the storage server's host key"
    )
    mlog.finish(start(mlog), "failed", error=reason)
    mlog.close()
    args = ["--policies", str(tmp_path / "none"), "--state", str(tmp_path / "state"), "log"]
    assert main(args) == 0
    row = capsys.readouterr().out.splitlines()[1]
    (shown,) = [cell for cell in re.split(r"\s{2,}", row) if cell.startswith("open repository")]
    assert shown.endswith("…") and len(shown) <= 80
    assert reason.startswith(shown[:-1]) and reason[len(shown) - 1] == " "  # a whole word
    assert main([*args, "--wide"]) == 0
    assert reason in capsys.readouterr().out
