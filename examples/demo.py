"""The recoverd demo: a sample workstation backed up over SSH, then the maintenance log.

Everything runs on this machine: a throwaway OpenSSH server on 127.0.0.1 stands for the client
workstation, a directory under .demo/ for its disk and another for the backup repository. The
demo drives the real `recoverd` command, exactly as an engineer would type it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
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
address = "127.0.0.1"
port = {port}
user = "root"
identity = "{identity}"
host_key = "{host_key}"
role = "workstation"
asset_tag = "DEMO-PC-001"
mac = "52:54:00:12:34:56"

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
    make_workstation(disk)
    policies.mkdir()
    password_file = DEMO / "restic-password"
    password_file.write_text(secrets.token_urlsafe(24) + "\n")
    password_file.chmod(0o600)
    os.environ["RECOVERD_POLICIES"] = str(policies)
    os.environ["RECOVERD_STATE"] = str(state)

    with ThrowawaySSHD() as sshd:
        (policies / "demo.toml").write_text(
            POLICY.format(
                repo=DEMO / "repo",
                password_file=password_file,
                port=sshd.port,
                identity=sshd.client_key,
                host_key=sshd.host_key_line,
                disk=disk,
            )
        )
        say(f"A workstation on 127.0.0.1:{sshd.port} (throwaway sshd); policies in {policies}")
        print(f"export RECOVERD_POLICIES={policies} RECOVERD_STATE={state}")
        recoverd("check")
        recoverd("machines")

        say("Nightly backup, first run: the repository is created on the way")
        recoverd("backup", "ws-demo")

        say("Alice edits an invoice; the next backup stores only the change")
        with (disk / "home" / "alice" / "Documents" / "Q3 invoices.csv").open("a") as f:
            f.write("3,Initech,990\n")
        recoverd("backup", "ws-demo")

        say("Restore points")
        recoverd("snapshots", "ws-demo")

    say("The maintenance log (recoverd log --json prints the full records)")
    recoverd("log")
    print(f"\nDemo files are in {DEMO}; run it again any time.")


if __name__ == "__main__":
    main()
