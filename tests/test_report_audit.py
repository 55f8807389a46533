"""Report figures an auditor can add up: slots counted once from onboarding, runs covering only
their own slot, retried failures, copies' storage, the CSV's sums, acceptances, plain reasons,
and the HTML summary (verdicts, trends) as headless Chromium renders it.

The month is November 2026 in Asia/Shanghai (UTC+8): 30 days.

- pc-1 is onboarded on the 5th (`since`); a trial run on the 2nd does not make earlier slots
  count. No run on the 7th. On the 9th the 01:00 run fails (restic's wrapper in the error) and
  is retried into success at 01:30.
- pc-2's first run was 31 October 23:30 (a month boundary: 15:30 UTC); nothing ran on the 1st
  to the 3rd, then four manual runs on the 4th (they cover the 4th's slot only), then nightly.
  A restore on the 30th must not count as its last good backup.
- srv-1 backs up nightly to nas and copies to cloud (level offsite) every morning.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_report import CHROMIUM, chromium

from recoverd.actions.report import build_report
from recoverd.cli import main
from recoverd.log import MaintenanceLog
from recoverd.plugins import PluginHost
from recoverd.policy import load_policies

SHANGHAI = ZoneInfo("Asia/Shanghai")
WRAPPER = (
    "restic backup failed: sh -c 'IFS= read -r RESTIC_PASSWORD && export RESTIC_PASSWORD && "
    "exec restic backup --json /home' exited 1: Fatal: unable to open config file"
)

POLICY = """\
[client]
name = "Beta Logistics"
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
restore_sla = "4h"

[repositories.nas]
url = "/srv/restic/beta"
password = "env:BETA_RESTIC_PASSWORD"

[repositories.cloud]
url = "/srv/restic/beta-cloud"
password = "env:BETA_RESTIC_PASSWORD"

[templates.pc]
address = "127.0.0.1"
port = 1
offline = "fail"   # unreachable: a failed run, not a skipped one
[[templates.pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
every = "day at 01:00"

[machines.pc-1]
template = "pc"
since = 2026-11-05

[machines.pc-2]
template = "pc"

[machines.srv-1]
address = "127.0.0.1"
role = "server"
[[machines.srv-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/srv"]
every = "day at 02:00"
[[machines.srv-1.levels]]
name = "offsite"
kind = "copy"
of = "nightly"
to = "cloud"
every = "day at 04:00"
"""


def local(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


def run(
    mlog: MaintenanceLog,
    machine: str,
    start: datetime,
    state: str = "succeeded",
    *,
    level: str = "nightly",
    action: str = "backup",
    trigger: str = "schedule",
    error: str | None = None,
) -> str:
    repository = {"offsite": "cloud"}.get(level, "nas")
    run_id = mlog.start(
        client="beta",
        machine=machine,
        level=level,
        kind={"offsite": "copy"}.get(level, "files"),
        action=action,
        trigger=trigger,
        repository=repository,
        at=start,
    )
    good = state == "succeeded"
    stats = {"bytes_added": 1000, "bytes_processed": 50_000} if good and action == "backup" else {}
    mlog.finish(
        run_id,
        state,
        snapshot=f"{machine[:3]}{start:%m%d%H%M}" if good and action != "restore" else None,
        stats=stats,
        error=error,
        at=start + timedelta(minutes=10),
    )
    return run_id


def fill(state_dir: Path) -> dict[str, str]:
    mlog = MaintenanceLog(state_dir, PluginHost()["log_sinks"])
    ids = {}
    run(mlog, "pc-1", local(2, 10), trigger="manual")  # a trial before onboarding
    for day in range(5, 31):
        if day == 7:
            continue
        if day == 9:
            run(mlog, "pc-1", local(9, 1), "failed", error=WRAPPER)
            ids["retry"] = run(mlog, "pc-1", local(9, 1, 30))
            continue
        run(mlog, "pc-1", local(day, 1))
    run(mlog, "pc-2", local(31, 23, 30, month=10))
    for hour in (10, 11, 12, 13):
        run(mlog, "pc-2", local(4, hour), trigger="manual")
    for day in range(5, 31):
        run(mlog, "pc-2", local(day, 1))
    ids["restore"] = run(mlog, "pc-2", local(30, 15), action="restore", trigger="manual")
    for day in range(1, 31):
        run(mlog, "srv-1", local(day, 2))
        run(mlog, "srv-1", local(day, 4), level="offsite", action="copy")
    # After the month: must not count.
    run(mlog, "pc-2", local(1, 1, month=12))
    mlog.close()
    return ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("report-audit")
    (root / "policies").mkdir()
    (root / "policies" / "beta.toml").write_text(POLICY)
    ids = fill(root / "state")
    return root / "policies", root / "state", ids


@pytest.fixture
def env(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    state = tmp_path / "state"
    shutil.copytree(world[1], state)
    monkeypatch.setenv("RECOVERD_POLICIES", str(world[0]))
    monkeypatch.setenv("RECOVERD_STATE", str(state))
    return state, world[2]


def report_of(world):
    mlog = MaintenanceLog(world[1], PluginHost()["log_sinks"])
    try:
        return build_report(
            load_policies(world[0]), mlog, "beta", "2026-11", datetime(2026, 12, 10, tzinfo=UTC)
        )
    finally:
        mlog.close()


def figures(machine) -> list[tuple]:
    return [
        (lv.name, lv.scheduled, lv.succeeded, lv.partial, lv.failed, lv.missed, lv.runs, lv.retried)
        for lv in machine.levels
    ]


def test_slots_count_from_onboarding_and_runs_cover_only_their_slot(world) -> None:
    report = report_of(world)
    pc1, pc2, srv1 = report.machines
    # pc-1: slots from its `since` day (5th..30th: 26), not from the trial run on the 2nd.
    assert pc1.onboarded == local(5, 0)
    assert figures(pc1) == [("nightly", 26, 25, 0, 0, 1, 27, 1)]
    # pc-2: first run 31 Oct; four manual runs on the 4th cover only the 4th's slot.
    assert pc2.onboarded == local(31, 23, 30, month=10)
    assert figures(pc2) == [("nightly", 30, 27, 0, 0, 3, 30, 0)]
    assert figures(srv1) == [
        ("nightly", 30, 30, 0, 0, 0, 30, 0),
        ("offsite", 30, 30, 0, 0, 0, 30, 0),
    ]
    assert (report.scheduled, report.covered, report.coverage_pct) == (116, 112, 96.6)
    assert report.retried == 1


def test_a_failure_retried_into_success_is_a_warning_not_a_red_day(world) -> None:
    report = report_of(world)
    pc1 = report.machines[0]
    assert pc1.days[local(9, 0).date()] == "retried"
    assert pc1.days[local(7, 0).date()] == "none"
    assert pc1.days[local(2, 0).date()] == "succeeded"
    assert not any(o == "failed" for m in report.machines for o in m.days.values())
    (failure,) = pc1.failures
    assert failure.retried_by is not None and failure.retried_by["id"] == world[2]["retry"]
    # The customer reads what went wrong, never restic's password wrapper.
    assert failure.reason == "the backup storage could not be opened"


def test_verdicts_trends_storage_and_last_good(world) -> None:
    report = report_of(world)
    pc1, pc2, srv1 = report.machines
    assert pc1.verdict == ("attention", "1 of 26 scheduled backups missing")
    assert pc2.verdict == ("attention", "3 of 30 scheduled backups missing")
    assert srv1.verdict == ("good", "every scheduled backup done")
    # The report's last good backup of pc-2 is its backup of the 30th, not the restore.
    assert pc2.last_good["action"] == "backup"
    assert pc2.last_good["finished_at"] == local(30, 1, 10).astimezone(UTC).isoformat()
    months = [t.month for t in report.trends]
    assert months[0] == "2025-12" and months[-2:] == ["2026-10", "2026-11"] and len(months) == 12
    october, november = report.trends[-2:]
    assert (october.good, october.bad, october.stored) == (1, 0, 1000)
    assert (november.good, november.bad, november.success_pct, november.stored) == (
        86,
        1,
        98.9,
        87_000,
    )
    assert report.trends[0].success_pct is None
    nas, cloud = sorted(report.repositories, key=lambda r: r.name != "nas")
    assert (nas.added_in_month, nas.protected, nas.snapshots_in_month) == (86_000, 150_000, 86)
    # The copy repository holds the copied level's newest snapshot; restic copy tells no size.
    assert (cloud.added_in_month, cloud.protected, cloud.snapshots_in_month) == (None, 50_000, 30)


def test_machines_last_good_counts_backups_not_restores(env, capsys) -> None:
    capsys.readouterr()
    assert main(["machines", "--json"]) == 0
    pc2 = [json.loads(x) for x in capsys.readouterr().out.splitlines()][1]
    assert pc2["machine"] == "pc-2"
    assert main(["backup", "pc-2", "--json"]) == 1  # unreachable: a failed run now
    capsys.readouterr()
    assert main(["machines", "--json"]) == 0
    pc2 = [json.loads(x) for x in capsys.readouterr().out.splitlines()][1]
    # Its newest backup (1 December), not the later-finishing restore of 30 November.
    assert pc2["last_good"]["nightly"] == local(1, 1, 10, month=12).astimezone(UTC).isoformat()


def test_csv_rows_sum_and_acceptances_and_plain_reasons_in_every_format(
    env, capsys, tmp_path
) -> None:
    _, ids = env
    assert main(["accept", ids["retry"], "--by", "Ms. Li", "--note", "checked on site"]) == 0
    out = {}
    for fmt in ("md", "csv", "html"):
        path = tmp_path / f"beta.{fmt}"
        assert main(["report", "--client", "beta", "--month", "2026-11", "-o", str(path)]) == 0
        out[fmt] = path.read_text()
        assert "sh -c" not in out[fmt] and "RESTIC_PASSWORD" not in out[fmt], fmt
        assert "the backup storage could not be opened" in out[fmt] or fmt == "csv"
    levels, machines, _anchor = out["csv"].split("\n\n")
    rows = list(csv.DictReader(io.StringIO(levels)))
    assert len(rows) == 4  # one per machine and level
    total = {k: sum(int(r[k]) for r in rows) for k in ("scheduled", "succeeded", "missed", "runs")}
    assert total == {"scheduled": 116, "succeeded": 112, "missed": 4, "runs": 117}
    assert sum(int(r["bytes_added"]) for r in rows) == 86_000
    assert [r["machine"] for r in csv.DictReader(io.StringIO(machines))] == [
        "pc-1",
        "pc-2",
        "srv-1",
    ]
    # The acceptance: who, when, the note, with the run.
    assert re.search(
        rf"\| {ids['retry']} \| backup \| nightly \| Ms\. Li \| 2026-1\d-\d\d", out["md"]
    )
    assert "checked on site" in out["md"] and "checked on site" in out["html"]
    assert "retried: succeeded 2026-11-09 01:30" in out["md"]
    # The technical detail stays in the log.
    capsys.readouterr()
    assert main(["log", "--machine", "pc-1", "--json"]) == 0
    errors = [json.loads(x)["error"] for x in capsys.readouterr().out.splitlines()]
    assert WRAPPER in errors
    assert main(["log", "--machine", "pc-1"]) == 0
    assert "Ms. Li" in capsys.readouterr().out


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is absent")
def test_summary_and_trends_render_in_headless_chromium_and_print(env, tmp_path, capsys) -> None:
    html = tmp_path / "beta.html"
    assert main(["report", "--client", "beta", "--month", "2026-11", "-o", str(html)]) == 0
    png = tmp_path / "beta-report.png"
    shot = chromium(f"--screenshot={png}", "--window-size=1280,1600", html.as_uri(), tmp=tmp_path)
    assert png.exists() and png.read_bytes().startswith(b"\x89PNG"), shot.stderr[-2000:]
    pdf = tmp_path / "beta-report.pdf"
    printed = chromium(
        f"--print-to-pdf={pdf}", "--no-pdf-header-footer", html.as_uri(), tmp=tmp_path
    )
    assert pdf.exists() and pdf.read_bytes().startswith(b"%PDF"), printed.stderr[-2000:]
    with capsys.disabled():
        print(f"\nreport screenshot: {png}\nreport as printed: {pdf}")
    dom = chromium("--dump-dom", html.as_uri(), tmp=tmp_path).stdout
    verdicts = re.findall(r'<td>([\w-]+)</td><td class="v-([\w-]+)">', dom)
    assert verdicts == [("pc-1", "attention"), ("pc-2", "attention"), ("srv-1", "good")]
    chart = dom[dom.index('id="trend-success"') : dom.index('id="trend-storage"')]
    bars = re.findall(r'<rect class="trend"[^>]*data-month="([\d-]+)" data-value="([\d.]+)"', chart)
    success = dict(bars)
    assert success == {"2026-10": "100.0", "2026-11": "98.9"}
    assert re.search(r'id="coverage">96\.6 % \(112 of 116 scheduled backups succeeded\)', dom)
    assert re.search(r'id="retried">1<', dom)
    assert re.search(r'id="head">entry \d+, hash [0-9a-f]{16}', dom)
    assert 'class="day retried"' in dom


def test_since_is_a_date(tmp_path) -> None:
    from recoverd.errors import PolicyError

    (tmp_path / "beta.toml").write_text(POLICY.replace("since = 2026-11-05", 'since = "5 Nov"'))
    with pytest.raises(PolicyError, match=r"machines\.pc-1\.since.*expected a date"):
        load_policies(tmp_path)
    (tmp_path / "beta.toml").write_text(
        POLICY.replace("since = 2026-11-05", 'since = "2026-11-05"')
    )
    assert str(load_policies(tmp_path).clients["beta"].machines["pc-1"].since) == "2026-11-05"
