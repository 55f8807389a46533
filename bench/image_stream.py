"""Benchmark: a 3 GiB disk image through the SSH channel, both ways, across SSH rekeys.

Too slow for the test suite's budget (about a minute or more on 2 cores), so it is a script:

    .venv/bin/python bench/image_stream.py [--gib 3] [--via controller|machine]

It starts a throwaway sshd on 127.0.0.1, makes a sparse file of N GiB with a little data in it
(raw: no file system), images it with ``via = "controller"`` (the stream is pulled through the
SSH channel and stored by restic on the controller), restores it with ``--device`` onto a second
sparse file (the stream is pushed back through the channel), and checks the restored bytes.
paramiko re-keys every 512 MiB or so, so each direction crosses several rekeys. The baselines
in the same run: what a user would type with OpenSSH,
``ssh -i KEY -p PORT root@127.0.0.1 cat DISK | restic backup --stdin`` (the ratio, target
<= 1.15x), and restic storing the same file from a local pipe, without SSH.

``--quick`` images 512 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD

PASSWORD = "bench-password-not-secret"
TARGET = 1.15

POLICY = """\
[client]
name = "Bench"
[repositories.local]
url = "{root}/repo"
password = "env:BENCH_PASSWORD"
[machines.bench]
{ssh}
restore = "image"
[[machines.bench.levels]]
name = "image"
kind = "image"
repository = "local"
device = "{root}/disk.raw"
via = "{via}"
"""


def make_disk(path: Path, size: int) -> str:
    """Create a sparse file of ``size`` bytes with 1 MiB of random data every 256 MiB; return
    its sha256."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset in range(0, size, 256 << 20):
            f.seek(offset)
            f.write(os.urandom(1 << 20))
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def last_run(root: Path) -> dict:
    """Return the newest run of the bench's maintenance log, as ``recoverd log --json``."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["--state", str(root / "state"), "log", "--json", "--policies", str(root)])
    return json.loads(printed.getvalue().splitlines()[-1])


def baseline(root: Path, disk: Path) -> float:
    """Seconds restic takes to store ``disk`` from a local pipe into a fresh repository."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(root / "base")}
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    started = time.monotonic()
    with disk.open("rb") as source:
        subprocess.run(
            ["restic", "backup", "-q", "--stdin", "--stdin-filename", "disk.raw"],
            stdin=source,
            env=env,
            check=True,
            capture_output=True,
        )
    return time.monotonic() - started


def ssh_baseline(root: Path, disk: Path, sshd: ThrowawaySSHD) -> float:
    """Seconds ``ssh HOST cat DISK | restic backup --stdin`` takes with OpenSSH into a fresh
    repository on the controller."""
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(root / "by-hand")}
    subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
    ssh = [
        "ssh", "-i", sshd.client_key, "-p", str(sshd.port), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "root@127.0.0.1", "cat", str(disk),
    ]  # fmt: skip
    started = time.monotonic()
    with subprocess.Popen(ssh, stdout=subprocess.PIPE) as cat:
        subprocess.run(
            ["restic", "backup", "-q", "--stdin", "--stdin-filename", "disk.raw"],
            stdin=cat.stdout,
            env=env,
            check=True,
            capture_output=True,
        )
    if cat.returncode != 0:
        raise RuntimeError(f"ssh cat failed with exit {cat.returncode}")
    return time.monotonic() - started


def run(gib: float, via: str) -> int:
    size = int(gib * (1 << 30))
    os.environ["BENCH_PASSWORD"] = PASSWORD
    with tempfile.TemporaryDirectory(prefix="recoverd-bench-") as tmp, ThrowawaySSHD() as sshd:
        root = Path(tmp)
        (root / "acme.toml").write_text(
            POLICY.format(
                root=root,
                ssh=sshd.policy_lines,
                via=via,
            )
        )
        disk = root / "disk.raw"
        expected = make_disk(disk, size)
        common = ["--policies", str(root), "--state", str(root / "state")]
        # The repository exists already, as the baselines' do (a nightly image's does too).
        env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(root / "repo")}
        subprocess.run(["restic", "init", "-q"], env=env, check=True, capture_output=True)

        started = time.monotonic()
        code = main(["backup", "bench", *common])
        image_s = time.monotonic() - started
        image = last_run(root)
        if code != 0 or image["stats"]["image_sha256"] != expected:
            print(f"image FAILED (exit {code}): {image.get('error')}")
            return 1

        target = root / "restored.raw"
        with target.open("wb") as f:
            f.truncate(size)
        started = time.monotonic()
        code = main(["restore", "bench", "--device", str(target), "--yes", *common])
        restore_s = time.monotonic() - started
        restored = last_run(root)
        if code != 0:
            print(f"restore FAILED (exit {code}): {restored.get('error')}")
            return 1
        base_s = baseline(root, disk)
        ssh_s = ssh_baseline(root, disk, sshd)

    mib = size / (1 << 20)
    print(f"stream of {gib:g} GiB (sparse, raw), via {via}, throwaway sshd on 127.0.0.1")
    print(f"  image:                  {image_s:7.1f} s  {mib / image_s:7.1f} MiB/s (whole command)")
    print(
        f"    stream (recorded):    {image['stats']['duration_s']:7.1f} s  "
        f"{image['stats']['throughput_bytes_s'] / (1 << 20):7.1f} MiB/s"
    )
    print(
        f"  restore + verify:       {restore_s:7.1f} s  {mib / restore_s:7.1f} MiB/s "
        f"(verification {restored['stats']['verification']})"
    )
    print(f"  baseline, local pipe:   {base_s:7.1f} s  {mib / base_s:7.1f} MiB/s (restic alone)")
    print(f"  baseline, ssh cat | restic backup --stdin: {ssh_s:7.1f} s  {mib / ssh_s:7.1f} MiB/s")
    ratio = image_s / ssh_s
    print(f"  image overhead against ssh cat | restic: {ratio:.2f}x (target <= {TARGET:.2f}x)")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=3.0, help="size of the image (default 3)")
    parser.add_argument(
        "--via",
        choices=("controller", "machine"),
        default="controller",
        help="where restic runs (default controller: the stream crosses the SSH channel)",
    )
    parser.add_argument("--quick", action="store_true", help="a 512 MiB image")
    args = parser.parse_args()
    sys.exit(run(0.5 if args.quick else args.gib, args.via))
