"""Shared repositories: stale restic locks of other machines, drills that take turns.

Locks are real: a real restic process holds one and is killed with SIGKILL. To make that lock
look like another machine's, or old, the test rewrites it the way restic writes it (AES-256-CTR
and Poly1305-AES under the repository's master key, file named by its SHA-256): a format-1
repository keeps its lock files uncompressed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305
from test_backup_e2e import PASSWORD, Workplace
from test_faults import restic, restic_env, restic_locks, wait_for

from recoverd.actions.verify import run_drill
from recoverd.cli import main
from recoverd.controller import Controller
from recoverd.testing import ThrowawaySSHD


class RepositoryKey:
    """The master key of a restic repository, to read and write its small files."""

    def __init__(self, repo: Path, password: str) -> None:
        key = json.loads(next((repo / "keys").iterdir()).read_text())
        derived = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(key["salt"]),
            n=key["N"],
            r=key["r"],
            p=key["p"],
            maxmem=1 << 30,
            dklen=64,
        )
        user = (derived[:32], derived[32:48], derived[48:64])
        master = json.loads(self._open(user, base64.b64decode(key["data"])))
        self.keys = (
            base64.b64decode(master["encrypt"]),
            base64.b64decode(master["mac"]["k"]),
            base64.b64decode(master["mac"]["r"]),
        )

    @staticmethod
    def _mac(keys: tuple[bytes, bytes, bytes], iv: bytes, data: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(keys[1]), modes.ECB()).encryptor()
        s = encryptor.update(iv) + encryptor.finalize()
        return Poly1305.generate_tag(keys[2] + s, data)

    @classmethod
    def _open(cls, keys: tuple[bytes, bytes, bytes], blob: bytes) -> bytes:
        iv, data, tag = blob[:16], blob[16:-16], blob[-16:]
        assert cls._mac(keys, iv, data) == tag, "wrong key or damaged file"
        decryptor = Cipher(algorithms.AES(keys[0]), modes.CTR(iv)).decryptor()
        return decryptor.update(data) + decryptor.finalize()

    def read(self, path: Path) -> dict[str, Any]:
        return json.loads(self._open(self.keys, path.read_bytes()))

    def write(self, folder: Path, value: dict[str, Any]) -> Path:
        iv = os.urandom(16)
        encryptor = Cipher(algorithms.AES(self.keys[0]), modes.CTR(iv)).encryptor()
        data = encryptor.update(json.dumps(value).encode()) + encryptor.finalize()
        blob = iv + data + self._mac(self.keys, iv, data)
        path = folder / hashlib.sha256(blob).hexdigest()
        path.write_bytes(blob)
        return path


def dead_lock(repo: Path) -> Path:
    """Leave the lock of a restic killed with SIGKILL in ``repo``; return its file."""
    holder = subprocess.Popen(
        ["restic", "backup", "--stdin"],
        env=restic_env(repo),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: restic_locks(repo), 10, "the lock of the live restic")
    finally:
        holder.kill()
        holder.wait()
    (lock,) = (repo / "locks").iterdir()
    return lock


def rewrite_lock(repo: Path, lock: Path, **changes: Any) -> dict[str, Any]:
    """Rewrite ``lock`` with ``changes`` (``age``: a timedelta back from now); return it."""
    key = RepositoryKey(repo, PASSWORD)
    value = key.read(lock)
    age = changes.pop("age", None)
    if age is not None:
        value["time"] = (datetime.now(UTC) - age).isoformat()
    value.update(changes)
    lock.unlink()
    key.write(repo / "locks", value)
    return value


@pytest.fixture
def place(tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch) -> Workplace:
    place = Workplace(tmp_path, sshd, monkeypatch)
    tree = tmp_path / "data"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(1000))
    place.write_policy([tree])
    restic(place.repo, "init", "--repository-version", "1")
    return place


def test_old_lock_of_a_dead_run_of_another_machine_no_longer_blocks_retention(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    # ws-gone's restic died at 01:00 with its laptop; ws-042's retention runs at 01:45.
    rewrite_lock(place.repo, dead_lock(place.repo), hostname="ws-gone", age=timedelta(minutes=45))
    assert main(["backup", "ws-042"]) == 0
    backup, prune = place.log(capsys)
    assert backup["state"] == "succeeded"
    assert prune["state"] == "succeeded"
    assert prune["stats"]["stale_locks_removed"] == 1
    (removed,) = prune["stats"]["stale_locks"]
    assert removed["host"] == "ws-gone" and 44 * 60 <= removed["age_s"] <= 47 * 60
    assert removed["why"].startswith("not refreshed for 45 minutes")
    assert restic_locks(place.repo) == []


def test_fresh_lock_of_another_machine_is_never_removed(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another machine's restic wrote its lock 4 minutes ago: it may well be alive (its pid
    # means nothing here, and its host cannot be asked), so retention waits for it.
    rewrite_lock(
        place.repo, dead_lock(place.repo), hostname="ws-elsewhere", age=timedelta(minutes=4)
    )
    assert main(["backup", "ws-042"]) == 1
    backup, prune = place.log(capsys)
    assert backup["state"] == "succeeded"
    assert prune["state"] == "failed" and "locked" in prune["error"]
    assert prune["stats"] == {"transient": True}  # the daemon tries again
    assert len(restic_locks(place.repo)) == 1


TWO_MACHINES = """\
[client]
name = "Acme Trading Co."

[repositories.nas]
url = "{repo}"
password = "env:TEST_REPO_PASSWORD"
{machines}
"""

MACHINE = """
[machines.{name}]
{ssh}

[[machines.{name}.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{tree}"]

[[machines.{name}.levels]]
name = "drill"
kind = "verify"
of = "nightly"
sample = "all"
"""


def test_two_drills_on_one_repository_both_run_their_check_on_the_next_parts(
    tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = Workplace(tmp_path, sshd, monkeypatch)
    machines = ""
    for name in ("ws-041", "ws-042"):
        tree = tmp_path / name
        tree.mkdir()
        for i in range(5):
            (tree / f"file-{i}").write_bytes(os.urandom(20_000))
        machines += MACHINE.format(name=name, ssh=sshd.policy_lines, tree=tree)
    (place.policies / "acme.toml").write_text(
        TWO_MACHINES.format(repo=place.repo, machines=machines)
    )
    assert main(["backup", "ws-041"]) == 0
    assert main(["backup", "ws-042"]) == 0
    ctl = Controller(place.policies, place.state)
    views: dict[str, dict[str, Any]] = {}

    def drill(name: str) -> None:
        machine = ctl.policies.find_machine(name)
        views[name] = run_drill(ctl, machine, machine.level("drill"))

    drills = [threading.Thread(target=drill, args=(n,)) for n in ("ws-041", "ws-042")]
    for thread in drills:
        thread.start()
    for thread in drills:
        thread.join(120)
    for name, view in views.items():
        assert view["state"] == "succeeded", (name, view["error"])
        assert view["stats"]["check"] == "passed"
    # One rotation for the repository, whichever machine drills: the next part each time.
    assert sorted(v["stats"]["check_subset"] for v in views.values()) == ["1/12", "2/12"]
    again = run_drill(
        ctl, ctl.policies.find_machine("ws-041"), ctl.policies.find_machine("ws-041").level("drill")
    )
    assert again["stats"]["check_subset"] == "3/12"


def test_drill_whose_check_cannot_run_is_partial_not_succeeded(
    tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = Workplace(tmp_path, sshd, monkeypatch)
    tree = tmp_path / "ws-042"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(1000))
    (place.policies / "acme.toml").write_text(
        TWO_MACHINES.format(
            repo=place.repo,
            machines=MACHINE.format(name="ws-042", ssh=sshd.policy_lines, tree=tree),
        )
    )
    assert main(["backup", "ws-042"]) == 0
    # A live backup of another machine holds a lock: restic check cannot lock exclusively.
    holder = subprocess.Popen(
        ["restic", "backup", "--stdin"],
        env=restic_env(place.repo),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: restic_locks(place.repo), 10, "the lock of the live restic")
        ctl = Controller(place.policies, place.state)
        machine = ctl.policies.find_machine("ws-042")
        view = run_drill(ctl, machine, machine.level("drill"))
    finally:
        holder.kill()
        holder.wait()
    assert view["state"] == "partial"
    assert view["error"].startswith("the repository check did not run (not run: ")
    assert "check_subset" not in view["stats"]
    assert view["stats"]["verification"] == "passed"


@pytest.fixture
def ws041(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawaySSHD]:
    """Another machine, with a host name of its own: an sshd in a UTS namespace named ws-041.
    Skipped where namespaces cannot be made (no root, a restricted container)."""
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("unshare --uts is not allowed here")
    wrapper = tmp_path_factory.mktemp("ws041") / "sshd"
    wrapper.write_text(
        "#!/bin/sh\nexec unshare --uts /bin/sh -c "
        '\'hostname ws-041 && exec /usr/sbin/sshd "$@"\' sshd "$@"\n'
    )
    wrapper.chmod(0o755)
    with ThrowawaySSHD(sshd=str(wrapper)) as server:
        yield server


def test_young_lock_of_a_dead_run_of_another_machine_is_judged_by_that_machine(
    tmp_path: Path,
    sshd: ThrowawaySSHD,
    ws041: ThrowawaySSHD,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    place = Workplace(tmp_path, sshd, monkeypatch)
    machines = ""
    for name, server in (("ws-041", ws041), ("ws-042", sshd)):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "a").write_bytes(os.urandom(1000))
        text = MACHINE.format(name=name, ssh=server.policy_lines, tree=tree)
        machines += text.replace(
            f'paths = ["{tree}"]', f'paths = ["{tree}"]\nkeep = {{ last = 3 }}'
        )
    (place.policies / "acme.toml").write_text(
        TWO_MACHINES.format(repo=place.repo, machines=machines)
    )
    restic(place.repo, "init", "--repository-version", "1")
    # ws-041's restic died two minutes ago: too young for restic's 30 minutes, but ws-041 can
    # say that its pid no longer runs there.
    lock = dead_lock(place.repo)
    rewrite_lock(place.repo, lock, hostname="ws-041", age=timedelta(minutes=2))
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    backup, prune = place.log(capsys)
    assert backup["state"] == prune["state"] == "succeeded", prune["error"]
    (removed,) = prune["stats"]["stale_locks"]
    assert removed["host"] == "ws-041" and removed["judged_by"] == "ws-041"
    assert removed["why"].startswith("pid ") and removed["why"].endswith("no longer runs on ws-041")
    assert restic_locks(place.repo) == []
