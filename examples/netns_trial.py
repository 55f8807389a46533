"""A realistic client on one Linux machine: three hosts in network namespaces, run as root.

Each host is a network namespace of its own with its own OpenSSH server on its own address
(10.231.0.0/24, a bridge that exists only on this machine and only while the trial runs): a
workstation, a file server, and a NAS that holds the sftp repository. The hosts share this
machine's file system, so each one's data lives under the trial's folder. Nothing leaves the
machine; everything is removed at the end, also after a failure.

The trial does what a new engineer does: write the policy (no host keys), `check`, `enroll`
each machine (the NAS's host key and the machine's key are missing at first, as on a real
site, and `enroll` says how to fix it), back up, list restore points (with the offsite copy),
break the workstation and restore it in place, run a drill, and end with the log's
verification and the month's report. Every step's command and output is printed; the trial
stops at the first step that does not end as expected.

    python examples/netns_trial.py [--keep]      # as root; --keep leaves the folder
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BRIDGE = "rdtrial0"
PREFIX = "10.231.0"
HOSTS = {"ws-1": 11, "srv-1": 12, "nas": 20}
RECOVERD = [sys.executable, "-m", "recoverd"]


def sh(*argv: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


@contextlib.contextmanager
def network(root: Path) -> Iterator[dict[str, str]]:
    """Create the bridge and one namespace per host, each with sshd; yield host -> address."""
    made: list[str] = []
    sshd: list[subprocess.Popen[bytes]] = []
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{PREFIX}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        addresses = {}
        for host, last in HOSTS.items():
            ns, outside = f"rdtrial-{host}", f"rdv{last}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", outside, "master", BRIDGE, "up")
            for argv in (
                ["ip", "addr", "add", f"{PREFIX}.{last}/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"],
                ["ip", "link", "set", "lo", "up"],
            ):
                sh("ip", "netns", "exec", ns, *argv)
            addresses[host] = f"{PREFIX}.{last}"
            sshd.append(start_sshd(root / "hosts" / host, ns, addresses[host], root))
        yield addresses
    finally:
        for process in sshd:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.poll() is None:
                process.kill()
        for ns in made:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)


def start_sshd(home: Path, ns: str, address: str, root: Path) -> subprocess.Popen[bytes]:
    """Start an sshd for one host in its namespace; its commands find the host's own ``ssh``
    (which reads the host's ssh configuration, as ~/.ssh/config would) first on PATH."""
    home.mkdir(parents=True)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "host_key"))
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (home / "ssh_config").write_text("")
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F '{home}/ssh_config' \"$@\"\n")
    (bin_dir / "ssh").chmod(0o755)
    config = home / "sshd_config"
    config.write_text(
        f"ListenAddress {address}\nPort 22\nHostKey {home}/host_key\n"
        f"AuthorizedKeysFile {root}/controller_key.pub {home}/authorized_keys\n"
        f"PidFile {home}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
        f'SetEnv "PATH={bin_dir}:{os.environ["PATH"]}"\n'
    )
    os.makedirs("/run/sshd", exist_ok=True)
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "/usr/sbin/sshd",
            "-D",
            "-f",
            str(config),
            "-E",
            str(home / "log"),
        ]
    )
    for _ in range(100):
        if (home / "sshd.pid").exists():
            return process
        time.sleep(0.05)
    raise RuntimeError(f"sshd of {ns} did not start: {(home / 'log').read_text()}")


class Trial:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "RECOVERD_POLICIES": str(root / "policies"),
            "RECOVERD_STATE": str(root / "state"),
            "TRIAL_RESTIC_PASSWORD": "trial-Pa55word",
        }

    def step(self, title: str, *argv: str, expect: int = 0, stdin: str | None = None) -> str:
        print(f"\n## {title}\n$ recoverd {' '.join(argv)}", flush=True)
        done = subprocess.run(
            [*RECOVERD, *argv], env=self.env, capture_output=True, text=True, input=stdin
        )
        print((done.stdout + done.stderr).rstrip())
        print(f"(exit {done.returncode})")
        if done.returncode != expect:
            raise SystemExit(f"trial stopped: {title}: exit {done.returncode}, expected {expect}")
        return done.stdout + done.stderr


def write_policy(root: Path, addresses: dict[str, str]) -> None:
    (root / "policies").mkdir()
    key = root / "controller_key"
    (root / "policies" / "acme.toml").write_text(
        f"""# Acme Trading Co.: a workstation and a file server, a NAS for the repository.
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
restore_sla = "4h"

[repositories.nas]
# restic on each machine reaches the NAS itself, with the machine's own ssh
url = "sftp:root@{addresses["nas"]}:{root}/nas/restic"
password = "env:TRIAL_RESTIC_PASSWORD"

[repositories.offsite]
url = "{root}/offsite"                 # the rotated disk in the office
password = "env:TRIAL_RESTIC_PASSWORD"

[templates.pc]
user = "root"
identity = "{key}"
[[templates.pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{root}/hosts/ws-1/data"]
every = "day at 01:30"
keep = {{ daily = 7, weekly = 4 }}
[[templates.pc.levels]]
name = "drill"
kind = "verify"
of = "nightly"
sample = "50%"
every = "month on day 1 at 05:00"

[machines.ws-1]
template = "pc"
address = "{addresses["ws-1"]}"

[machines.srv-1]
template = "pc"
address = "{addresses["srv-1"]}"
role = "server"
[[machines.srv-1.levels]]
name = "nightly"                      # the template's level, this server's folders
paths = ["{root}/hosts/srv-1/data"]
[[machines.srv-1.levels]]
name = "offsite"
kind = "copy"
of = "nightly"
to = "offsite"
every = "month on day 1 at 04:00"
"""
    )


def make_data(root: Path) -> dict[str, str]:
    """Give each machine files, a symlink and a private file; return sha256 by path."""
    sums = {}
    for host in ("ws-1", "srv-1"):
        data = root / "hosts" / host / "data"
        (data / "docs").mkdir(parents=True)
        for i in range(30):
            path = data / "docs" / f"report-{i:02d}.txt"
            path.write_bytes(os.urandom(2000 + i))
            sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        (data / "latest").symlink_to("docs/report-00.txt")
        secret = data / "private.key"
        secret.write_text("not for everyone\n")
        secret.chmod(0o600)
        sums[str(secret)] = hashlib.sha256(secret.read_bytes()).hexdigest()
    return sums


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the trial's folder")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the trial makes network namespaces: run it as root", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="rdtrial-"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "controller_key"))
    try:
        with network(root) as addresses:
            return run(root, addresses)
    finally:
        if args.keep:
            print(f"\nthe trial's files: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(root: Path, addresses: dict[str, str]) -> int:
    write_policy(root, addresses)
    sums = make_data(root)
    (root / "nas").mkdir()
    t = Trial(root)
    t.step("check: no host key is pinned yet", "check")
    out = t.step(
        "enroll ws-1: the NAS's key is unknown to the workstation",
        "enroll",
        "ws-1",
        "--yes",
        expect=1,
    )
    assert "ssh-keyscan" in out, "enroll names the fix"
    # The fix enroll printed, done on the machines: the NAS's host key in each machine's
    # known_hosts (here: each host's ssh configuration), and each machine's key on the NAS.
    nas_key = (root / "hosts" / "nas" / "host_key.pub").read_text().split()[:2]
    for host in ("ws-1", "srv-1"):
        home = root / "hosts" / host
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "id_ed25519"))
        (home / "known_hosts").write_text(f"{addresses['nas']} {' '.join(nas_key)}\n")
        (home / "ssh_config").write_text(
            f"Host {addresses['nas']}\n  IdentityFile {home}/id_ed25519\n"
            f"  UserKnownHostsFile {home}/known_hosts\n  BatchMode yes\n"
        )
        with open(root / "hosts" / "nas" / "authorized_keys", "a") as keys:
            keys.write((home / "id_ed25519.pub").read_text())
    t.step(
        "enroll ws-1 again: the repository is created from the machine", "enroll", "ws-1", "--yes"
    )
    t.step("enroll srv-1", "enroll", "srv-1", "--yes")
    t.step("check --online: everything reachable", "check", "--online")
    t.step("backup ws-1", "backup", "ws-1")
    t.step("backup srv-1 (its offsite copy runs: never done yet)", "backup", "srv-1")
    t.step("snapshots of srv-1, the copy level included", "snapshots", "srv-1")
    # Break the workstation: a deleted file, a scrambled one, a folder swapped for a link.
    data = root / "hosts" / "ws-1" / "data"
    (data / "docs" / "report-03.txt").unlink()
    (data / "docs" / "report-04.txt").write_bytes(b"scrambled")
    untouched = data / "docs" / "report-05.txt"
    ctime = untouched.stat().st_ctime_ns
    t.step("restore ws-1 in place", "restore", "ws-1", "--yes", "--symptom", "files lost")
    for path, digest in sums.items():
        if "/ws-1/" in path:
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, path
    assert untouched.stat().st_ctime_ns == ctime, "an unchanged file was rewritten"
    assert (data / "latest").is_symlink()
    print("restored bytes equal the originals; unchanged files untouched; the link is back")
    t.step("drill ws-1", "verify", "ws-1")
    t.step("status", "status", expect=1)  # the never-run levels of the schedule are due
    t.step("log", "log")
    t.step("log verify", "log", "verify")
    month = time.strftime("%Y-%m")
    t.step(
        "the month's report",
        "report",
        "--client",
        "acme",
        "--month",
        month,
        "-o",
        str(root / "report.html"),
    )
    print("\ntrial finished: every step ended as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
