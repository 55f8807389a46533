"""Benchmark: recoverd's overhead over restic run by hand, for a files level over SSH.

    .venv/bin/python bench/files_overhead.py [--mib 1024] [--files 20000] [--repeat 3] [--quick]

On a throwaway sshd on 127.0.0.1 it makes a tree of FILES files of random data (MIB MiB in
all) and two fresh repositories, then times, each against its baseline in the same invocation:

1. ``recoverd backup`` (first run, then an incremental run with nothing changed) against the
   same ``restic backup`` typed by hand over OpenSSH:
   ``ssh -i KEY -p PORT root@127.0.0.1 restic -r REPO --password-file FILE backup ...``
   (the password file is on the machine, as a hand-run would have it). Target <= 1.05x.
2. ``recoverd restore --to DIR --yes`` (the one-click restore to a folder, plan included)
   against ``restic restore latest --target DIR`` by hand, with and without restic's own
   ``--verify``; both of recoverd's verification modes: ``--verify restic`` (the default:
   ``restic restore --verify`` and a size check of every file) and ``--verify full`` (the
   snapshot read again with ``restic dump`` and compared by sha256). Target <= 1.05x for the
   default against ``restic restore --verify`` by hand. ``--repeat`` rounds (default 3), each
   side into an empty folder, every other round in the opposite order; the median of each is
   compared.

The tree is read once before timing so both sides find it in the page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD

PASSWORD = "bench-password-not-secret"
TARGET = 1.05
POLICY = """\
[client]
name = "Bench"
[repositories.nas]
url = "{repo}"
password = "env:BENCH_PASSWORD"
[machines.bench]
{ssh}
[[machines.bench.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{tree}"]
every = "day at 01:30"
"""


def make_tree(tree: Path, total: int, files: int) -> None:
    """Fill ``tree`` with ``files`` files of random data, ``total`` bytes in all, 100 per
    directory."""
    size = total // files
    for i in range(files):
        folder = tree / f"d{i // 100:04}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05}.bin").write_bytes(os.urandom(size))


def timed(argv: list[str]) -> tuple[float, int]:
    """Return (seconds, exit code) of a command, its output dropped."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
    return took, done.returncode


def recoverd(argv: list[str]) -> tuple[float, int, dict]:
    """Return (seconds, exit code, newest run) of ``recoverd ARGV`` run in this process."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    took = time.perf_counter() - started
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["log", "--json"])
    return took, code, json.loads(printed.getvalue().splitlines()[-1])


def ratio_line(label: str, ours: float, base: float) -> str:
    ratio = ours / base
    mark = "ok" if ratio <= TARGET else "MISSED"
    return f"  {label:<44} {ours:8.2f}s vs {base:8.2f}s   overhead {ratio:.2f}x  {mark}"


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def compare_restores(root: Path, by_hand: list[str], repeat: int) -> tuple[list[str], bool]:
    """Time ``recoverd restore --to DIR --yes`` (``--verify restic``, the default, and
    ``--verify full``) and ``restic restore latest --target DIR`` by hand with and without
    ``--verify``, ``repeat`` rounds, each into an empty folder; return the report lines (the
    median of each) and whether everything passed and the target row met."""
    target = root / "restored"
    runs: dict[str, list[float]] = {"hand": [], "hand-verify": [], "restic": [], "full": []}
    views: dict[str, dict] = {}
    outside_run: list[float] = []  # the plan, connecting, the record: the command minus its run
    ok = True
    for turn in range(repeat):
        # Every other round in the opposite order, so that a drift in the load is shared.
        for name in list(runs)[:: -1 if turn % 2 else 1]:
            shutil.rmtree(target, ignore_errors=True)
            if name.startswith("hand"):
                verify = ["--verify"] if name == "hand-verify" else []
                took, code = timed(
                    [*by_hand, "restore", "latest", *verify, "--target", str(target)]
                )
                ok &= code == 0
            else:
                argv = ["restore", "bench", "--to", str(target), "--yes", "--verify", name]
                took, code, views[name] = recoverd(argv)
                stats = views[name]["stats"]
                ok &= code == 0 and stats.get("verification") == "passed"
                ok &= stats.get("verify") == name
                if name == "restic":
                    outside_run.append(took - stats["duration_s"])
            runs[name].append(took)
    t = {name: median(times) for name, times in runs.items()}
    ok &= t["restic"] / t["hand-verify"] <= TARGET
    restic_stats, full_stats = views["restic"]["stats"], views["full"]["stats"]
    return [
        f"restore, median of {repeat} round(s), each side into an empty folder:",
        ratio_line("whole command (--verify restic) vs --verify", t["restic"], t["hand-verify"]),
        ratio_line("whole command (--verify restic) vs plain", t["restic"], t["hand"]),
        ratio_line("whole command (--verify full) vs --verify", t["full"], t["hand-verify"]),
        ratio_line("whole command (--verify full) vs plain", t["full"], t["hand"]),
        f"  last --verify restic run: restore+check {restic_stats['restore_s']:.2f}s, "
        f"verification {restic_stats['verify_s']:.2f}s, {restic_stats['files_verified']} "
        f"files; plan and the rest (median) {median(outside_run):.2f}s",
        f"  last --verify full run:   restore {full_stats['restore_s']:.2f}s, "
        f"verification {full_stats['verify_s']:.2f}s, {full_stats['files_verified']} files",
    ], ok


def run(mib: int, files: int, repeat: int) -> int:
    with tempfile.TemporaryDirectory(prefix="recoverd-bench-") as tmp, ThrowawaySSHD() as sshd:
        root = Path(tmp)
        tree, ours, theirs = root / "tree", root / "repo-recoverd", root / "repo-hand"
        make_tree(tree, mib << 20, files)
        password_file = root / "password"  # on "the machine": the same host here
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        for repo in (ours, theirs):
            subprocess.run(
                ["restic", "-r", str(repo), "--password-file", str(password_file), "init"],
                check=True,
                capture_output=True,
            )
        subprocess.run(["tar", "-cf", "/dev/null", str(tree)], check=True)  # warm the cache
        policies = root / "policies"
        policies.mkdir()
        (policies / "bench.toml").write_text(
            POLICY.format(
                repo=ours,
                ssh=sshd.policy_lines,
                tree=tree,
            )
        )
        os.environ.update(
            BENCH_PASSWORD=PASSWORD,
            RECOVERD_POLICIES=str(policies),
            RECOVERD_STATE=str(root / "state"),
        )
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
        ssh = [
            "ssh", "-i", sshd.client_key, "-p", str(sshd.port),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes", "root@127.0.0.1",
        ]  # fmt: skip
        by_hand = [
            *ssh, "restic", "-r", str(theirs), "--password-file", str(password_file),
        ]  # fmt: skip
        backup = [
            "backup", "--json", "--host", "bench",
            "--tag", "recoverd,client=bench,machine=bench,level=nightly", "--", str(tree),
        ]  # fmt: skip

        print(
            f"files level: {files:,} files, {mib} MiB of random data, restic over a throwaway "
            "sshd on 127.0.0.1 (recoverd: paramiko; by hand: OpenSSH ssh)"
        )
        lines, ok = [], True
        for label in ("backup, first run", "backup, incremental (nothing changed)"):
            ours_s, code, run_view = recoverd(["backup", "bench"])
            base_s, base_code = timed([*by_hand, *backup])
            ok &= code == 0 and base_code == 0 and run_view["state"] == "succeeded"
            lines.append(ratio_line(label, ours_s, base_s))
            ok &= ours_s / base_s <= TARGET

        lines.append("")
        restore_lines, restore_ok = compare_restores(root, by_hand, repeat)
        ok &= restore_ok
        print("\n".join(lines + restore_lines))
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="128 MiB in 2,500 files")
    parser.add_argument("--repeat", type=int, default=3, help="restore rounds (median)")
    args = parser.parse_args()
    size = (128, 2500) if args.quick else (args.mib, args.files)
    sys.exit(run(*size, args.repeat))
