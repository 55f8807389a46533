"""The audit trail against an intruder who holds the controller: anchors, the key's record,
who did what.

Every tampering is done with the tools such an intruder has: sqlite3 on the store, the signing
key in the state directory (to re-sign what was edited), an old copy of the state directory.
Each is caught through an anchor kept outside the controller (the output of `log head`, a
report, an export) or the record beside a key kept outside the state directory.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recoverd.cli import main
from recoverd.errors import RecoverdError
from recoverd.log import MaintenanceLog
from recoverd.log.record import GENESIS, canonical, entry_hash
from recoverd.log.signing import entry_message, head_message
from recoverd.people import engineer_of_run, operator
from recoverd.plugins import PluginHost

POLICY = """\
[client]
name = "Acme Trading Co."
timezone = "Asia/Shanghai"
engineer = "Wang Lei"

[repositories.nas]
url = "/srv/restic/acme"
password = "env:ACME_RESTIC_PASSWORD"

[machines.ws-1]
address = "127.0.0.1"
port = 1
offline = "fail"   # unreachable: a failed run, not a skipped one

[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
paths = ["/srv"]
repository = "nas"
every = "day at 01:00"
"""


def write_runs(state: Path, states: list[str], day: int = 1) -> list[str]:
    """Record one run per state, a day apart from ``day`` of November 2026; return the ids."""
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    ids = []
    for i, state_ in enumerate(states):
        start = datetime(2026, 11, day + i, 1, 0, tzinfo=UTC)
        run_id = mlog.start(
            client="acme",
            machine="ws-1",
            level="nightly",
            kind="files",
            action="backup",
            trigger="schedule",
            engineer="Wang Lei",
            at=start,
        )
        mlog.finish(
            run_id,
            state_,
            error="host unreachable" if state_ == "failed" else None,
            at=start.replace(minute=5),
        )
        ids.append(run_id)
    mlog.close()
    return ids


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory with four runs (two failed) and a policy directory, in the env."""
    state = tmp_path / "state"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.toml").write_text(POLICY)
    monkeypatch.setenv("RECOVERD_STATE", str(state))
    monkeypatch.setenv("RECOVERD_POLICIES", str(policies))
    monkeypatch.delenv("RECOVERD_LOG_KEY_FILE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    write_runs(state, ["succeeded", "failed", "failed", "succeeded"])
    return state


def keep_anchor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Save the output of `recoverd log head` where the controller cannot reach: an anchor."""
    capsys.readouterr()
    assert main(["log", "head"]) == 0
    anchor = tmp_path / "kept-by-the-customer.txt"
    anchor.write_text(capsys.readouterr().out)
    return anchor


def resign(state: Path, key_path: Path, edit) -> None:
    """Rewrite every entry with ``edit(body)``, re-chain and re-sign it with ``key_path``, and
    write a new signed head: what an intruder holding the state directory's key can do."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    db = sqlite3.connect(state / "maintenance.db")
    rows = db.execute("SELECT seq, run_id, type, at, body FROM entries ORDER BY seq").fetchall()
    prev = GENESIS
    with db:
        for seq, run_id, type_, at_, body in rows:
            data = edit(json.loads(body))
            digest = entry_hash(seq, run_id, type_, at_, data, prev)
            db.execute(
                "UPDATE entries SET body = ?, prev_hash = ?, hash = ?, signature = ? WHERE seq = ?",
                (canonical(data), prev, digest, key.sign(entry_message(digest)).hex(), seq),
            )
            prev = digest
    db.close()
    head = {
        "seq": rows[-1][0],
        "hash": prev,
        "signature": key.sign(head_message(rows[-1][0], prev)).hex(),
    }
    (state / "log-head.json").write_text(json.dumps(head))


def turn_failed_into_succeeded(body: dict) -> dict:
    if body.get("state") == "failed":
        body = {**body, "state": "succeeded", "error": None}
    return body


def verify_json(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["log", "verify", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_log_head_prints_the_signed_head_as_an_anchor(place, capsys) -> None:
    capsys.readouterr()
    assert main(["log", "head", "--json"]) == 0
    head = json.loads(capsys.readouterr().out)
    assert head["seq"] == 8 and len(head["hash"]) == 64 and len(head["signature"]) == 128
    assert head["at"] == "2026-11-04T01:05:00+00:00"
    assert head["key"].startswith("ed25519:")
    assert head["anchor"] == f"log head 8:{head['hash']} signed {head['signature']}"
    assert main(["log", "head"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == head["anchor"]
    assert main(["log", "verify", "--anchor", f"8:{head['hash']}"]) == 0
    assert "1 anchor(s) held unchanged" in capsys.readouterr().out


def test_rewritten_and_resigned_log_passes_alone_but_fails_against_an_anchor(
    place, capsys, tmp_path
) -> None:
    """The intruder has the key: two failed runs become succeeded, re-chained and re-signed."""
    anchor = keep_anchor(tmp_path, capsys)
    assert main(["log", "pubkey", "-o", str(tmp_path / "original.pub")]) == 0
    resign(place, place / "log-signing.key", turn_failed_into_succeeded)
    # Without an anchor nothing can tell: the key holder wrote it (the docs say so).
    code, summary = verify_json(capsys, "--signatures", "--pubkey", str(tmp_path / "original.pub"))
    assert code == 0
    code, summary = verify_json(capsys, "--anchor", str(anchor))
    assert code == 1 and not summary["intact"]
    assert summary["problem"]["kind"] == "edited" and summary["problem"]["seq"] == 8
    assert str(anchor) in summary["problem"]["message"]
    assert "rewritten after this anchor" in summary["problem"]["message"]
    assert main(["log", "verify", "--anchor", str(anchor)]) == 1
    assert f"anchor file {anchor}" in capsys.readouterr().err


def test_wiped_log_and_head_fail(place, capsys, tmp_path) -> None:
    anchor = keep_anchor(tmp_path, capsys)
    (place / "maintenance.db").unlink()
    (place / "log-head.json").unlink()
    for extra in ("maintenance.db-wal", "maintenance.db-shm"):
        (place / extra).unlink(missing_ok=True)
    # The key of the state directory is made with the first entry: an empty log beside it.
    code, summary = verify_json(capsys)
    assert code == 1 and "wiped" in summary["problem"]["message"]
    # And with the key gone too, the anchor still tells.
    (place / "log-signing.key").unlink()
    code, summary = verify_json(capsys, "--anchor", str(anchor))
    assert code == 1 and summary["problem"]["kind"] == "removed"
    assert "wiped after this anchor" in summary["problem"]["message"]


def test_old_copy_of_the_state_directory_restored_fails_against_a_later_anchor(
    place, capsys, tmp_path
) -> None:
    old = tmp_path / "old-state"
    shutil.copytree(place, old)  # last week's backup of the state directory
    write_runs(place, ["failed", "failed"], day=10)
    anchor = keep_anchor(tmp_path, capsys)  # e.g. the report the customer got
    shutil.rmtree(place)
    shutil.copytree(old, place)  # the failures "never happened"
    assert main(["log", "verify"]) == 0  # consistent in itself
    code, summary = verify_json(capsys, "--anchor", str(anchor))
    assert code == 1 and summary["problem"]["kind"] == "removed"
    assert "the log now ends at entry 8" in summary["problem"]["message"]
    assert "rolled back or wiped after this anchor" in summary["problem"]["message"]


def test_deleted_key_is_named_not_taken_for_an_empty_log(place, capsys) -> None:
    (place / "log-signing.key").unlink()
    assert main(["log", "verify"]) != 0
    err = capsys.readouterr().err
    assert "log-signing.key is missing, but the maintenance log has 8 entries" in err
    assert "nothing has been written" not in err


def test_accept_refuses_to_sign_with_another_key(place, capsys) -> None:
    ids = write_runs(place, ["succeeded"], day=20)
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (place / "log-signing.key").write_bytes(other)
    capsys.readouterr()
    assert main(["accept", ids[0], "--by", "Ms. Li"]) == 1
    err = capsys.readouterr().err
    assert "is not the key this maintenance log was signed with" in err
    db = sqlite3.connect(place / "maintenance.db")
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 10
    db.close()


def test_key_outside_the_state_directory_keeps_a_record(tmp_path, monkeypatch, capsys) -> None:
    state = tmp_path / "state"
    keys = tmp_path / "etc-recoverd"
    keys.mkdir(mode=0o700)
    monkeypatch.setenv("RECOVERD_STATE", str(state))
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path))
    monkeypatch.setenv("RECOVERD_LOG_KEY_FILE", str(keys / "log.key"))
    write_runs(state, ["succeeded", "failed"])
    assert not (state / "log-signing.key").exists()
    assert (keys / "log.key").stat().st_mode & 0o777 == 0o600
    assert json.loads((keys / "log.key.head").read_text())["seq"] == 4
    assert main(["log", "verify"]) == 0
    old = tmp_path / "old-state"
    shutil.copytree(state, old)
    write_runs(state, ["failed"], day=10)
    # An old copy of the state directory put back: shorter than the key's record says.
    shutil.rmtree(state)
    shutil.copytree(old, state)
    code, summary = verify_json(capsys)
    assert code == 1 and summary["problem"]["kind"] == "removed"
    assert "the signing key's record" in summary["problem"]["message"]
    assert "the log now ends at entry 4" in summary["problem"]["message"]
    # The whole state directory wiped: the same.
    shutil.rmtree(state)
    code, summary = verify_json(capsys)
    assert code == 1 and "the signing key's record" in summary["problem"]["message"]
    # And nothing new is written on top of the wiped log.
    with pytest.raises(RecoverdError, match="names entry 6"):
        write_runs(state, ["succeeded"])


def test_key_from_a_systemd_credential(place, tmp_path, monkeypatch, capsys) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(place / "log-signing.key", credentials / "recoverd-log.key")
    (place / "log-signing.key").unlink()
    credentials.chmod(0o500)  # systemd's credential directory is read-only
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    try:
        assert main(["log", "verify"]) == 0
        write_runs(place, ["succeeded"], day=20)  # signs with the credential, keeps no record
        assert main(["log", "verify"]) == 0
        assert not (place / "log-signing.key").exists()
    finally:
        credentials.chmod(0o700)


def test_report_and_export_files_are_anchors(place, capsys, tmp_path) -> None:
    files = []
    for fmt in ("html", "md", "csv"):
        out = tmp_path / f"report.{fmt}"
        assert main(["report", "--client", "acme", "--month", "2026-11", "-o", str(out)]) == 0
        files.append(out)
    out = tmp_path / "report.json"
    capsys.readouterr()
    assert main(["report", "--client", "acme", "--month", "2026-11", "--json"]) == 0
    out.write_text(capsys.readouterr().out)
    files.append(out)
    out = tmp_path / "export.jsonl"
    assert main(["log", "export", "--client", "acme", "--month", "2026-11", "-o", str(out)]) == 0
    files.append(out)
    for path in files:
        assert "log head 8:" in path.read_text(), path
        assert main(["log", "verify", "--anchor", str(path)]) == 0, path
    resign(place, place / "log-signing.key", turn_failed_into_succeeded)
    capsys.readouterr()
    for path in files:
        assert main(["log", "verify", "--anchor", str(path)]) == 1, path
        assert str(path) in capsys.readouterr().err


def test_anchor_argument_errors_say_what_to_give(place, capsys, tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    assert main(["log", "verify", "--anchor", str(empty)]) == 2
    assert "holds no 'log head SEQ:HASH' line" in capsys.readouterr().err
    assert main(["log", "verify", "--anchor", "12:zz"]) == 2
    assert "neither SEQ:HASH" in capsys.readouterr().err


def test_an_anchor_from_another_key_names_the_replaced_key(place, capsys, tmp_path) -> None:
    anchor = keep_anchor(tmp_path, capsys)
    other = Ed25519PrivateKey.generate()
    (place / "log-signing.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    resign(place, place / "log-signing.key", lambda body: body)  # same content, new key
    code, summary = verify_json(capsys, "--anchor", str(anchor))
    assert code == 1 and summary["problem"]["kind"] == "forged"
    assert "signing key was replaced" in summary["problem"]["message"]


# --- who did it ------------------------------------------------------------------------------


def test_every_entry_carries_the_operator_sudo_user_first(place, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SUDO_USER", "lina")
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    run = json.loads(capsys.readouterr().out.splitlines()[0])
    assert run["operator"] == operator("schedule")  # written by a scheduled run: the daemon's user
    assert main(["accept", run["id"], "--by", "Ms. Li", "--note", "checked the restore"]) == 0
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    run = json.loads(capsys.readouterr().out.splitlines()[0])
    assert run["acceptances"] == [
        {
            "by": "Ms. Li",
            "at": run["accepted_at"],
            "note": "checked the restore",
            "operator": "lina",
        }
    ]
    assert main(["log"]) == 0
    assert "Ms. Li" in capsys.readouterr().out


def test_manual_backup_is_recorded_under_who_ran_it(place, capsys, monkeypatch) -> None:
    """ws-1 is unreachable (port 1): the run fails at once, and its record says who ran it."""
    monkeypatch.setenv("SUDO_USER", "zhang")
    capsys.readouterr()
    assert main(["backup", "ws-1", "--json"]) == 1
    view = json.loads(capsys.readouterr().out.splitlines()[0])
    assert view["operator"] == "zhang" and view["engineer"] == "zhang"
    assert view["trigger"] == "manual"
    assert main(["backup", "ws-1", "--engineer", "Zhang Wei", "--json"]) == 1
    view = json.loads(capsys.readouterr().out.splitlines()[0])
    assert view["engineer"] == "Zhang Wei" and view["operator"] == "zhang"


def test_engineer_of_a_run() -> None:
    names = {"lina": "Li Na"}
    assert engineer_of_run("schedule", None, "Wang Lei", names) == "Wang Lei"
    assert engineer_of_run("manual", "Zhang Wei", "Wang Lei", names) == "Zhang Wei"
    login = operator("manual")
    expected = names.get(login, login)
    assert engineer_of_run("manual", None, "Wang Lei", names) == expected
    assert engineer_of_run("manual", None, "Wang Lei", {login: "Someone"}) == "Someone"


# --- witnesses -------------------------------------------------------------------------------


@pytest.fixture
def witnessed(place: Path, tmp_path: Path, sshd, monkeypatch) -> Path:
    """acme/srv-01 (the throwaway sshd) is a witness of acme; return its witness directory."""
    policies = Path(__import__("os").environ["RECOVERD_POLICIES"])
    directory = tmp_path / "srv-01" / "recoverd-witness"
    (policies / "acme.toml").write_text(
        POLICY + f'\n[machines.srv-01]\nrole = "server"\n{sshd.policy_lines}\n'
    )
    (policies / "provider.toml").write_text(f'[audit]\nwitness = ["acme/srv-01:{directory}"]\n')
    return directory


def test_witness_gets_the_head_after_every_run_and_catches_a_rewrite(
    place, witnessed, capsys, tmp_path
) -> None:
    old = tmp_path / "old-state"
    shutil.copytree(place, old)
    capsys.readouterr()
    assert main(["backup", "ws-1"]) == 1  # unreachable: a failed run, recorded and witnessed
    heads = (witnessed / "heads").read_text().splitlines()
    assert len(heads) == 1 and " log head 10:" in heads[0] and " key ed25519:" in heads[0]
    assert (witnessed / "heads").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out.splitlines()[-1])["id"]
    assert main(["accept", run_id, "--by", "Ms. Li"]) == 0  # an acceptance is witnessed too
    assert len((witnessed / "heads").read_text().splitlines()) == 2
    code, summary = verify_json(capsys, "--witness")
    assert code == 0 and [a["ok"] for a in summary["anchors"]] == [True, True]
    assert summary["anchors"][0]["source"].startswith("witness acme/srv-01:")
    # The provider re-signs a rewritten log with the key of the state directory: caught.
    resign(place, place / "log-signing.key", turn_failed_into_succeeded)
    code, summary = verify_json(capsys, "--witness")
    assert code == 1 and summary["problem"]["kind"] == "edited"
    assert "witness acme/srv-01:" in summary["problem"]["message"]
    # An old copy of the state directory put back: caught.
    shutil.rmtree(place)
    shutil.copytree(old, place)
    code, summary = verify_json(capsys, "--witness")
    assert code == 1 and summary["problem"]["kind"] == "removed"
    # The report's integrity line compares with the witnesses too.
    out = tmp_path / "report.md"
    assert main(["report", "--client", "acme", "--month", "2026-11", "-o", str(out)]) == 0
    assert "NOT intact" in out.read_text() and "witness acme/srv-01" in out.read_text()


def test_unreachable_witness_is_a_warning_never_a_lost_run(
    place, witnessed, capsys, caplog
) -> None:
    policies = Path(__import__("os").environ["RECOVERD_POLICIES"])
    text = (policies / "acme.toml").read_text()
    port = text.split("port = ")[-1].split("\n")[0]
    (policies / "acme.toml").write_text(text.replace(f"port = {port}", "port = 9", 1))
    capsys.readouterr()
    assert main(["backup", "ws-1", "--json"]) == 1  # the run's own failure (ws-1 unreachable)
    captured = capsys.readouterr()
    view = json.loads(captured.out.splitlines()[0])
    assert view["state"] == "failed" and "witness acme/srv-01" in caplog.text
    assert main(["log", "verify", "--witness"]) == 0
    assert "warning: witness acme/srv-01" in capsys.readouterr().err


def test_head_anchor_for_messages(place) -> None:
    mlog = MaintenanceLog(place, PluginHost()["log_sinks"])
    line = mlog.head_anchor()
    mlog.close()
    assert line is not None and line.startswith("log head 8:") and " signed " in line


def test_witness_file_with_garbage_and_a_forged_head(place, witnessed, capsys) -> None:
    capsys.readouterr()
    assert main(["backup", "ws-1"]) == 1  # a head is pushed after the run
    heads = witnessed / "heads"
    with heads.open("a") as f:
        f.write("\x1b[2Jgarbage \x00 line\nlog head 12:zz\n")
    code, summary = verify_json(capsys, "--witness")
    assert code == 0 and len(summary["anchors"]) == 1
    # A head nobody signed, appended to the witness: not evidence, and said so.
    with heads.open("a") as f:
        f.write(f"2026-12-01T00:00:00+00:00 log head 11:{'ab' * 32} signed {'cd' * 64}\n")
    code, summary = verify_json(capsys, "--witness")
    assert code == 1 and summary["problem"]["kind"] == "forged"
    assert "witness acme/srv-01" in summary["problem"]["message"]


def test_anchor_file_with_hostile_bytes(place, capsys, tmp_path) -> None:
    anchor = keep_anchor(tmp_path, capsys)
    hostile = tmp_path / "hostile.txt"
    hostile.write_bytes(b"\xff\xfe\x00\x1b]0;x\x07" + anchor.read_bytes() + b"\n\xc3(" * 1000)
    assert main(["log", "verify", "--anchor", str(hostile)]) == 0
    assert main(["log", "verify", "--anchor", str(tmp_path)]) == 2  # a directory
    assert "neither SEQ:HASH" in capsys.readouterr().err
