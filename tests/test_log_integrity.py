"""The signed maintenance log: `log verify` against each kind of tampering, `log pubkey`,
`accept`, `log export`, and the upgrade of a log from before signing.

Every tampering is done the way an intruder would: by editing the SQLite store directly.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recoverd.cli import main
from recoverd.log import MaintenanceLog
from recoverd.log import verify as verify_module
from recoverd.log.record import GENESIS, VIEW_FIELDS, canonical, entry_hash
from recoverd.log.signing import public_pem
from recoverd.plugins import PluginHost

POLICY = """\
[client]
name = "Acme Trading Co."
timezone = "Asia/Shanghai"

[repositories.nas]
url = "/srv/restic/acme"
password = "env:ACME_RESTIC_PASSWORD"

[machines.ws-1]
address = "127.0.0.1"

[machines.ws-2]
address = "127.0.0.1"
"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def fill(state: Path) -> list[str]:
    """Four runs (eight entries) of two machines, at known times; return the run ids."""
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    ids = []
    # 2026-10-31T16:30Z is 1 November 00:30 in Shanghai: a November run for the export.
    times = ["2026-10-31T15:00", "2026-10-31T16:30", "2026-11-15T02:00", "2026-12-01T01:00"]
    for i, start in enumerate(times):
        run_id = mlog.start(
            client="acme",
            machine=f"ws-{1 + i % 2}",
            level="nightly",
            kind="files",
            action="backup",
            engineer="Wang Lei",
            at=at(start + "+00:00"),
        )
        mlog.finish(
            run_id,
            "failed" if i == 2 else "succeeded",
            snapshot=None if i == 2 else f"snap{i}",
            stats={"files_new": i, "files_changed": 0, "bytes_added": 1000 * i},
            error="host unreachable" if i == 2 else None,
            at=at(start.replace(":00", ":05", 1) + "+00:00"),
        )
        ids.append(run_id)
    mlog.close()
    return ids


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    state = tmp_path_factory.mktemp("pristine") / "state"
    return state, fill(state)


@pytest.fixture
def place(
    tmp_path: Path, pristine: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, list[str]]:
    """A private copy of the filled state directory and policies, set in the environment."""
    state = tmp_path / "state"
    shutil.copytree(pristine[0], state)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.toml").write_text(POLICY)
    monkeypatch.setenv("RECOVERD_STATE", str(state))
    monkeypatch.setenv("RECOVERD_POLICIES", str(policies))
    return state, pristine[1]


def sql(state: Path, *statements: str) -> None:
    db = sqlite3.connect(state / "maintenance.db")
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def verify(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["log", "verify", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_log_verify_intact_log_exits_0_with_summary(place, capsys) -> None:
    assert main(["log", "verify"]) == 0
    out = capsys.readouterr().out
    assert "maintenance log intact: 8 entries, 4 runs" in out
    assert "2026-10-31T15:00:00+00:00 .. 2026-12-01T01:05:00+00:00" in out
    code, summary = verify(capsys)
    assert code == 0 and summary["intact"] and summary["head"]["seq"] == 8


def test_log_verify_edited_body_names_entry(place, capsys) -> None:
    state, ids = place
    sql(state, "UPDATE entries SET body = replace(body, 'failed', 'succeeded') WHERE seq = 6")
    assert main(["log", "verify"]) == 1
    err = capsys.readouterr().err
    assert f"entry 6 (end of run {ids[2]}" in err
    assert "edited" in err
    code, summary = verify(capsys)
    assert code == 1 and summary["problem"]["seq"] == 6 and summary["problem"]["kind"] == "edited"


def test_log_verify_edited_body_with_recomputed_hashes_is_forged(place, capsys) -> None:
    """An intruder who rewrites an entry and re-chains everything after it lacks the key."""
    state, _ = place
    db = sqlite3.connect(state / "maintenance.db")
    rows = db.execute("SELECT seq, run_id, type, at, body FROM entries ORDER BY seq")
    prev = GENESIS
    with db:
        for seq, run_id, type_, at_, body in rows.fetchall():
            data = json.loads(body)
            if seq == 6:
                data["state"] = "succeeded"
            digest = entry_hash(seq, run_id, type_, at_, data, prev)
            db.execute(
                "UPDATE entries SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (canonical(data), prev, digest, seq),
            )
            prev = digest
    db.close()
    code, summary = verify(capsys)
    assert code == 1
    assert summary["problem"]["seq"] == 6 and summary["problem"]["kind"] == "forged"
    assert "signature" in summary["problem"]["message"]


def test_log_verify_deleted_row_is_removed(place, capsys) -> None:
    state, _ = place
    sql(state, "DELETE FROM entries WHERE seq = 4")
    code, summary = verify(capsys)
    assert code == 1
    assert summary["problem"]["kind"] == "removed" and summary["problem"]["seq"] == 4
    assert "entry 4 was removed" in summary["problem"]["message"]


def test_log_verify_forged_row_with_recomputed_hash_is_inserted(place, capsys) -> None:
    state, ids = place
    db = sqlite3.connect(state / "maintenance.db")
    (last_hash,) = db.execute("SELECT hash FROM entries WHERE seq = 8").fetchone()
    db.close()
    body = {"by": "Nobody", "note": None, "client": "acme", "machine": "ws-1"}
    when = "2026-12-02T00:00:00+00:00"
    digest = entry_hash(9, ids[0], "accept", when, body, last_hash)
    db = sqlite3.connect(state / "maintenance.db")
    with db:
        db.execute(
            "INSERT INTO entries VALUES (9, ?, 'accept', ?, 'acme', 'ws-1', ?, ?, ?, '00ff')",
            (ids[0], when, canonical(body), last_hash, digest),
        )
    db.close()
    code, summary = verify(capsys)
    assert code == 1
    assert summary["problem"]["seq"] == 9 and summary["problem"]["kind"] == "inserted"
    assert "invalid signature" in summary["problem"]["message"]


def test_log_verify_swapped_seq_is_reordered(place, capsys) -> None:
    state, _ = place
    sql(
        state,
        "UPDATE entries SET seq = -1 WHERE seq = 3",
        "UPDATE entries SET seq = 3 WHERE seq = 4",
        "UPDATE entries SET seq = 4 WHERE seq = -1",
    )
    code, summary = verify(capsys)
    assert code == 1
    assert summary["problem"]["kind"] == "reordered" and summary["problem"]["seq"] == 3


def test_log_verify_truncated_tail_is_caught_by_signed_head(place, capsys) -> None:
    state, _ = place
    sql(state, "DELETE FROM entries WHERE seq >= 7")
    code, summary = verify(capsys)
    assert code == 1
    assert summary["problem"]["kind"] == "removed" and summary["problem"]["seq"] == 7
    assert "entries 7..8 were removed from the end" in summary["problem"]["message"]


def test_log_verify_missing_head_fails(place, capsys) -> None:
    state, _ = place
    (state / "log-head.json").unlink()
    code, summary = verify(capsys)
    assert code == 1 and "head file is missing" in summary["problem"]["message"]


def test_log_verify_with_exported_pubkey_and_a_wrong_one(place, capsys, tmp_path) -> None:
    capsys.readouterr()
    assert main(["log", "pubkey", "-o", str(tmp_path / "log.pem")]) == 0
    code, summary = verify(capsys, "--pubkey", str(tmp_path / "log.pem"))
    assert code == 0 and summary["intact"]
    other = tmp_path / "other.pem"
    other.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    code, summary = verify(capsys, "--pubkey", str(other))
    assert (
        code == 1
        and "no entry of the log verifies with this public key" in (summary["problem"]["message"])
    )
    assert main(["log", "verify", "--pubkey", str(tmp_path / "absent.pem")]) == 2


def test_signing_key_is_private_and_pubkey_is_pem(place, capsys) -> None:
    state, _ = place
    assert (state / "log-signing.key").stat().st_mode & 0o777 == 0o600
    assert (state / "log-head.json").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(["log", "pubkey"]) == 0
    assert capsys.readouterr().out.startswith("-----BEGIN PUBLIC KEY-----")


def test_log_from_before_signing_is_upgraded_and_signed(tmp_path: Path, capsys) -> None:
    """A database with the original schema gets the column and signatures when opened."""
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "maintenance.db")
    db.execute(
        "CREATE TABLE entries (seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL, type TEXT NOT "
        "NULL, at TEXT NOT NULL, client TEXT, machine TEXT, body TEXT NOT NULL, prev_hash TEXT "
        "NOT NULL, hash TEXT NOT NULL)"
    )
    prev = GENESIS
    for seq, type_ in ((1, "start"), (2, "end")):
        body = {"client": "acme", "machine": "ws-1"} if type_ == "start" else {"state": "failed"}
        digest = entry_hash(seq, "r1", type_, "2026-11-01T00:00:00+00:00", body, prev)
        db.execute(
            "INSERT INTO entries VALUES (?, 'r1', ?, '2026-11-01T00:00:00+00:00', ?, ?, ?, ?, ?)",
            (seq, type_, body.get("client"), body.get("machine"), canonical(body), prev, digest),
        )
        prev = digest
    db.commit()
    db.close()
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    verdict = mlog.verify()
    assert verdict.intact and verdict.entries == 2 and verdict.head and verdict.head.seq == 2
    assert all(e.signature for e in mlog.store.entries())


def test_accept_appends_entry_and_view_shows_latest(place, capsys) -> None:
    state, ids = place
    assert main(["accept", ids[2], "--by", "Ms. Li", "--note", "retried next night"]) == 0
    out = capsys.readouterr().out
    # In the client's zone, as every other time recoverd prints (not an ISO UTC stamp).
    assert re.search(r"accepted by Ms\. Li at \d{4}-\d\d-\d\d \d\d:\d\d [+-]\d\d\n", out), out
    assert main(["accept", ids[2], "--by", "Mr. Zhao"]) == 0
    assert "earlier acceptance(s) kept in the log: Ms. Li" in capsys.readouterr().out
    assert main(["log", "--json", "--state", "failed"]) == 0
    (view,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert view["id"] == ids[2] and view["accepted_by"] == "Mr. Zhao"
    assert view["state"] == "failed"  # accepting never changes what happened
    db = sqlite3.connect(state / "maintenance.db")
    types = [
        t
        for (t,) in db.execute("SELECT type FROM entries WHERE run_id = ? ORDER BY seq", (ids[2],))
    ]
    db.close()
    assert types == ["start", "end", "accept", "accept"]
    assert main(["log", "verify"]) == 0


def test_accept_refuses_unknown_and_running_runs(place, capsys) -> None:
    state, _ = place
    assert main(["accept", "20260101-000000-abcdef", "--by", "Ms. Li"]) == 2
    assert "no run '20260101-000000-abcdef'" in capsys.readouterr().err
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    running = mlog.start(client="acme", machine="ws-1", level="n", kind="files", action="backup")
    assert main(["accept", running, "--by", "Ms. Li"]) == 2
    assert "still running" in capsys.readouterr().err


def test_log_export_month_in_client_zone_jsonl_and_csv(place, capsys, tmp_path) -> None:
    _, ids = place
    capsys.readouterr()
    assert main(["log", "export", "--client", "acme", "--month", "2026-11"]) == 0
    *records, head = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The export ends with the log's signed head (it is an anchor).
    assert head["log_head"]["seq"] == 8 and head["log_head"]["anchor"].startswith("log head 8:")
    # 31 Oct 15:00 UTC is still October in Shanghai; 1 Dec 01:00 UTC is December there.
    assert [r["id"] for r in records] == ids[1:3]
    assert list(records[0]) == list(VIEW_FIELDS)
    assert records[1]["state"] == "failed" and records[1]["error"] == "host unreachable"
    out = tmp_path / "acme-2026-11.csv"
    args = ["log", "export", "--client", "acme", "--month", "2026-11", "--format", "csv"]
    assert main([*args, "-o", str(out)]) == 0
    *rows, head_row = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == ids[1:3]
    assert head_row["id"] == head["log_head"]["anchor"]
    assert main(["log", "verify", "--anchor", str(out)]) == 0
    assert json.loads(rows[0]["stats"]) == {"files_new": 1, "files_changed": 0, "bytes_added": 1000}


def test_log_filters_keep_working_beside_actions(place, capsys) -> None:
    _, ids = place
    capsys.readouterr()
    assert main(["log", "--machine", "ws-2", "--json"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == ids[1::2]
    assert main(["log", "--client", "acme"]) == 0
    assert ids[3] in capsys.readouterr().out


def test_missing_key_of_a_signed_log_stops_writes(place, capsys) -> None:
    state, ids = place
    (state / "log-signing.key").unlink()
    assert main(["accept", ids[0], "--by", "Ms. Li"]) == 1
    assert "log-signing.key is missing" in capsys.readouterr().err
    assert not (state / "log-signing.key").exists()


def test_concurrent_writers_share_one_new_key(tmp_path: Path) -> None:
    """Three processes start on a fresh state directory at once: one key, one signed chain."""
    state = tmp_path / "state"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from recoverd.log import MaintenanceLog
        from recoverd.plugins import PluginHost
        log = MaintenanceLog(Path({str(state)!r}), PluginHost()["log_sinks"])
        for i in range(15):
            log.finish(log.start(client="acme", machine="m", level="n", kind="files",
                                 action="backup"), "succeeded")
    """)
    children = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(3)]
    deadline = time.monotonic() + 60
    for child in children:
        assert child.wait(timeout=max(1, deadline - time.monotonic())) == 0
    verdict = MaintenanceLog(state, PluginHost()["log_sinks"]).verify()
    assert verdict.intact and verdict.entries == 90 and verdict.head and verdict.head.seq == 90
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith("maintenance.db")) == [
        "log-head.json",
        "log-signing.key",
    ]


def test_log_verify_edited_index_column_is_caught(place, capsys) -> None:
    """The client column is not hashed; moving a run to another client must not go unseen."""
    state, ids = place
    sql(state, f"UPDATE entries SET client = 'other' WHERE run_id = '{ids[2]}'")
    code, summary = verify(capsys)
    assert code == 1
    assert summary["problem"]["seq"] == 5 and summary["problem"]["kind"] == "edited"
    assert "index columns were edited" in summary["problem"]["message"]


# --- A longer log: one signature vouches for the chain; a forgery is still located ---------


def big_log(state: Path, runs: int = 1500) -> MaintenanceLog:
    """Write ``runs`` finished runs (two entries each) through the real store, signed."""
    mlog = MaintenanceLog(state, PluginHost()["log_sinks"])
    store = mlog.store
    common = {"client": "acme", "level": "nightly", "kind": "files", "action": "backup"}
    # The head is re-signed after every entry in normal use; once at the end is enough here.
    with mock.patch.object(store.key, "write_head"), store.transaction():
        for i in range(runs):
            start = at("2026-10-01T00:00+00:00") + timedelta(minutes=10 * i)
            run = mlog.start(machine=f"ws-{1 + i % 2}", at=start, **common)
            mlog.finish(run, "succeeded", snapshot=f"s{i}", at=start + timedelta(minutes=5))
    last = store._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    store.key.write_head(last[0], last[1])
    return mlog


def rechain_from(state: Path, seq: int, edit: Callable[[dict], None]) -> None:
    """Edit entry ``seq``'s body and recompute every hash from there on, as an intruder
    without the signing key would (the signatures stay as they were)."""
    db = sqlite3.connect(state / "maintenance.db")
    (prev,) = db.execute("SELECT prev_hash FROM entries WHERE seq = ?", (seq,)).fetchone()
    rows = db.execute(
        "SELECT seq, run_id, type, at, body FROM entries WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    with db:
        for row_seq, run_id, type_, at_, body in rows:
            data = json.loads(body)
            if row_seq == seq:
                edit(data)
            digest = entry_hash(row_seq, run_id, type_, at_, data, prev)
            db.execute(
                "UPDATE entries SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (canonical(data), prev, digest, row_seq),
            )
            prev = digest
    db.close()


@pytest.fixture(scope="module")
def big_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("big") / "state"
    big_log(state).close()
    return state


@pytest.fixture
def big(tmp_path: Path, big_pristine: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    shutil.copytree(big_pristine, state)
    monkeypatch.setenv("RECOVERD_STATE", str(state))
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    return state


def counted_signatures(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the entry signatures `log verify` checks from now on."""
    calls = [0]
    real = verify_module.verify_signature

    def counting(key, signature, message):
        if message.startswith(b"recoverd-log-entry:"):
            calls[0] += 1
        return real(key, signature, message)

    monkeypatch.setattr(verify_module, "verify_signature", counting)
    return calls


def test_log_verify_checks_the_chain_and_one_signature_by_default(big, capsys, monkeypatch):
    calls = counted_signatures(monkeypatch)
    code, summary = verify(capsys)
    assert code == 0 and summary["intact"] and summary["signatures"] == "last entry and head"
    assert summary["head"]["seq"] == 3000 and calls[0] == 1
    code, summary = verify(capsys, "--signatures")
    assert code == 0 and summary["signatures"] == "every entry" and calls[0] == 1 + 3000


@pytest.mark.parametrize("thorough", [False, True], ids=["default", "signatures"])
def test_log_verify_rewritten_and_rechained_middle_is_forged(big, capsys, thorough) -> None:
    """Hashes and links are all consistent after the rewrite; only the key can tell."""
    rechain_from(big, 1601, lambda body: body.update(machine="ws-9"))
    code, summary = verify(capsys, *(["--signatures"] if thorough else []))
    assert code == 1
    assert summary["problem"]["seq"] == 1601 and summary["problem"]["kind"] == "forged"
    assert "rewritten with a recomputed hash" in summary["problem"]["message"]


def test_log_verify_forgery_before_a_broken_link_is_named_first(big, capsys) -> None:
    """A rewritten entry 1001, and entry 2001 deleted: the forgery is the first problem."""
    rechain_from(big, 1001, lambda body: body.update(state="failed"))
    sql(big, "DELETE FROM entries WHERE seq = 2001")
    code, summary = verify(capsys)
    assert code == 1 and (summary["problem"]["seq"], summary["problem"]["kind"]) == (1001, "forged")


def test_log_verify_fields_that_need_json_escaping_are_hashed_canonically(big, capsys) -> None:
    """The fast hash builds the material from the stored text; fields with quotes or
    backslashes take the canonical way, and an edit among them is still found."""
    mlog = MaintenanceLog(big, PluginHost()["log_sinks"])
    odd = 'run "quoted" \\ one'
    mlog.store.write(odd, "start", "2026-11-30T00:00:00+00:00", {"client": "acme", "x": 'a"b'})
    mlog.close()
    code, summary = verify(capsys)
    assert code == 0 and summary["entries"] == 3001
    sql(big, "UPDATE entries SET at = '2026-11-30T00:00:01+00:00' WHERE seq = 3001")
    code, summary = verify(capsys)
    assert (summary["problem"]["seq"], summary["problem"]["kind"]) == (3001, "edited")


def test_log_verify_blob_in_a_text_column_is_edited(place, capsys) -> None:
    state, _ = place
    sql(state, "UPDATE entries SET run_id = X'ff00' WHERE seq = 3")
    code, summary = verify(capsys)
    assert code == 1 and (summary["problem"]["seq"], summary["problem"]["kind"]) == (3, "edited")
