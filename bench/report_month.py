"""Measure `recoverd report` on a large log: MACHINES machines with a nightly backup for a year.

Usage: python bench/report_month.py [MACHINES]   (default 50: 50 x 365 runs = 36,500 entries)
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recoverd.actions.report import build_report
from recoverd.actions.report_render import render
from recoverd.log import MaintenanceLog
from recoverd.plugins import PluginHost
from recoverd.policy import load_policies

POLICY_HEAD = """\
[client]
name = "Bench"
timezone = "Asia/Shanghai"
restore_sla = "4h"
[repositories.nas]
url = "/srv/restic/bench"
password = "env:BENCH_PASSWORD"
"""
MACHINE = """
[machines.m{i}]
address = "127.0.0.1"
[[machines.m{i}.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
every = "day at 01:30"
"""


def main() -> None:
    machines = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "policies").mkdir()
        text = POLICY_HEAD + "".join(MACHINE.format(i=i) for i in range(machines))
        (root / "policies" / "bench.toml").write_text(text)
        mlog = MaintenanceLog(root / "state", PluginHost()["log_sinks"])
        first = datetime(2025, 11, 1, 17, 30, tzinfo=UTC)
        started = time.perf_counter()
        with mlog.store.transaction():  # one transaction: filling is not what is measured
            for day in range(365):
                for i in range(machines):
                    at = first + timedelta(days=day)
                    run = mlog.start(
                        client="bench",
                        machine=f"m{i}",
                        level="nightly",
                        kind="files",
                        action="backup",
                        repository="nas",
                        at=at,
                    )
                    mlog.finish(
                        run,
                        "succeeded",
                        snapshot="s",
                        at=at + timedelta(minutes=5),
                        stats={"bytes_added": 1000, "bytes_processed": 10**6},
                    )
        filled = time.perf_counter() - started
        policies = load_policies(root / "policies")
        started = time.perf_counter()
        report = build_report(policies, mlog, "bench", "2026-10", datetime.now(UTC))
        built = time.perf_counter() - started
        started = time.perf_counter()
        html = render(report, "html")
        rendered = time.perf_counter() - started
        started = time.perf_counter()
        verdict = mlog.verify()
        verified = time.perf_counter() - started
    entries = machines * 365 * 2
    print(f"filled {entries} entries in {filled:.1f} s")
    print(f"report figures: {built:.2f} s; html: {rendered:.2f} s ({len(html) // 1024} KiB)")
    print(f"log verify: {verified:.2f} s, intact={verdict.intact}")


if __name__ == "__main__":
    main()
