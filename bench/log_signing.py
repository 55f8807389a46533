"""Measure what signing costs per maintenance-log entry, and how long `log verify` takes.

Usage: python bench/log_signing.py [RUNS]   (default 500 runs = 1000 entries)

Writes RUNS start+end pairs into a fresh state directory twice — once as shipped (signature and
signed head per entry), once with signing switched off in-process — and verifies the signed log.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from recoverd.log import MaintenanceLog
from recoverd.plugins import PluginHost


def write_runs(state: Path, runs: int) -> float:
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    started = time.perf_counter()
    for _ in range(runs):
        run_id = mlog.start(client="acme", machine="ws-1", level="n", kind="files", action="backup")
        mlog.finish(run_id, "succeeded", stats={"files_new": 1})
    elapsed = time.perf_counter() - started
    mlog.close()
    return elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        signed = write_runs(Path(tmp) / "signed", runs)
        with (
            mock.patch("recoverd.log.signing.LogKey.sign_entry", return_value=""),
            mock.patch("recoverd.log.signing.LogKey.write_head"),
        ):
            plain = write_runs(Path(tmp) / "plain", runs)
        mlog = MaintenanceLog(Path(tmp) / "signed", PluginHost()["log_sinks"])
        started = time.perf_counter()
        verdict = mlog.verify()
        checked = time.perf_counter() - started
    entries = 2 * runs
    print(f"write, signed:   {signed / entries * 1e3:.2f} ms/entry")
    print(f"write, unsigned: {plain / entries * 1e3:.2f} ms/entry (same store, no signing)")
    print(f"verify: {entries} entries in {checked:.2f} s, intact={verdict.intact}")


if __name__ == "__main__":
    main()
