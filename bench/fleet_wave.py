"""Benchmark: one nightly wave of the daemon over a fleet, at several parallelisms.

    .venv/bin/python bench/fleet_wave.py [--machines 200] [--parallel 8 16 32] [--quick]

Each machine has its own small tree (20 files, 80 KiB) and its own restic repository, reached
over one throwaway sshd on 127.0.0.1 (the machines differ by name, tree and repository; the
network path is the same). Every wave runs in a fresh process (so that peak RSS is the wave's
own) with a fresh state directory and fresh repositories: the daemon's first tick finds every
machine's nightly level due and the wave ends when every run has ended. Measured per wave:

- controller CPU per run: user + system time of the controller process (``getrusage`` of the
  process itself: restic and sshd are not its children), divided by the runs;
- peak RSS of the controller process;
- wall time, against the sum of the runs' restic times divided by the parallelism (what a
  perfect scheduler that only ran restic would take).

Targets: < 20 ms controller CPU per run, RSS < 300 MB. The repositories are copies of one
initialised repository (``restic init`` costs a second of CPU each; the copies share a
repository id, which only lets restic's content-addressed cache be shared between them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from recoverd.actions.daemon import Daemon
from recoverd.controller import Controller
from recoverd.log import RunFilter
from recoverd.testing import ThrowawaySSHD

PASSWORD = "bench-password-not-secret"
CPU_TARGET_S = 0.020
RSS_TARGET_MB = 300


def write_fleet(root: Path, sshd: ThrowawaySSHD, machines: int) -> None:
    """Write one client's policy with ``machines`` machines, their trees and repositories."""
    template = root / "template-repo"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(template)}
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    text = '[client]\nname = "Fleet"\ntimezone = "UTC"\n'
    for m in range(machines):
        tree = root / "trees" / f"m{m}"
        tree.mkdir(parents=True)
        for f in range(20):
            (tree / f"file-{f}.dat").write_bytes(os.urandom(4096))
        shutil.copytree(template, root / "repos" / f"m{m}")
        text += (
            f'[repositories.r{m}]\nurl = "{root / "repos" / f"m{m}"}"\n'
            'password = "env:BENCH_PASSWORD"\n'
            f'[machines.m{m}]\naddress = "127.0.0.1"\nport = {sshd.port}\nuser = "root"\n'
            f'identity = "{sshd.client_key}"\nhost_key = "{sshd.host_key_line}"\n'
            f'[[machines.m{m}.levels]]\nname = "nightly"\nkind = "files"\n'
            f'repository = "r{m}"\npaths = ["{tree}"]\nevery = "day at 01:30"\n'
        )
    (root / "policies").mkdir()
    (root / "policies" / "fleet.toml").write_text(text)


def wave(root: Path, parallel: int) -> dict[str, float]:
    """Run one wave in this process; return its figures."""
    os.environ["BENCH_PASSWORD"] = PASSWORD
    ctl = Controller(root / "policies", root / "state")
    machines = len(ctl.policies.machines())
    daemon = Daemon(ctl, max_parallel=parallel)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    serving = threading.Thread(target=daemon.serve)  # the daemon's own loop, as in production
    serving.start()
    while daemon.started < machines:
        time.sleep(0.05)
    daemon.wait_idle()
    wall = time.monotonic() - started
    daemon.request_stop()
    serving.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    runs = ctl.log.runs(RunFilter(action="backup"))
    restic_s = sum((r["stats"] or {}).get("duration_s") or 0 for r in runs)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "parallel": parallel,
        "runs": len(runs),
        "succeeded": sum(r["state"] == "succeeded" for r in runs),
        "wall_s": wall,
        "restic_sum_s": restic_s,
        "ideal_s": restic_s / parallel,
        "cpu_per_run_ms": 1000 * cpu / max(1, len(runs)),
        "peak_rss_mb": after.ru_maxrss / 1024,
    }


def run(machines: int, parallels: list[int]) -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="recoverd-fleet-") as tmp, ThrowawaySSHD() as sshd:
        base = Path(tmp) / "base"
        started = time.monotonic()
        write_fleet(base, sshd, machines)
        print(f"fleet: {machines} machines, one repository each, built in "
              f"{time.monotonic() - started:.0f} s")  # fmt: skip
        print(
            f"{'max_parallel':>12} {'runs ok':>9} {'wall':>8} {'restic sum/par':>15} "
            f"{'wall/ideal':>11} {'CPU/run':>9} {'peak RSS':>9}"
        )
        for parallel in parallels:
            root = Path(tmp) / f"wave-{parallel}"
            shutil.copytree(base, root, symlinks=True)
            # Paths in the policy point into the copy.
            policy = root / "policies" / "fleet.toml"
            policy.write_text(policy.read_text().replace(str(base), str(root)))
            done = subprocess.run(
                [sys.executable, __file__, "--wave", str(root), "--parallel", str(parallel)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                print(f"wave at {parallel} FAILED:\n{done.stderr[-2000:]}")
                return 1
            f = json.loads(done.stdout.splitlines()[-1])
            met = f["cpu_per_run_ms"] < CPU_TARGET_S * 1000 and f["peak_rss_mb"] < RSS_TARGET_MB
            failed |= not met or f["succeeded"] != machines
            print(
                f"{parallel:>12} {f['succeeded']:>4}/{f['runs']:<4} {f['wall_s']:7.1f}s "
                f"{f['ideal_s']:14.1f}s {f['wall_s'] / f['ideal_s']:10.2f}x "
                f"{f['cpu_per_run_ms']:7.1f}ms {f['peak_rss_mb']:6.0f} MB"
                + ("" if met else "  MISSED")
            )
            shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--parallel", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--quick", action="store_true", help="40 machines")
    parser.add_argument("--wave", type=Path, help=argparse.SUPPRESS)  # one wave, in a child
    args = parser.parse_args()
    if args.wave:
        print(json.dumps(wave(args.wave, args.parallel[0])))
        sys.exit(0)
    sys.exit(run(40 if args.quick else args.machines, args.parallel))
