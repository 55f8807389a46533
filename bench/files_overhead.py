"""Benchmark: recoverd's overhead over restic run by hand, for a files level over SSH.

    .venv/bin/python bench/files_overhead.py [--mib 1024] [--files 20000] [--quick]

On a throwaway sshd on 127.0.0.1 it makes a tree of FILES files of random data (MIB MiB in
all) and two fresh repositories, then times, each against its baseline in the same invocation:

1. ``recoverd backup`` (first run, then an incremental run with nothing changed) against the
   same ``restic backup`` typed by hand over OpenSSH:
   ``ssh -i KEY -p PORT root@127.0.0.1 restic -r REPO --password-file FILE backup ...``
   (the password file is on the machine, as a hand-run would have it). Target <= 1.05x.
2. ``recoverd restore --to DIR --yes`` (the one-click restore to a folder; it verifies every
   file against the snapshot by sha256) against ``restic restore latest --target DIR`` by hand,
   without and with restic's own ``--verify``. recoverd records its restore and verification
   times separately (stats ``restore_s``, ``verify_s``): both are shown. Target <= 1.05x.

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
address = "127.0.0.1"
port = {port}
user = "root"
identity = "{identity}"
host_key = "{host_key}"
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


def run(mib: int, files: int) -> int:
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
                port=sshd.port,
                identity=sshd.client_key,
                host_key=sshd.host_key_line,
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

        restored, by_hand_target = root / "restored", root / "restored-by-hand"
        ours_s, code, run_view = recoverd(["restore", "bench", "--to", str(restored), "--yes"])
        stats = run_view["stats"]
        base_s, base_code = timed([*by_hand, "restore", "latest", "--target", str(by_hand_target)])
        shutil.rmtree(by_hand_target, ignore_errors=True)
        verify_s, verify_code = timed(
            [*by_hand, "restore", "latest", "--verify", "--target", str(by_hand_target)]
        )
        ok &= code == 0 and base_code == 0 and verify_code == 0
        ok &= stats.get("verification") == "passed"
        lines.append(
            ratio_line("restore, restore step only (restore_s)", stats["restore_s"], base_s)
        )
        lines.append(ratio_line("restore + sha256 of every file vs --verify", ours_s, verify_s))
        lines.append(ratio_line("restore + verification vs plain restore", ours_s, base_s))
        ok &= stats["restore_s"] / base_s <= TARGET
        print("\n".join(lines))
        print(
            f"  recoverd restore: restore {stats['restore_s']:.2f}s, verification "
            f"{stats['verify_s']:.2f}s ({stats['files_verified']} files, "
            f"{stats['verification']}), whole command {ours_s:.2f}s"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="128 MiB in 2,500 files")
    args = parser.parse_args()
    sys.exit(run(128, 2500) if args.quick else run(args.mib, args.files))
