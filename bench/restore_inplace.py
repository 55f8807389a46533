"""Benchmark: recoverd's files restore against restic restore typed by hand, over SSH.

    .venv/bin/python bench/restore_inplace.py [--mib 1024] [--files 20000] [--damage 1]
        [--repeat 3] [--restic PATH] [--quick]

On a throwaway sshd on 127.0.0.1 it makes a tree of FILES files of random data (MIB MiB in
all), backs it up with ``recoverd backup``, then times, each against its baseline in the same
invocation, the median of ``--repeat`` rounds (every other round in the opposite order):

1. **In place, DAMAGE % of the files damaged or deleted** (half each): ``recoverd restore
   --in-place --yes`` (plan, restore of what differs, ``--verify restic``) against the whole
   snapshot restored in place by hand, ``ssh ... restic restore latest --target /``. Target
   <= 0.25x.
2. **Into an empty folder**: ``recoverd restore --to DIR --yes`` against ``ssh ... restic
   restore latest --verify --target DIR``. Target <= 1.05x.

``--restic PATH`` picks the restic on both sides (its folder goes first on PATH before the
sshd starts; the sshd hands PATH to what it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD

PASSWORD = "bench-password-not-secret"
IN_PLACE_TARGET = 0.25
EMPTY_TARGET = 1.05
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


def make_tree(tree: Path, total: int, files: int) -> list[Path]:
    """Fill ``tree`` with ``files`` files of random data, ``total`` bytes in all, 100 per
    folder; return their paths."""
    size, paths = total // files, []
    for i in range(files):
        folder = tree / f"d{i // 100:04}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i:05}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def damage(paths: list[Path], percent: float, seed: int) -> int:
    """Overwrite the first bytes of half of ``percent`` % of ``paths`` and delete the other
    half; return how many were touched."""
    chosen = random.Random(seed).sample(paths, max(2, int(len(paths) * percent / 100)))
    for n, path in enumerate(chosen):
        if n % 2:
            path.unlink(missing_ok=True)
        elif path.exists():
            with path.open("r+b") as f:
                f.write(os.urandom(64))
    return len(chosen)


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
        raise SystemExit(f"{argv[-6:]} failed with status {done.returncode}")
    return took


def recoverd(argv: list[str]) -> tuple[float, dict]:
    """Return (seconds, newest run) of ``recoverd ARGV`` run in this process."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    took = time.perf_counter() - started
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["log", "--json"])
    view = json.loads(printed.getvalue().splitlines()[-1])
    if code != 0 or view["state"] != "succeeded":
        raise SystemExit(f"recoverd {' '.join(argv)}: exit {code}, {view.get('error')}")
    return took, view


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def ratio_line(label: str, ours: float, base: float, target: float) -> tuple[str, bool]:
    ratio = ours / base
    met = ratio <= target
    mark = "ok" if met else "MISSED"
    line = f"  {label:<52} {ours:8.2f}s vs {base:8.2f}s   {ratio:.2f}x (<= {target}) {mark}"
    return line, met


def run(mib: int, files: int, percent: float, repeat: int) -> int:
    with tempfile.TemporaryDirectory(prefix="recoverd-bench-") as tmp, ThrowawaySSHD() as sshd:
        root = Path(tmp)
        tree, repo = root / "tree", root / "repo"
        paths = make_tree(tree, mib << 20, files)
        password_file = root / "password"  # on "the machine": the same host here
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        policies = root / "policies"
        policies.mkdir()
        (policies / "bench.toml").write_text(
            POLICY.format(repo=repo, ssh=sshd.policy_lines, tree=tree)
        )
        os.environ.update(
            BENCH_PASSWORD=PASSWORD,
            RECOVERD_POLICIES=str(policies),
            RECOVERD_STATE=str(root / "state"),
        )
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
        by_hand = [
            "ssh", "-i", sshd.client_key, "-p", str(sshd.port),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes", "root@127.0.0.1",
            "restic", "-r", str(repo), "--password-file", str(password_file),
        ]  # fmt: skip
        recoverd(["backup", "bench"])
        version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
        print(f"{version.strip()}; {files:,} files, {mib} MiB of random data, over a throwaway")
        print(
            f"sshd on 127.0.0.1 (recoverd: paramiko; by hand: OpenSSH ssh); load {os.getloadavg()}"
        )
        names = ("ours-in", "hand-in", "hand-whole", "ours-to", "hand-to")
        times: dict[str, list[float]] = {name: [] for name in names}
        outside: dict[str, list[float]] = {"in": [], "to": []}
        touched, written = 0, 0
        target = root / "restored"

        def empty_target() -> None:
            shutil.rmtree(target, ignore_errors=True)
            subprocess.run(["sync"], check=True)

        steps = {
            "ours-in": lambda: recoverd(["restore", "bench", "--in-place", "--yes"]),
            "hand-in": lambda: timed([*by_hand, "restore", "latest", "--target", "/"]),
            "hand-whole": lambda: timed([*by_hand, "restore", "latest", "--target", str(target)]),
            "ours-to": lambda: recoverd(["restore", "bench", "--to", str(target), "--yes"]),
            "hand-to": lambda: timed(
                [*by_hand, "restore", "latest", "--verify", "--target", str(target)]
            ),
        }
        for turn in range(repeat):
            # Every other round in the opposite order, so that a drift in the load is shared.
            for n, name in enumerate(names[:: -1 if turn % 2 else 1]):
                if name.endswith("-in"):
                    touched = damage(paths, percent, seed=turn * 10 + n)
                    subprocess.run(["sync"], check=True)
                else:
                    empty_target()
                done = steps[name]()
                if isinstance(done, tuple):
                    took, view = done
                    outside[name[-2:]].append(took - view["stats"]["duration_s"])
                    if name == "ours-in":
                        written = view["stats"]["files_restored"]
                else:
                    took = done
                times[name].append(took)
        t = {name: median(values) for name, values in times.items()}
        lines = [f"median of {repeat} round(s):"]
        line, ok_in = ratio_line(
            f"in place, {touched} of {files} damaged/deleted ({written} written)",
            t["ours-in"],
            t["hand-whole"],
            IN_PLACE_TARGET,
        )
        lines += [line, "    against the whole snapshot by hand into an empty folder"]
        line, _ = ratio_line(
            "  the same against restic restore --target / by hand",
            t["ours-in"],
            t["hand-in"],
            IN_PLACE_TARGET,
        )
        lines.append(line.replace("MISSED", "(information)").replace(" ok", " (information)"))
        line, ok_to = ratio_line(
            "into an empty folder vs restic restore --verify",
            t["ours-to"],
            t["hand-to"],
            EMPTY_TARGET,
        )
        lines.append(line)
        lines.append(
            "  recoverd outside restore+verify (connect, plan, record), median: "
            f"in place {median(outside['in']):.2f}s, into a folder {median(outside['to']):.2f}s"
        )
        lines.append(f"  load average after: {os.getloadavg()}")
        print("\n".join(lines))
        shutil.rmtree(target, ignore_errors=True)
        return 0 if ok_in and ok_to else 1


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--damage", type=float, default=1.0, help="percent of files damaged")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--restic", help="the restic to run on both sides (default: PATH's)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 2,000 files, 1 round")
    args = parser.parse_args()
    if args.restic:
        os.environ["PATH"] = f"{Path(args.restic).resolve().parent}:{os.environ['PATH']}"
    if args.quick:
        args.mib, args.files, args.repeat = 64, 2000, 1
    return run(args.mib, args.files, args.damage, args.repeat)


if __name__ == "__main__":
    sys.exit(cli())
