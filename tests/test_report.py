"""The monthly report: its figures against a log filled with known runs, every format, and the
HTML as a real headless Chromium renders it.

The month is October 2026 in Asia/Shanghai (UTC+8, no DST): 31 days, 4 Sundays, 22 weekdays.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from recoverd.actions.report import Month, build_report, expected_runs
from recoverd.cli import main
from recoverd.log import MaintenanceLog
from recoverd.log.record import canonical, entry_hash
from recoverd.plugins import PluginHost
from recoverd.policy import load_policies
from recoverd.policy.model import Level
from recoverd_plugins import sqlite_store

SHANGHAI = ZoneInfo("Asia/Shanghai")
CHROMIUM = "/usr/bin/chromium"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
restore_sla = "4h"

[repositories.nas]
url = "/srv/restic/acme"
password = "env:ACME_RESTIC_PASSWORD"

[repositories.offsite]
url = "/srv/restic/acme-offsite"
password = "env:ACME_RESTIC_PASSWORD"

[templates.pc]
address = "127.0.0.1"
[[templates.pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
every = "day at 01:30"

[machines.ws-1]
template = "pc"
asset_tag = "ACME-PC-001"
[[machines.ws-1.levels]]
name = "drill"
kind = "verify"
of = "nightly"
every = "month on day 1 at 05:00"

[machines.ws-2]
template = "pc"

[machines.srv-1]
template = "pc"
role = "server"
[[machines.srv-1.levels]]
name = "weekly-image"
kind = "image"
repository = "offsite"
device = "/dev/sda2"
every = "sunday at 03:00"
[[machines.srv-1.levels]]
name = "drill"
kind = "verify"
of = "nightly"
every = "month on day 1 at 05:00"
"""

MIB = 1024 * 1024


def local(day: int, hour: int, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


def record(
    mlog: MaintenanceLog,
    machine: str,
    level: str | None,
    action: str,
    start: datetime,
    state: str,
    minutes: float = 10,
    **fields: object,
) -> str:
    """Write one finished run with known times; ``fields`` go to start or end as they belong."""
    end_keys = {"snapshot", "stats", "error"}
    kinds = {"nightly": "files", "weekly-image": "image", "drill": "verify"}
    run_id = mlog.start(
        client="acme",
        machine=machine,
        level=level,
        kind=kinds.get(level or ""),
        action=action,
        repository={"nightly": "nas", "weekly-image": "offsite"}.get(level or ""),
        at=start,
        **{k: v for k, v in fields.items() if k not in end_keys},
    )
    mlog.finish(
        run_id,
        state,
        at=start + timedelta(minutes=minutes),
        **{k: v for k, v in fields.items() if k in end_keys},  # type: ignore[arg-type]
    )
    return run_id


def nightly(mlog: MaintenanceLog, machine: str, start: datetime, state: str = "succeeded") -> None:
    good = state == "succeeded"
    record(
        mlog,
        machine,
        "nightly",
        "backup",
        start,
        state,
        snapshot=f"{machine}-{start:%m%d}" if good else None,
        stats={"files_new": 1, "files_changed": 0, "bytes_added": 1000, "bytes_processed": 50000}
        if good
        else {},
        error=None if good else "host unreachable",
    )


def fill(state_dir: Path) -> None:
    """The known month (see the module docstring and the expected figures in the tests)."""
    mlog = MaintenanceLog(state_dir, PluginHost()["log_sinks"])
    # Before the month: counts for "added to date" only.
    nightly(mlog, "ws-2", local(30, 1, 30, month=9))
    for day in range(1, 32):
        # ws-1: failed on the 10th, no run on the 11th.
        if day != 11:
            nightly(mlog, "ws-1", local(day, 1, 30), "failed" if day == 10 else "succeeded")
        # ws-2: switched off after the 20th.
        if day <= 20:
            nightly(mlog, "ws-2", local(day, 1, 30))
        nightly(mlog, "srv-1", local(day, 1, 30))
    for day, state in ((4, "succeeded"), (11, "succeeded"), (18, "succeeded"), (25, "partial")):
        record(
            mlog,
            "srv-1",
            "weekly-image",
            "backup",
            local(day, 3),
            state,
            snapshot=f"img-{day}",
            stats={"bytes_added": 10_000_000, "bytes_processed": 64 * MIB},
            error="1 item(s) could not be read: /dev/sda2" if state == "partial" else None,
        )
    record(
        mlog,
        "ws-1",
        "drill",
        "verify",
        local(1, 5),
        "succeeded",
        stats={"files_verified": 120, "mismatches": 0, "duration_s": 1800},
    )
    record(
        mlog,
        "srv-1",
        "drill",
        "verify",
        local(1, 5),
        "failed",
        stats={"files_verified": 200, "mismatches": 2, "duration_s": 600},
        error="2 mismatches: /etc/a, /etc/b",
    )
    record(
        mlog,
        "ws-1",
        "nightly",
        "restore",
        local(20, 10),
        "succeeded",
        symptom="deleted project folder",
        reported_by="Ms. Li",
        engineer="Wang Lei",
        stats={"bytes_restored": 5 * MIB, "duration_s": 5400},
    )
    record(
        mlog,
        "ws-2",
        "nightly",
        "restore",
        local(25, 9),
        "failed",
        symptom="does not boot",
        reported_by="Mr. Zhao",
        engineer="Chen Jing",
        stats={"duration_s": 18000},
        error="disk not found",
    )
    # After the month: must not count.
    nightly(mlog, "ws-1", local(1, 1, 30, month=11))
    mlog.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    (root / "policies").mkdir()
    (root / "policies" / "acme.toml").write_text(POLICY)
    fill(root / "state")
    return root / "policies", root / "state"


@pytest.fixture
def env(world: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("RECOVERD_POLICIES", str(world[0]))
    monkeypatch.setenv("RECOVERD_STATE", str(world[1]))
    return world


def level(every: str, kind: str = "files") -> Level:
    return Level(name="x", kind=kind, every=every)


@pytest.mark.parametrize(
    ("every", "month", "zone", "slots"),
    [
        ("day at 01:30", "2026-10", "Asia/Shanghai", 31),
        ("sunday at 03:00", "2026-10", "Asia/Shanghai", 4),
        ("weekday at 22:00", "2026-10", "Asia/Shanghai", 22),
        ("mon,wed,fri at 08:00", "2026-02", "UTC", 12),
        ("month on day 1 at 05:00", "2026-10", "Asia/Shanghai", 1),
        ("month on day 31 at 05:00", "2026-02", "UTC", 1),
        ("month on last day at 23:00", "2026-04", "UTC", 1),
        ("6 hours", "2026-10", "Asia/Shanghai", 124),
        # The autumn DST change makes October 2026 in Berlin one hour longer: 745 h.
        ("1 hours", "2026-10", "Europe/Berlin", 745),
        ("30 minutes", "2026-02", "UTC", 28 * 48),
    ],
)
def test_expected_runs_counts_slots_of_each_form(every, month, zone, slots) -> None:
    assert expected_runs(level(every), Month.parse(month, zone)) == slots


def test_expected_runs_until_counts_only_past_slots() -> None:
    month = Month.parse("2026-10", "Asia/Shanghai")
    # 10 October 01:30 local has not come yet at 01:00: nine slots so far.
    assert expected_runs(level("day at 01:30"), month, local(10, 1)) == 9
    assert expected_runs(level("day at 01:30"), month, local(10, 2)) == 10
    assert expected_runs(Level(name="x", kind="files"), month) == 0


def test_report_figures_match_known_runs(world) -> None:
    policies, state = world
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    report = build_report(
        load_policies(policies), mlog, "acme", "2026-10", datetime(2026, 11, 20, tzinfo=UTC)
    )
    assert report.as_of == local(1, 0, month=11)
    ws1, ws2, srv1 = report.machines
    assert [(lv.name, lv.scheduled, lv.succeeded, lv.partial, lv.failed) for lv in ws1.levels] == [
        ("nightly", 31, 29, 0, 1),
        ("drill", 1, 1, 0, 0),
    ]
    assert [(lv.scheduled, lv.succeeded) for lv in ws2.levels] == [(31, 20)]
    assert [(lv.name, lv.scheduled, lv.succeeded, lv.partial) for lv in srv1.levels] == [
        ("nightly", 31, 31, 0),
        ("weekly-image", 4, 3, 1),
        ("drill", 1, 0, 0),
    ]
    # Backup slots 31 + 31 + 31 + 4 = 97, covered 29 + 20 + 31 + 3 = 83.
    assert (report.scheduled, report.covered, report.coverage_pct) == (97, 83, 85.6)
    assert report.without_passed_drill == ["ws-2", "srv-1"]
    assert report.oldest_last_good is ws2
    # ws-2's last good backup ended 20 Oct 01:40; the month ends 1 Nov 00:00.
    assert ws2.last_good_age == timedelta(days=11, hours=22, minutes=20)
    assert report.devices == {"server": 1, "workstation": 2}
    # RPO at each failure: the age of the newest good backup when the failed run started.
    assert [(f.view["action"], f.rpo) for f in ws1.failures] == [
        ("backup", timedelta(hours=23, minutes=50))
    ]
    assert [(f.view["action"], f.view["state"], f.rpo) for f in srv1.failures] == [
        ("verify", "failed", timedelta(hours=3, minutes=20)),
        ("backup", "partial", timedelta(hours=1, minutes=20)),
    ]
    assert [(f.view["action"], f.rpo) for f in ws2.failures] == [
        ("restore", timedelta(days=5, hours=7, minutes=20))
    ]
    # Measured recovery against the 4 h SLA.
    assert [(t.seconds, t.within_sla) for t in ws1.drills + ws1.restores] == [
        (1800.0, True),
        (5400.0, True),
    ]
    assert [(t.seconds, t.within_sla) for t in ws2.restores] == [(18000.0, False)]
    assert [(t.seconds, t.within_sla) for t in srv1.drills] == [(600.0, True)]
    # The calendar: worst outcome per local day.
    assert ws1.days[local(10, 0).date()] == "failed"
    assert ws1.days[local(11, 0).date()] == "none"
    assert ws2.days[local(25, 0).date()] == "failed"
    assert ws2.days[local(26, 0).date()] == "none"
    assert srv1.days[local(1, 0).date()] == "failed"
    assert srv1.days[local(25, 0).date()] == "partial"
    assert sum(1 for m in report.machines for o in m.days.values() if o == "succeeded") == 78
    nas, offsite = report.repositories
    assert (nas.added_in_month, nas.added_to_date, nas.protected, nas.snapshots_in_month) == (
        80_000,
        81_000,
        150_000,
        80,
    )
    assert (offsite.added_in_month, offsite.protected, offsite.snapshots_in_month) == (
        40_000_000,
        64 * MIB,
        4,
    )


def test_report_markdown_and_csv_carry_the_figures(env, capsys) -> None:
    capsys.readouterr()
    assert main(["report", "--client", "acme", "--month", "2026-10"]) == 0
    md = capsys.readouterr().out
    assert "- **Backup coverage:** 85.6 % (83 of 97 scheduled backups succeeded)" in md
    assert "- **Machines without a passed drill this month:** 2: ws-2, srv-1" in md
    assert "- **Oldest last good backup:** ws-2: 11 d 22 h" in md
    assert "- **Restores and drills within the restore SLA:** 3 of 4 within 4 h 00 min" in md
    assert "- **Devices:** 1 server(s), 2 workstation(s)" in md
    assert (
        "| deleted project folder | Ms. Li | Wang Lei | succeeded | 1 h 30 min | within SLA |" in md
    )
    assert (
        "does not boot | Mr. Zhao | Chen Jing | failed: a disk or folder was not found | "
        "5 h 00 min | OVER SLA" in md
    )
    assert "ws-1          ooooooooo" + "X." + "o" * 20 in md
    assert "Maintenance log verified intact" in md
    assert main(["report", "--client", "acme", "--month", "2026-10", "--format", "csv"]) == 0
    levels_csv, machines_csv, anchor = capsys.readouterr().out.split("\n\n")
    rows = list(csv.DictReader(io.StringIO(levels_csv)))
    assert [(r["machine"], r["level"], r["scheduled"], r["succeeded"]) for r in rows] == [
        ("ws-1", "nightly", "31", "29"),
        ("ws-1", "drill", "1", "1"),
        ("ws-2", "nightly", "31", "20"),
        ("srv-1", "nightly", "31", "31"),
        ("srv-1", "weekly-image", "4", "3"),
        ("srv-1", "drill", "1", "0"),
    ]
    assert rows[5]["drills_failed"] == "1"
    # Every figure is the level's own: the columns sum to the client's totals.
    for r in rows:
        parts = sum(int(r[k]) for k in ("succeeded", "partial", "failed", "missed"))
        assert int(r["scheduled"]) == parts
    backup = [r for r in rows if r["kind"] != "verify"]
    assert sum(int(r["scheduled"]) for r in backup) == 97
    assert sum(int(r["succeeded"]) for r in backup) == 83
    assert sum(int(r["restores"]) for r in rows) == 2
    assert sum(int(r["bytes_added"]) for r in rows) == 80_000 + 40_000_000
    machines = list(csv.DictReader(io.StringIO(machines_csv)))
    assert [m["machine"] for m in machines] == ["ws-1", "ws-2", "srv-1"]
    assert machines[1]["last_good_age_h"] == "286.3"
    assert machines[1]["slowest_restore_s"] == "18000.0" and machines[0]["restore_sla_s"] == "14400"
    assert anchor.lstrip('"').startswith("# Maintenance log verified intact")
    assert "log head " in anchor


def test_report_refuses_unknown_client_and_bad_month(env, capsys) -> None:
    assert main(["report", "--client", "nobody", "--month", "2026-10"]) == 2
    assert "no client 'nobody'" in capsys.readouterr().err
    assert main(["report", "--client", "acme", "--month", "October"]) == 2
    assert "use YYYY-MM" in capsys.readouterr().err


@pytest.fixture(scope="module")
def html_report(world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "acme-2026-10.html"
    env = {"RECOVERD_POLICIES": str(world[0]), "RECOVERD_STATE": str(world[1])}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["report", "--client", "acme", "--month", "2026-10", "-o", str(out)]) == 0
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out


def test_report_html_is_self_contained(html_report: Path) -> None:
    html = html_report.read_text()
    assert html.startswith("<!DOCTYPE html>")
    # No external resource of any kind: nothing to fetch when mailed, archived or printed.
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<script|<link""", html, re.I)
    assert html.count('<rect class="day') == 3 * 31


def chromium(*args: str, tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Debian's chromium headless, isolated from the network and any profile."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.skipif(
    not shutil.which(CHROMIUM),
    reason=f"{CHROMIUM} is absent: install Debian's chromium package (setup.sh lists it)",
)
def test_report_html_renders_in_headless_chromium(html_report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    shot = chromium(
        f"--screenshot={png}", "--window-size=1400,2000", html_report.as_uri(), tmp=tmp_path
    )
    assert png.exists(), shot.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    dom = chromium("--dump-dom", html_report.as_uri(), tmp=tmp_path).stdout
    # The grid as the browser built it: one rect per machine and day, coloured by outcome.
    cells = re.findall(
        r'<rect class="day (\w+)"[^>]*data-machine="([^"]+)"[^>]*data-day="([^"]+)"', dom
    )
    assert len(cells) == 93
    assert {m for _, m, _ in cells} == {"ws-1", "ws-2", "srv-1"}
    outcome = {(m, d): o for o, m, d in cells}
    assert outcome[("ws-1", "2026-10-10")] == "failed"
    assert outcome[("srv-1", "2026-10-25")] == "partial"
    assert outcome[("ws-2", "2026-10-31")] == "none"
    assert re.search(r'id="coverage">85\.6 % \(83 of 97 scheduled backups succeeded\)', dom)
    assert re.search(r'id="no-drill">2: ws-2, srv-1<', dom)
    assert re.search(r'id="sla">3 of 4 within 4 h 00 min<', dom)
    assert re.search(r'id="devices">1 server\(s\), 2 workstation\(s\)<', dom)
    assert "OVER SLA" in dom


def test_report_json_figures(env, capsys) -> None:
    capsys.readouterr()
    assert main(["report", "--client", "acme", "--month", "2026-10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["coverage_pct"], data["scheduled"], data["covered"]) == (85.6, 97, 83)
    assert data["without_passed_drill"] == ["ws-2", "srv-1"]
    ws2 = data["machines"][1]
    assert ws2["failures"][0]["rpo_s"] == (5 * 24 + 7) * 3600 + 20 * 60
    assert ws2["restores"][0]["within_sla"] is False


# --- The integrity line: what it checked, and that it fails loudly ----------------------------


@pytest.fixture
def own_copy(world: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the report's state directory, set in the environment."""
    state = tmp_path / "state"
    shutil.copytree(world[1], state)
    monkeypatch.setenv("RECOVERD_POLICIES", str(world[0]))
    monkeypatch.setenv("RECOVERD_STATE", str(state))
    return state


def integrity(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["report", "--client", "acme", "--month", "2026-10"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "aintenance log" in x]
    return line


def entries_of(state: Path, where: str) -> list[int]:
    db = sqlite3.connect(state / "maintenance.db")
    seqs = [s for (s,) in db.execute(f"SELECT seq FROM entries WHERE {where} ORDER BY seq")]
    db.close()
    return seqs


def test_report_integrity_line_names_the_entries_it_checked(own_copy, capsys) -> None:
    # September's run (entries 1-2) is before the month; October starts at entry 3 (the
    # first dated 1 October or later in Shanghai), and the check runs to the end of the log.
    last = entries_of(own_copy, "1")[-1]
    line = integrity(capsys)
    assert line.startswith(
        f"Maintenance log verified intact when this report was made: entries 3..{last}, "
        "from 2026-10-01 to the end of the log, hash-chained and signed; signed head: log head "
    )


def test_report_integrity_line_warns_of_an_edited_entry_in_the_month(own_copy, capsys) -> None:
    (seq,) = entries_of(own_copy, "type = 'end' AND body LIKE '%host unreachable%'")
    db = sqlite3.connect(own_copy / "maintenance.db")
    with db:
        db.execute(
            "UPDATE entries SET body = replace(body, 'failed', 'succeeded') WHERE seq = ?", (seq,)
        )
    db.close()
    line = integrity(capsys)
    assert line.startswith("WARNING — maintenance log NOT intact: ")
    assert f"entry {seq} (end of run" in line and "edited" in line


def test_report_integrity_line_warns_of_a_rechained_forgery_after_the_month(
    own_copy, capsys
) -> None:
    """An entry of November rewritten, and the chain re-hashed to the end without the key:
    every link holds, only the last signature fails; the forged entry is named."""
    first_november = entries_of(own_copy, "at >= '2026-10-31T16:00:00+00:00'")[0]
    db = sqlite3.connect(own_copy / "maintenance.db")
    (prev,) = db.execute(
        "SELECT prev_hash FROM entries WHERE seq = ?", (first_november,)
    ).fetchone()
    rows = db.execute(
        "SELECT seq, run_id, type, at, body FROM entries WHERE seq >= ? ORDER BY seq",
        (first_november,),
    ).fetchall()
    with db:
        for seq, run_id, type_, at, body in rows:
            data = json.loads(body)
            if seq == first_november:
                data["engineer"] = "Nobody"
            digest = entry_hash(seq, run_id, type_, at, data, prev)
            db.execute(
                "UPDATE entries SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (canonical(data), prev, digest, seq),
            )
            prev = digest
    db.close()
    line = integrity(capsys)
    assert line.startswith("WARNING — maintenance log NOT intact: ")
    assert f"entry {first_november} (start of run" in line and "recomputed hash" in line


def test_report_finds_last_good_backup_from_before_the_month(tmp_path: Path) -> None:
    """A machine whose backups all failed in October: its last good backup, the recovery
    point of each failure and the protected size come from September, found by a lookup."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.toml").write_text(POLICY)
    mlog = MaintenanceLog(tmp_path / "state", PluginHost()["log_sinks"])
    nightly(mlog, "srv-1", local(20, 1, 30, month=9))
    nightly(mlog, "srv-1", local(28, 1, 30, month=9))
    nightly(mlog, "srv-1", local(29, 1, 30, month=9), "failed")
    nightly(mlog, "ws-1", local(2, 1, 30))
    nightly(mlog, "srv-1", local(3, 1, 30), "failed")
    report = build_report(
        load_policies(tmp_path / "policies"), mlog, "acme", "2026-10", local(4, 0)
    )
    srv1 = report.machines[2]
    assert srv1.last_good and srv1.last_good["started_at"] == local(28, 1, 30, 9).astimezone(
        UTC
    ).isoformat(timespec="seconds")
    assert srv1.last_good_age == timedelta(days=5, hours=22, minutes=20)
    assert [f.rpo for f in srv1.failures] == [timedelta(days=4, hours=23, minutes=50)]
    nas = report.repositories[0]
    assert (nas.added_in_month, nas.added_to_date, nas.protected) == (1000, 3000, 100_000)
    assert report.machines[1].last_good is None  # ws-2: never backed up
    mlog.close()


def test_report_queries_read_the_month_and_one_client_not_the_whole_log(world) -> None:
    """The query plans: the month's runs by date, each last-good lookup backwards through
    the machine's own entries (no sort of its history), the bytes added through the
    client's rows only."""
    db = sqlite3.connect(world[1] / "maintenance.db")

    def plan(query: str, *params: object) -> str:
        return str(db.execute("EXPLAIN QUERY PLAN " + query, params).fetchall())

    month = plan(sqlite_store.RUNS_STARTED, "acme", "2026-09-30", "2026-10-31")
    assert "entries_type_at (type=? AND at>? AND at<?)" in month
    lookup = plan(sqlite_store.LAST_GOOD_BACKUP, "acme", "ws-1", "2026-09-30", None, None)
    assert "entries_machine (client=? AND machine=?)" in lookup and "TEMP B-TREE" not in lookup
    added = plan(sqlite_store.BYTES_ADDED, "acme", "2026-09-30")
    assert "entries_machine (client=?)" in added
    db.close()
