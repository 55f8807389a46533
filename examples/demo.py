"""The recoverd demo: back up a workstation, break it, restore it in one command, prove it.

Everything runs on this machine: a throwaway OpenSSH server on 127.0.0.1 stands for the client
workstation, a directory under .demo/ for its files, an ext4 image file (made with
`mkfs.ext4 -d`, nothing is mounted) for its system disk, and a directory for the backup
repository. The demo drives the real `recoverd` command, exactly as an engineer would type it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from recoverd.testing import ThrowawaySSHD

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
RECOVERD = Path(sys.executable).with_name("recoverd")

POLICY = """\
# The demo client: one workstation reached over SSH, nightly file backups into a local repository.
[client]
name = "Demo Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"
restore_sla = "4h"

[repositories.local]
url = "{repo}"
password = "file:{password_file}"

[machines.ws-demo]
transport = "ssh"
{ssh}
role = "workstation"
asset_tag = "DEMO-PC-001"
mac = "52:54:00:12:34:56"

[[machines.ws-demo.levels]]
name = "weekly-image"
kind = "image"
repository = "local"
device = "{disk_image}"
every = "sunday at 03:00"
keep = {{ last = 4 }}

[[machines.ws-demo.levels]]
name = "drill"
kind = "verify"
of = "nightly"
every = "month on day 1 at 05:00"
sample = "all"

[[machines.ws-demo.levels]]
name = "nightly"
kind = "files"
repository = "local"
paths = ["{disk}/home", "{disk}/etc"]
exclude = ["*.tmp", "{disk}/home/*/.cache"]
every = "day at 01:30"
keep = {{ last = 3, daily = 7, weekly = 4, monthly = 12 }}
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def recoverd(*args: str, ok: tuple[int, ...] = (0,)) -> None:
    """Run the real recoverd command and show it as the user would type it."""
    print(f"$ recoverd {shlex.join(args)}", flush=True)
    status = subprocess.run([str(RECOVERD), *args], check=False).returncode
    if status not in ok:
        sys.exit(f"demo: `recoverd {shlex.join(args)}` exited with {status}")


def last_run(action: str) -> dict:
    """Return the newest run of ``action`` in the maintenance log."""
    out = subprocess.run(
        [str(RECOVERD), "log", "--json"], check=True, capture_output=True, text=True
    ).stdout
    return [r for r in map(json.loads, out.splitlines()) if r["action"] == action][-1]


def shell(*argv: str) -> int:
    """Run a system tool, show it, and return its exit status."""
    print(f"$ {shlex.join(argv)}", flush=True)
    return subprocess.run(argv, check=False).returncode


@contextlib.contextmanager
def damaged_packs(repo: Path) -> Iterator[None]:
    """Flip 64 bytes in the middle of every pack file of ``repo``; put them back afterwards."""
    packs = {p: p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()}
    print(f"(flipping 64 bytes in each of the {len(packs)} pack files under {repo / 'data'})")
    for pack, data in packs.items():
        middle = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        pack.chmod(0o600)
        pack.write_bytes(data[:middle] + flipped + data[middle + 64 :])
    try:
        yield
    finally:
        for pack, data in packs.items():
            pack.write_bytes(data)


def make_system_disk(image: Path, scratch: Path) -> None:
    """Make a 64 MiB ext4 file system image holding a few system files (no mount needed)."""
    (scratch / "etc").mkdir(parents=True)
    (scratch / "etc" / "os-release").write_text('NAME="Demo Linux"\nVERSION="12"\n')
    (scratch / "boot").mkdir()
    (scratch / "boot" / "vmlinuz").write_bytes(os.urandom(2_000_000))
    (scratch / "srv").mkdir()
    (scratch / "srv" / "账本.txt").write_text("ledger 2026\n")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(scratch), str(image), "64M"],
        check=True,
        capture_output=True,
    )


def make_workstation(disk: Path) -> None:
    """Fill a directory with what a small office PC holds."""
    docs = disk / "home" / "alice" / "Documents"
    docs.mkdir(parents=True)
    (docs / "Q3 invoices.csv").write_text("no,customer,amount\n1,Acme,1200\n2,Globex,560\n")
    (docs / "contract (signed).pdf").write_bytes(os.urandom(300_000))
    (docs / "报价单.txt").write_text("报价单 — 2026年11月\n")
    (disk / "home" / "alice" / ".cache").mkdir()
    (disk / "home" / "alice" / ".cache" / "thumbnails.db").write_bytes(os.urandom(50_000))
    (disk / "home" / "alice" / "draft.tmp").write_text("scratch")
    (disk / "etc").mkdir()
    (disk / "etc" / "hostname").write_text("ws-demo\n")
    secret = disk / "etc" / "wifi.conf"
    secret.write_text("psk=office-wifi-key\n")
    secret.chmod(0o600)


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(mode=0o700)
    disk, policies, state = DEMO / "ws-demo", DEMO / "policies", DEMO / "state"
    disk_image = DEMO / "ws-demo-sda2.img"
    make_workstation(disk)
    make_system_disk(disk_image, DEMO / "sda2-content")
    policies.mkdir()
    password_file = DEMO / "restic-password"
    password_file.write_text(secrets.token_urlsafe(24) + "\n")
    password_file.chmod(0o600)
    os.environ["RECOVERD_POLICIES"] = str(policies)
    os.environ["RECOVERD_STATE"] = str(state)
    invoice = disk / "home" / "alice" / "Documents" / "Q3 invoices.csv"

    with ThrowawaySSHD() as sshd:
        (policies / "demo.toml").write_text(
            POLICY.format(
                repo=DEMO / "repo",
                password_file=password_file,
                ssh=sshd.policy_lines,
                disk=disk,
                disk_image=disk_image,
            )
        )
        say(f"A workstation on 127.0.0.1:{sshd.port} (throwaway sshd); policies in {policies}")
        print(f"export RECOVERD_POLICIES={policies} RECOVERD_STATE={state}")
        recoverd("check")
        recoverd("machines")
        recoverd("plan", "--days", "2")

        say("Backups: the nightly files and the weekly disk image (the repository is created)")
        recoverd("backup", "ws-demo")

        say("Alice edits an invoice; the next nightly backup stores only the change")
        with invoice.open("a") as f:
            f.write("3,Initech,990\n")
        recoverd("backup", "ws-demo", "--level", "nightly")
        recoverd("snapshots", "ws-demo")

        say("Restore drill: restore the newest backup into a scratch folder and compare hashes")
        recoverd("verify", "ws-demo")
        recoverd("status")
        say("A drill on a damaged repository fails and names the damaged files")
        with damaged_packs(DEMO / "repo"):
            recoverd("verify", "ws-demo", ok=(1,))

        say("9 a.m.: Alice deleted her contract and a virus scrambled the invoices")
        (disk / "home" / "alice" / "Documents" / "contract (signed).pdf").unlink()
        invoice.write_bytes(os.urandom(64))
        recoverd("card", "ws-demo")
        recoverd("restore", "ws-demo", "--dry-run")
        recoverd(
            "restore",
            "ws-demo",
            "--yes",
            "--symptom",
            "files deleted and scrambled",
            "--reported-by",
            "Alice (accounting)",
        )
        print(f"$ tail -1 {shlex.quote(str(invoice))}")
        print(invoice.read_text().splitlines()[-1])

        say("The system disk dies: zero it, then put the image back in one command")
        with disk_image.open("r+b") as f:
            f.write(bytes(disk_image.stat().st_size))
        shell("e2fsck", "-fn", str(disk_image))
        recoverd(
            "restore",
            "ws-demo",
            "--level",
            "weekly-image",
            "--yes",
            "--symptom",
            "does not boot",
            "--reported-by",
            "Alice (accounting)",
        )
        shell("e2fsck", "-fn", str(disk_image))
        shell("debugfs", "-R", "cat /srv/账本.txt", str(disk_image))

    say("Sign-off and the audit trail")
    restore = last_run("restore")
    recoverd("accept", restore["id"], "--by", "Ms. Li (Demo Trading)", "--note", "PC boots")
    recoverd("log")
    recoverd("log", "verify")
    month = restore["started_at"][:7]
    report = DEMO / f"report-{month}.html"
    recoverd("report", "--client", "demo", "--month", month, "-o", str(report))
    print(f"\nThe monthly report is {report}; demo files are in {DEMO}; run it again any time.")


if __name__ == "__main__":
    main()
