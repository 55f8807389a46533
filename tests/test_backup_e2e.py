"""End to end over the real sshd: policy -> `recoverd backup` -> restic on the machine -> log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.people import operator
from recoverd.testing import ThrowawaySSHD, make_key

PASSWORD = "s3cret-Pa55word-for-tests"

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"
timezone = "Asia/Shanghai"

[repositories.nas]
url = "{repo}"
password = "env:TEST_REPO_PASSWORD"

[machines.ws-042]
address = "127.0.0.1"
port = {port}
user = "root"
identity = "{identity}"
{host_key_line}
connect_timeout = {timeout}
asset_tag = "ACME-PC-042"

[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = [{paths}]
exclude = ["*.tmp"]
every = "day at 01:30"
keep = {{ last = 3 }}
"""


class Workplace:
    """A policy directory, a state directory and a repository for one test."""

    def __init__(self, root: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.sshd = sshd
        self.policies = root / "policies"
        self.state = root / "state"
        self.repo = root / "repo"
        self.policies.mkdir()
        monkeypatch.setenv("TEST_REPO_PASSWORD", PASSWORD)
        monkeypatch.setenv("RECOVERD_POLICIES", str(self.policies))
        monkeypatch.setenv("RECOVERD_STATE", str(self.state))

    def write_policy(
        self,
        paths: list[Path],
        *,
        port: int | None = None,
        host_key: str | None = "pinned",
        known_hosts: Path | None = None,
        timeout: float = 5,
        restic: Path | None = None,
    ) -> None:
        if host_key == "pinned":
            host_key = self.sshd.host_key_line
        line = f'host_key = "{host_key}"' if host_key else ""
        if known_hosts:
            line += f'\nknown_hosts = "{known_hosts}"'
        if restic:
            line += f'\nrestic = "{restic}"'
        (self.policies / "acme.toml").write_text(
            POLICY.format(
                repo=self.repo,
                port=port or self.sshd.port,
                identity=self.sshd.client_key,
                host_key_line=line,
                timeout=timeout,
                paths=", ".join(json.dumps(str(p)) for p in paths),
            )
        )

    def log(self, capsys: pytest.CaptureFixture[str]) -> list[dict]:
        capsys.readouterr()
        assert main(["log", "--json"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture
def place(tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch) -> Workplace:
    return Workplace(tmp_path, sshd, monkeypatch)


HOSTILE_NAMES = [
    "with space.txt",
    "it's quoted.txt",
    'double "quoted".txt',
    "$(touch PWNED-dollar).txt",
    "`touch PWNED-backtick`.txt",
    "semi;touch PWNED-semi.txt",
    "new\nline.txt",
    "中文文件名.txt",
    "x" * 200,
    "-dash-first.txt",
]


def make_hostile_tree(root: Path) -> Path:
    """A tree whose names would run commands if anything passed them through a shell."""
    tree = root / "tree with 'quotes' and $(spaces)"
    (tree / "sub dir").mkdir(parents=True)
    for i, name in enumerate(HOSTILE_NAMES):
        (tree / name).write_bytes(f"content {i}\n".encode() + os.urandom(i * 100))
    (tree / "sub dir" / "big.bin").write_bytes(os.urandom(2_000_000))
    secret = tree / "private.key"
    secret.write_text("only root may read this\n")
    secret.chmod(0o600)
    script = tree / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (tree / "link to big").symlink_to("sub dir/big.bin")
    (tree / "skipped.tmp").write_text("excluded")
    return tree


def snapshot_of_tree(tree: Path) -> dict[str, tuple]:
    """Map every path below ``tree`` to (kind, mode, content or link target)."""
    found = {}
    for path in sorted(tree.rglob("*")):
        rel = str(path.relative_to(tree))
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode & 0o7777)
        else:
            found[rel] = ("file", st.st_mode & 0o7777, path.read_bytes())
    return found


def restic_restore(repo: Path, snapshot: str, target: Path) -> None:
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(repo)}
    subprocess.run(
        ["restic", "restore", snapshot, "--target", str(target)],
        env=env,
        check=True,
        capture_output=True,
    )


def test_backup_hostile_tree_over_ssh_restores_byte_identical(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_hostile_tree(place.root)
    place.write_policy([tree])
    cwd = Path.cwd()
    os.chdir(place.root)  # where an injected `touch PWNED-*` would land
    try:
        assert main(["backup", "ws-042"]) == 0
    finally:
        os.chdir(cwd)
    assert not list(place.root.glob("PWNED*")) and not list(Path("/root").glob("PWNED*"))
    runs = place.log(capsys)
    backup = next(r for r in runs if r["action"] == "backup")
    assert backup["state"] == "succeeded"
    assert backup["client"] == "acme" and backup["machine"] == "ws-042"
    # A manual run is recorded under who ran it, not the client's engineer.
    assert backup["engineer"] == operator() == backup["operator"]
    assert backup["trigger"] == "manual"
    # Regular files: the hostile names, big.bin, private.key, run.sh (restic counts no links).
    assert backup["stats"]["files_new"] == len(HOSTILE_NAMES) + 3
    assert backup["snapshot"]

    restored = place.root / "restored"
    restic_restore(place.repo, backup["snapshot"], restored)
    expected = snapshot_of_tree(tree)
    del expected["skipped.tmp"]
    assert snapshot_of_tree(restored / str(tree).lstrip("/")) == expected

    # The second run finds nothing new, and retention ran after each backup.
    assert main(["backup", "ws-042"]) == 0
    runs = place.log(capsys)
    backups = [r for r in runs if r["action"] == "backup"]
    assert backups[-1]["stats"]["files_new"] == 0
    prunes = [r for r in runs if r["action"] == "prune"]
    assert [p["state"] for p in prunes] == ["succeeded", "succeeded"]
    assert [p["stats"]["pruned"] for p in prunes] == [True, False]  # at most once a week


def test_snapshots_lists_restore_points_with_level_and_size(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(5000))
    place.write_policy([tree])
    assert main(["backup", "ws-042"]) == 0
    capsys.readouterr()
    assert main(["snapshots", "ws-042", "--json"]) == 0
    (snap,) = json.loads(capsys.readouterr().out)
    assert snap["level"] == "nightly" and snap["repository"] == "nas"
    assert snap["files"] == 1 and snap["size"] == 5000
    assert main(["snapshots", "ws-042"]) == 0
    table = capsys.readouterr().out
    assert "nightly" in table and snap["short_id"] in table and "+0800" not in table


def test_password_appears_nowhere_in_state_or_output(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    (tree / "a").write_text("x")
    place.write_policy([tree])
    assert main(["backup", "ws-042"]) == 0
    assert main(["log"]) == 0
    assert main(["log", "--json"]) == 0
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    for path in place.state.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    sshd_log = Path(place.sshd.log_path).read_bytes()
    assert PASSWORD.encode() not in sshd_log


def test_wrong_repository_password_is_recorded_as_such(
    place: Workplace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    place.write_policy([tree])
    assert main(["backup", "ws-042"]) == 0
    monkeypatch.setenv("TEST_REPO_PASSWORD", "not-the-password")
    assert main(["backup", "ws-042"]) == 1
    failed = place.log(capsys)[-1]
    assert failed["state"] == "failed"
    assert "wrong repository password" in failed["error"]


def test_unknown_host_key_is_refused_and_recorded(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    empty = place.root / "known_hosts"
    empty.write_text("")
    place.write_policy([tree], host_key=None, known_hosts=empty)
    assert main(["backup", "ws-042"]) == 1
    err = capsys.readouterr()
    (run,) = place.log(capsys)
    assert run["state"] == "failed"
    assert "unknown" in run["error"] and "host_key =" in run["error"]
    assert not place.repo.exists()  # nothing was sent
    assert "unknown" in err.out


def test_changed_host_key_is_refused_and_recorded(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    other = make_key(place.root / "other_host_key")
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    place.write_policy([tree], host_key=wrong)
    assert main(["backup", "ws-042"]) == 1
    (run,) = place.log(capsys)
    assert run["state"] == "failed"
    assert "changed" in run["error"].lower()
    assert not place.repo.exists()


def test_unreachable_machine_fails_within_timeout(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "data"
    tree.mkdir()
    # A listener that never speaks SSH: the TCP connect succeeds, the banner never comes.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        place.write_policy([tree], port=silent.getsockname()[1], timeout=2)
        started = time.monotonic()
        # A workstation (the default role) that cannot be reached is offline: skipped.
        assert main(["backup", "ws-042"]) == 0
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    (run,) = place.log(capsys)
    assert run["state"] == "skipped"
    assert run["error"].startswith("offline: ") and "ws-042" in run["error"]


def test_policy_errors_exit_2_with_file_and_key_path(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    (place.policies / "acme.toml").write_text(
        '[client]\nname = "Acme"\n[repositories.nas]\nurl = "/r"\npassword = "hunter2hunter2"\n'
        '[machines.ws-1]\nadress = "10.0.0.1"\n'
    )
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "acme.toml: machines.ws-1.adress" in err and "did you mean 'address'" in err
    assert "repositories.nas.password" in err and "hunter2hunter2" not in err
    assert main(["backup", "ws-1"]) == 2


def test_restore_refuses_while_another_run_holds_the_machine(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    from recoverd.controller import Controller
    from recoverd.locks import machine_lock

    tree = place.root / "data"
    tree.mkdir()
    (tree / "a").write_text("original")
    place.write_policy([tree])
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    (tree / "a").write_text("changed since")
    machine = Controller(place.policies, place.state).policies.find_machine("ws-042")
    capsys.readouterr()
    with machine_lock(place.state, machine):  # e.g. the daemon's nightly backup
        assert main(["restore", "ws-042", "--in-place", "--yes"]) == 1
    assert "busy with another run" in capsys.readouterr().err
    assert (tree / "a").read_text() == "changed since"
    assert [r["action"] for r in place.log(capsys)] == ["backup", "prune"]


def restored_tree(place: Workplace, files: dict[str, bytes]) -> tuple[Path, Path]:
    """Back up a tree of ``files`` (name -> content); return the tree and an empty folder to
    restore into."""
    tree = place.root / "data"
    tree.mkdir()
    for name, data in files.items():
        (tree / name).write_bytes(data)
    place.write_policy([tree])
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    return tree, place.root / "restored"


def test_restore_verifies_with_restic_by_default_and_in_full_when_asked(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {f"f{i}.bin": os.urandom(i * 1000) for i in range(5)}
    tree, target = restored_tree(place, files)
    assert main(["restore", "ws-042", "--to", str(target), "--yes"]) == 0
    assert "verification passed (restic, 5 checked)" in capsys.readouterr().out
    assert main(["restore", "ws-042", "--to", str(target), "--yes", "--verify", "full"]) == 0
    default, full = place.log(capsys)[-2:]
    for run, mode in ((default, "restic"), (full, "full")):
        assert run["state"] == "succeeded", run
        stats = run["stats"]
        assert stats["verify"] == mode and stats["verification"] == "passed"
        assert stats["files_verified"] == 5 and stats["mismatches"] == 0
    assert "restic restore --verify" in default["stats"]["verification_method"]
    assert "sha256" in full["stats"]["verification_method"]
    for name, data in files.items():
        assert (target / str(tree / name).lstrip("/")).read_bytes() == data


def fake_restic(place: Workplace, body: str) -> Path:
    """Write a program the machine runs as its restic: the real one, wrapped by ``body``
    (Python; ``restic`` is a Popen of the real restic with the same arguments, its stdout
    piped)."""
    program = place.root / "restic-on-a-bad-disk"
    program.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, subprocess, sys\n"
        "restic = subprocess.Popen(['restic', *sys.argv[1:]], stdout=subprocess.PIPE)\n"
        f"{body}\n"
        "sys.exit(restic.wait())\n"
    )
    program.chmod(0o755)
    return program


def test_restore_whose_file_restic_verify_finds_changed_fails_naming_it(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"a.txt": b"small\n", "zz-big.bin": os.urandom(64 << 20)}
    tree, target = restored_tree(place, files)
    victim = target / str(tree / "zz-big.bin").lstrip("/")
    # The disk flips the last byte of the big file once restic starts to verify (restic is
    # stopped meanwhile): same size, other content, which only restic's check can see.
    program = fake_restic(
        place,
        f"""\
for line in restic.stdout:
    if line.startswith(b"verifying files in "):
        restic.send_signal(signal.SIGSTOP)
        with open({str(victim)!r}, "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)[0]
            f.seek(-1, 2)
            f.write(bytes([last ^ 1]))
        restic.send_signal(signal.SIGCONT)
    sys.stdout.buffer.write(line)
    sys.stdout.flush()""",
    )
    place.write_policy([tree], restic=program)
    assert main(["restore", "ws-042", "--to", str(target), "--yes"]) == 1
    run = place.log(capsys)[-1]
    assert run["state"] == "failed" and run["stats"]["verification"] == "failed"
    assert run["stats"]["verify"] == "restic" and run["stats"]["mismatches"] == 1
    assert f"{victim}: Unexpected content" in run["error"]
    assert "(restic --verify)" in run["error"]
    (mismatch,) = run["stats"]["mismatched"]
    assert mismatch.startswith(f"{victim}: Unexpected content")


def test_restore_whose_files_change_after_restic_verify_fails_on_their_size(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"a.txt": b"small\n", "b.bin": os.urandom(50_000)}
    tree, target = restored_tree(place, files)
    victim = target / str(tree / "b.bin").lstrip("/")
    gone = victim.parent / "a.txt"
    # The disk loses one file and truncates another after restic checked them.
    program = fake_restic(
        place,
        f"""\
for line in restic.stdout:
    sys.stdout.buffer.write(line)
if restic.wait() == 0 and sys.argv[1] == "restore":
    open({str(victim)!r}, "wb").write(b"bit rot")
    os.unlink({str(gone)!r})""",
    )
    place.write_policy([tree], restic=program)
    assert main(["restore", "ws-042", "--to", str(target), "--yes"]) == 1
    run = place.log(capsys)[-1]
    assert run["state"] == "failed" and run["stats"]["mismatches"] == 2
    assert f"{victim}: 7 bytes, the snapshot has 50000" in run["error"]
    assert f"{gone}: missing after the restore" in run["error"]


def test_restore_plan_opens_the_repository_once_and_names_bad_snapshot_ids(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, target = restored_tree(place, {"a.txt": b"first\n"})
    (tree / "a.txt").write_bytes(b"second\n")
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    first, _prune, second, _prune2 = place.log(capsys)
    calls = place.root / "restic-calls"
    program = fake_restic(
        place,
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "for line in restic.stdout:\n"
        "    sys.stdout.buffer.write(line)",
    )
    place.write_policy([tree], restic=program)
    capsys.readouterr()
    assert main(["restore", "ws-042", "--to", str(target), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    # restic 0.14 records the short id, 0.15 and later the full one; the plan names the short.
    assert plan["snapshot"][:8] == second["snapshot"][:8] and plan["created_count"] == 1
    # The newest vouched snapshot and its files come from one restic command.
    assert calls.read_text().splitlines() == [f"ls --json {second['snapshot']}"]
    assert main(["restore", "ws-042", "--to", str(target), "--snapshot", first["snapshot"][:5],
                 "--yes"]) == 0  # fmt: skip
    assert (target / str(tree / "a.txt").lstrip("/")).read_bytes() == b"first\n"
    calls.unlink()
    assert main(["restore", "ws-042", "--to", str(target), "--snapshot", "latest"]) == 2
    assert "'latest' is not a snapshot of level nightly" in capsys.readouterr().err
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["snapshots"]
