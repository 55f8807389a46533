"""Files restores over the real sshd with the real restic (run the file once per restic with
RECOVERD_TEST_RESTIC): only what differs is written, never through a symbolic link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_backup_e2e import HOSTILE_NAMES, Workplace

from recoverd.cli import main
from recoverd_plugins.files_restore import FilesInPlace


@pytest.fixture
def place(tmp_path: Path, sshd, monkeypatch: pytest.MonkeyPatch) -> Workplace:
    return Workplace(tmp_path, sshd, monkeypatch)


def make_tree(root: Path) -> Path:
    """A tree with modes, a symlink, a sub folder and an empty folder."""
    tree = root / "data"
    (tree / "docs").mkdir(parents=True)
    (tree / "empty").mkdir()
    for i in range(6):
        (tree / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    (tree / "docs" / "report.txt").write_text("the report\n")
    (tree / "docs" / "notes.txt").write_text("notes\n")
    (tree / "secret.key").write_text("private\n")
    (tree / "secret.key").chmod(0o600)
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "plain.txt").write_text("plain\n")
    (tree / "link").symlink_to("plain.txt")
    return tree


def backed_up(place: Workplace, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict]:
    tree = make_tree(place.root)
    place.write_policy([tree])
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    backup = next(r for r in place.log(capsys) if r["action"] == "backup")
    return tree, backup


def state(tree: Path) -> dict[str, tuple]:
    """Every path below ``tree``: kind, mode, owner, and content or link target."""
    found = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(tree))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode & 0o7777)
        else:
            found[rel] = ("file", st.st_mode & 0o7777, st.st_uid, path.read_bytes())
    return found


def ctimes(tree: Path) -> dict[str, int]:
    return {
        str(p.relative_to(tree)): p.lstat().st_ctime_ns
        for p in tree.rglob("*")
        if not p.is_dir() or p.is_symlink()
    }


def test_in_place_restore_writes_only_what_differs_and_brings_back_links_modes_owners(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, _backup = backed_up(place, capsys)
    expected = state(tree)
    (tree / "f1.txt").write_text("ransomware\n")  # content differs
    (tree / "f2.txt").unlink()  # deleted
    (tree / "secret.key").chmod(0o644)  # mode differs
    os.chown(tree / "run.sh", 1234, 1234)  # owner differs
    (tree / "link").unlink()
    (tree / "link").symlink_to("/etc/passwd")  # link target differs
    (tree / "docs" / "notes.txt").unlink()
    (tree / "docs" / "notes.txt").symlink_to("/etc/hostname")  # a link where a file was
    untouched = {"f0.txt", "f3.txt", "f4.txt", "f5.txt", "plain.txt", "docs/report.txt"}
    before = ctimes(tree)
    capsys.readouterr()
    assert main(["restore", "ws-042", "--in-place", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    changed = {str(tree / n) for n in ("f1.txt", "secret.key", "run.sh", "link", "docs/notes.txt")}
    assert set(plan["replaced"]) == changed and plan["replaced_count"] == 5
    assert plan["created"] == [str(tree / "f2.txt")] and plan["created_count"] == 1
    assert plan["unchanged"] == len(untouched)
    assert main(["restore", "ws-042", "--in-place", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "restore: succeeded, verification passed" in out and "None" not in out
    assert state(tree) == expected
    after = ctimes(tree)
    assert {name: after[name] for name in untouched} == {name: before[name] for name in untouched}
    run = place.log(capsys)[-1]
    assert run["state"] == "succeeded", run
    assert run["stats"]["files_restored"] == 5 and run["stats"]["files_unchanged"] == 6
    # The next backup finds changed only the files the restore wrote, not the whole tree.
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    backup = [r for r in place.log(capsys) if r["action"] == "backup"][-1]
    assert backup["stats"]["files_changed"] == 5 and backup["stats"]["files_new"] == 0


def test_in_place_restore_of_an_intact_tree_writes_nothing_and_verifies_in_both_modes(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, _backup = backed_up(place, capsys)
    before = ctimes(tree)
    assert main(["restore", "ws-042", "--in-place", "--yes"]) == 0
    assert main(["restore", "ws-042", "--in-place", "--yes", "--verify", "full"]) == 0
    assert ctimes(tree) == before
    for run in place.log(capsys)[-2:]:
        assert run["state"] == "succeeded", run
        assert run["stats"]["files_restored"] == 0 and run["stats"]["verification"] == "passed"


def test_symlink_where_the_snapshot_has_a_folder_stops_the_restore_until_replace_links(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, _backup = backed_up(place, capsys)
    # The user swaps their folder for a link to a place only root may write.
    outside = place.root / "etc"
    outside.mkdir()
    (outside / "report.txt").write_text("system file\n")
    for name in ("report.txt", "notes.txt"):
        (tree / "docs" / name).unlink()
    (tree / "docs").rmdir()
    (tree / "docs").symlink_to(outside)
    (tree / "f0.txt").write_text("live edit\n")
    runs = len(place.log(capsys))
    assert main(["restore", "ws-042", "--in-place", "--yes"]) == 1
    captured = capsys.readouterr()
    assert f"{tree / 'docs'} -> {outside}" in captured.out  # named in the plan
    assert "--replace-links" in captured.err and "symbolic link" in captured.err
    assert sorted(p.name for p in outside.iterdir()) == ["report.txt"]
    assert (outside / "report.txt").read_text() == "system file\n"
    assert (tree / "f0.txt").read_text() == "live edit\n"  # nothing inside written either
    assert len(place.log(capsys)) == runs
    assert main(["restore", "ws-042", "--in-place", "--yes", "--replace-links"]) == 0
    assert (outside / "report.txt").read_text() == "system file\n"
    assert not (tree / "docs").is_symlink()
    assert (tree / "docs" / "report.txt").read_text() == "the report\n"
    assert (tree / "f0.txt").read_text() == "file 0\n"
    run = place.log(capsys)[-1]
    assert run["state"] == "succeeded" and run["stats"]["links_replaced"] == 1


def test_to_path_with_a_symlink_in_or_above_the_destination_is_refused(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, _backup = backed_up(place, capsys)
    outside = place.root / "outside"
    outside.mkdir()
    target = place.root / "restored"
    target.mkdir()
    first = str(tree).lstrip("/").split("/")[0]  # "tmp": the snapshot has it as a folder
    (target / first).symlink_to(outside)
    assert main(["restore", "ws-042", "--to", str(target), "--yes"]) == 1
    assert f"{target / first} -> {outside}" in capsys.readouterr().out
    (place.root / "elsewhere").symlink_to(outside)
    assert main(["restore", "ws-042", "--to", str(place.root / "elsewhere" / "x"), "--yes"]) == 1
    assert "--replace-links" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("to", ["/x/nonexistent/../../..", "relative/dir", "", "/tmp/a/../b"])
def test_to_path_that_is_not_absolute_or_has_dotdot_is_a_usage_error(
    place: Workplace, capsys: pytest.CaptureFixture[str], to: str
) -> None:
    tree, _backup = backed_up(place, capsys)
    (tree / "f0.txt").write_text("live edit\n")
    assert main(["restore", "ws-042", "--to", to, "--yes"]) == 2
    assert "--to" in capsys.readouterr().err
    assert (tree / "f0.txt").read_text() == "live edit\n"


def test_checked_destination_cleans_dots_and_slashes() -> None:
    from recoverd_plugins.files_restore import checked_destination

    assert checked_destination("/srv//restored/./x/") == "/srv/restored/x"
    assert checked_destination("/") == "/"


def test_a_folder_that_becomes_a_link_after_the_plan_fails_the_run_and_writes_nothing(
    place: Workplace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, _backup = backed_up(place, capsys)
    outside = place.root / "etc"
    outside.mkdir()
    (tree / "f0.txt").write_text("live edit\n")
    (tree / "docs" / "report.txt").unlink()
    real_plan = FilesInPlace.plan

    def plan_then_swap(self, request):  # the user acts while the engineer reads the plan
        plan = real_plan(self, request)
        (tree / "docs" / "notes.txt").unlink()
        (tree / "docs").rmdir()
        (tree / "docs").symlink_to(outside)
        return plan

    monkeypatch.setattr(FilesInPlace, "plan", plan_then_swap)
    assert main(["restore", "ws-042", "--in-place", "--yes"]) == 1
    out = capsys.readouterr().out
    assert "restore: failed" in out and "not restored (run" in out and "None" not in out
    run = place.log(capsys)[-1]
    assert run["action"] == "restore" and run["state"] == "failed"
    assert "became symbolic link" in run["error"] and str(tree / "docs") in run["error"]
    assert list(outside.iterdir()) == []
    assert (tree / "f0.txt").read_text() == "live edit\n"


def test_plan_names_the_first_twenty_created_and_replaced_with_counts(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "many"
    tree.mkdir()
    for i in range(50):
        (tree / f"n{i:02}.txt").write_text(f"{i}\n")
    place.write_policy([tree])
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    for i in range(25):
        (tree / f"n{i:02}.txt").unlink()
    for i in range(25, 47):
        (tree / f"n{i:02}.txt").write_text("changed\n")
    capsys.readouterr()
    assert main(["restore", "ws-042", "--in-place", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "creates    25 file(s) missing now" in out and "... and 5 more" in out
    assert "replaces   22 existing file(s) that differ" in out and "... and 2 more" in out
    assert "leaves     3 file(s) that match the snapshot" in out
    assert str(tree / "n00.txt") in out and str(tree / "n25.txt") in out
    assert main(["restore", "ws-042", "--in-place", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert len(plan["created"]) == 20 and plan["created_count"] == 25
    assert len(plan["replaced"]) == 20 and plan["replaced_count"] == 22


def test_in_place_restore_of_hostile_names_writes_exactly_the_damaged_ones(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "hostile [tree] *"
    tree.mkdir()
    names = [*HOSTILE_NAMES, "star*.txt", "br[a]ck.txt", "back\\slash.txt", "q?.txt", "#hash"]
    for i, name in enumerate(names):
        (tree / name).write_text(f"content {i}\n")
    (tree / "star-other.txt").write_text("a name the pattern star*.txt would match\n")
    place.write_policy([tree])
    assert main(["backup", "ws-042", "--level", "nightly"]) == 0
    damaged = [
        "star*.txt",
        "br[a]ck.txt",
        "back\\slash.txt",
        "new\nline.txt",
        "$(touch PWNED-dollar).txt",
    ]
    for name in damaged:
        (tree / name).write_text("damaged\n")
    kept = ctimes(tree)
    assert main(["restore", "ws-042", "--in-place", "--yes"]) == 0
    run = place.log(capsys)[-1]
    assert run["state"] == "succeeded", run
    assert run["stats"]["files_restored"] == len(damaged)
    for i, name in enumerate(names):
        assert (tree / name).read_text() == f"content {i}\n"
    after = ctimes(tree)
    assert {n: after[n] for n in kept if n not in damaged} == {
        n: kept[n] for n in kept if n not in damaged
    }
    assert not list(place.root.glob("**/PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_to_path_restore_twice_writes_everything_then_nothing(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, _backup = backed_up(place, capsys)
    target = place.root / "restored"
    assert main(["restore", "ws-042", "--to", str(target) + "//./", "--yes"]) == 0
    copy = target / str(tree).lstrip("/")
    assert state(copy) == state(tree)
    before = ctimes(copy)
    assert main(["restore", "ws-042", "--to", str(target), "--yes"]) == 0
    assert ctimes(copy) == before  # the link's target was compared, not rewritten
    first, second = place.log(capsys)[-2:]
    assert first["stats"]["files_restored"] == 11 and first["stats"]["destination"] == str(target)
    assert second["stats"]["files_restored"] == 0 and second["stats"]["files_unchanged"] == 12
