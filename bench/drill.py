"""Benchmark: restore drills of a tree of many files, sampled and whole, over SSH.

Too slow for the test suite's budget, so it is a script:

    .venv/bin/python bench/drill.py [--files 2000] [--mib 200]

It starts a throwaway sshd on 127.0.0.1, writes a tree of N files (random bytes, M MiB in all),
backs it up, then runs ``recoverd verify`` for ``sample = "10%"`` and ``sample = "all"`` and
prints each drill's figures: time to restore, bytes restored, files verified. The baseline in
the same run is a plain ``restic restore`` of the whole snapshot on this host, without recoverd
or SSH. Baseline and drills run ``--repeat`` times, interleaved; the medians are compared.
``drill-10pct-here`` is the 10% drill with ``where = "controller"``: the same work without SSH.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD

PASSWORD = "bench-password-not-secret"

POLICY = """\
[client]
name = "Bench"
[repositories.local]
url = "{root}/repo"
password = "env:BENCH_PASSWORD"
[machines.bench]
{ssh}
[[machines.bench.levels]]
name = "nightly"
kind = "files"
repository = "local"
paths = ["{root}/tree"]
[[machines.bench.levels]]
name = "drill-10pct"
kind = "verify"
of = "nightly"
sample = "10%"
[[machines.bench.levels]]
name = "drill-all"
kind = "verify"
of = "nightly"
sample = "all"
[[machines.bench.levels]]
name = "drill-10pct-here"
kind = "verify"
of = "nightly"
sample = "10%"
where = "controller"
"""


def recoverd(root: Path, *argv: str) -> list[dict]:
    """Run recoverd with ``--json``; return the JSON lines it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([*argv, "--json", "--policies", str(root / "policies"), "--state", str(root / "st")])
    return [json.loads(line) for line in out.getvalue().splitlines()]


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["BENCH_PASSWORD"] = PASSWORD
    with tempfile.TemporaryDirectory() as tmp, ThrowawaySSHD() as sshd:
        root = Path(tmp)
        size = args.mib * 1024 * 1024 // args.files
        for i in range(args.files):
            path = root / "tree" / f"d{i % 50:02d}" / f"file-{i:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size))
        (root / "policies").mkdir()
        (root / "policies" / "bench.toml").write_text(
            POLICY.format(
                root=root,
                ssh=sshd.policy_lines,
            )
        )
        started = time.monotonic()
        (backup,) = recoverd(root, "backup", "bench")
        print(f"backup: {backup['state']} in {time.monotonic() - started:.1f} s")
        env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
        levels = ("drill-10pct", "drill-all", "drill-10pct-here")
        figures: dict[str, list[float]] = {"baseline": [], **{lv: [] for lv in levels}}
        # Interleaved and repeated: on a shared machine the load changes from minute to minute,
        # and a ratio is only fair between runs made close together.
        for attempt in range(args.repeat):
            started = time.monotonic()
            subprocess.run(
                ["restic", "-r", str(root / "repo"), "restore", "latest", "--target",
                 str(root / f"r{attempt}")],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            figures["baseline"].append(time.monotonic() - started)
            shutil.rmtree(root / f"r{attempt}")
            for level in levels:
                started = time.monotonic()
                (run,) = recoverd(root, "verify", "bench", "--level", level)
                whole = time.monotonic() - started
                stats = run["stats"]
                figures[level].append(stats["time_to_restore_s"])
                print(
                    f"{level}: {run['state']}, {stats['files_verified']} of "
                    f"{stats['files_in_snapshot']} files, "
                    f"{stats['bytes_restored'] / 2**20:.0f} MiB restored; time to restore "
                    f"{stats['time_to_restore_s']} s, whole drill {whole:.1f} s (with restic "
                    f"check {stats.get('check_subset')} and cleanup)"
                )
        base = statistics.median(figures["baseline"])
        print(
            f"baseline: restic restore of the whole snapshot, locally: median {base:.2f} s "
            f"of {', '.join(f'{x:.2f}' for x in figures['baseline'])}"
        )
        for level in levels:
            mid = statistics.median(figures[level])
            print(f"{level}: time to restore median {mid:.2f} s = {mid / base:.2f}x the baseline")


if __name__ == "__main__":
    main_bench()
