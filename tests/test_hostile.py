"""Hostile text stays text in every output; deep and out-of-range input are clean errors.

Text from machines (file names, restic's messages), users (symptoms, names) and policies goes
to terminals, JSON, CSV, Markdown and HTML. Each output is checked on its bytes: no escape
sequence reaches a terminal, no ``\\r`` or ``\\n`` forges a Markdown heading or table row, no
HTML passes, no CSV cell runs as a formula, and ``--json`` stays the exact data. Policies and
command-line values that are nested too deeply or out of range end with exit 2 and a path.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import re
import signal
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_backup_e2e import Workplace
from test_daemon_process import CLIENT, Daemon, local_machine
from test_policy import VALID, spots, to_toml

from recoverd.actions.daemon import Daemon as Scheduler
from recoverd.actions.report import Month
from recoverd.cli import main
from recoverd.commands.log import parse_since
from recoverd.controller import Controller
from recoverd.errors import PolicyError, SecretError, UsageError
from recoverd.log import MaintenanceLog
from recoverd.plugins import PluginHost
from recoverd.policy import load_policies
from recoverd.testing import ThrowawaySSHD
from recoverd.text import CSVWriter, csv_cell, json_text, markdown_text, visible
from recoverd.vault import Vault
from recoverd_plugins.secrets import resolve_command, resolve_file

ESC = "\x1b[31mred\x1b[0m"
FORGED_SYMPTOM = "screen black\r## forged heading\n| forged | row |\n<script>alert(1)</script>"
HOSTILE_NAMES = [
    "\x1b[31mred\x1b[0m.txt",
    "carriage\rreturn.txt",
    "pipe|cell.txt",
    "<script>alert(1).txt",
    "=cmd|' -C calc'!A0",  # a file name has no /
    "bidi\u202etxt.exe",
    "line\n  creates    999 file(s) missing now",
]
TERMINAL_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")
"""What must never reach a terminal raw (a line break ends a line; it is checked apart)."""


def terminal_safe(text: str) -> bool:
    return TERMINAL_UNSAFE.search(text) is None


# --- the helpers -----------------------------------------------------------------------------


@given(st.text())
def test_visible_any_text_is_one_line_without_control_characters(text: str) -> None:
    shown = visible(text)
    assert "\n" not in shown and terminal_safe(shown)
    assert shown == text or "\\" in shown


@given(st.text())
def test_markdown_text_any_text_cannot_start_a_row_or_pass_html(text: str) -> None:
    md = markdown_text(text)
    assert "\n" not in md and "\r" not in md
    # Every | < > ` * _ [ is escaped: preceded by an odd number of backslashes.
    for match in re.finditer(r"(\\*)([|<>`*_\[])", md):
        assert len(match[1]) % 2 == 1, md


@given(st.text())
def test_json_text_any_text_decodes_to_the_same_and_is_terminal_safe(text: str) -> None:
    line = json_text({"t": text}, ensure_ascii=False)
    assert json.loads(line) == {"t": text}
    assert terminal_safe(line) and "\n" not in line


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("plain", "plain"),
        (42, 42),
        (None, ""),
    ],
)
def test_csv_cell_formula_starts_get_a_quote(cell: object, shown: object) -> None:
    assert csv_cell(cell) == shown


# --- the report and the export ---------------------------------------------------------------

POLICY = """\
[client]
name = "Acme <b>Trading</b> | Co."
timezone = "UTC"
restore_sla = "4h"

[repositories.nas]
url = "/srv/restic/acme"
password = "env:NOPE"

[machines.ws-1]
address = "127.0.0.1"
[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
every = "day at 01:30"
"""


@pytest.fixture
def hostile_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A log of October 2026 with a failed backup whose error holds escapes and HTML, and a
    restore whose symptom, reporter and engineer are formulas and forged Markdown."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.toml").write_text(POLICY)
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    mlog = MaintenanceLog(tmp_path / "state", PluginHost()["log_sinks"])
    start = datetime(2026, 10, 5, 1, 30, tzinfo=UTC)
    run = mlog.start(
        client="acme", machine="ws-1", level="nightly", kind="files", action="backup", at=start
    )
    mlog.finish(
        run,
        "failed",
        error=f"restic: {ESC}\rrecoverd: all good\n<img src=x onerror=alert(1)>",
        at=start + timedelta(minutes=5),
    )
    start += timedelta(days=1)
    run = mlog.start(
        client="acme",
        machine="ws-1",
        level="nightly",
        kind="files",
        action="restore",
        symptom=FORGED_SYMPTOM,
        reported_by='=HYPERLINK("http://evil.example/","click")',
        engineer="+cmd|' /C calc'!A0",
        at=start,
    )
    mlog.finish(
        run, "succeeded", error=None, stats={"duration_s": 60}, at=start + timedelta(minutes=1)
    )
    return tmp_path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_markdown_hostile_fields_stay_text(
    hostile_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, md, _ = run_cli(capsys, "report", "--client", "acme", "--month", "2026-10")
    assert code == 0
    assert "\r" not in md and "\x1b" not in md
    lines = md.split("\n")
    assert not [ln for ln in lines if ln.lstrip().startswith(("## forged", "| forged"))]
    assert not re.search(r"(?<!\\)[<>]", md)  # every < and > is escaped: no HTML
    assert r"\<script\>alert(1)\</script\>" in md
    assert r"screen black\\r## forged heading\\n\| forged \| row \|" in md
    assert md.startswith(r"# Backup and recovery report — Acme \<b\>Trading\</b\> \| Co.")
    # Each row of the restores table has the header's cells: no | came from the data.
    header = next(ln for ln in lines if ln.startswith("| Time | Symptom"))
    (row,) = [ln for ln in lines if "screen black" in ln]
    cells = re.compile(r"(?<!\\)\|")
    assert len(cells.findall(row)) == len(cells.findall(header))


def test_report_html_hostile_fields_are_escaped(
    hostile_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, page, _ = run_cli(
        capsys, "report", "--client", "acme", "--month", "2026-10", "--format", "html"
    )
    assert code == 0
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\r" not in page
    # A reason without plain words is its first line, its escapes shown, not run.
    assert "<td>restic: \\x1b[31mred\\x1b[0m</td>" in page


def test_log_export_csv_neutralises_formulas_and_jsonl_is_exact(
    hostile_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, _ = run_cli(
        capsys, "log", "export", "--client", "acme", "--month", "2026-10", "--format", "csv"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    restore = next(r for r in rows if r["action"] == "restore")
    assert restore["reported_by"] == '\'=HYPERLINK("http://evil.example/","click")'
    assert restore["engineer"] == "'+cmd|' /C calc'!A0"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    code, text, _ = run_cli(capsys, "log", "export", "--client", "acme", "--month", "2026-10")
    views = [json.loads(line) for line in text.splitlines()]
    assert views[1]["symptom"] == FORGED_SYMPTOM
    assert views[1]["engineer"] == "+cmd|' /C calc'!A0"
    assert terminal_safe(text)


def test_csv_writer_every_cell_goes_through_csv_cell() -> None:
    out = io.StringIO()
    CSVWriter(out).writerow(["@SUM(1)", 3, None, "ok"])
    assert out.getvalue() == "'@SUM(1),3,,ok\n"


def test_log_and_status_tables_show_escapes_and_json_stays_exact(
    hostile_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "log")
    assert code == 0
    assert terminal_safe(out)
    assert len(out.rstrip("\n").split("\n")) == 3  # the header and two runs: no forged row
    assert "restic: \\x1b[31mred\\x1b[0m\\rrecoverd: all good\\n<img" in out
    code, out, _ = run_cli(capsys, "log", "--json")
    assert terminal_safe(out)
    views = [json.loads(line) for line in out.splitlines()]
    assert views[0]["error"].startswith(f"restic: {ESC}\rrecoverd: all good\n")
    assert views[1]["symptom"] == FORGED_SYMPTOM
    code, out, _ = run_cli(capsys, "status")
    assert terminal_safe(out)
    assert len(out.rstrip("\n").split("\n")) == 2
    assert "\\x1b[31mred" in out


def test_cli_stream_escapes_messages_but_keeps_progress_control(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from recoverd.output import TerminalText, raw_stream

    raw = io.StringIO()
    shown = TerminalText(raw)
    print(f"error: {ESC}\rforged\nsecond line", file=shown)  # type: ignore[arg-type]
    assert raw.getvalue() == "error: \\x1b[31mred\\x1b[0m\\rforged\nsecond line\n"
    assert raw_stream(shown) is raw  # type: ignore[arg-type]


# --- a real backup over ssh: hostile file names and a hostile remote error ---------------------


@pytest.fixture
def place(tmp_path: Path, sshd: ThrowawaySSHD, monkeypatch: pytest.MonkeyPatch) -> Workplace:
    return Workplace(tmp_path, sshd, monkeypatch)


@pytest.mark.slow
def test_restore_plan_over_ssh_shows_hostile_file_names_escaped_json_exact(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = place.root / "tree"
    tree.mkdir()
    for name in HOSTILE_NAMES:
        (tree / name).write_text("original\n")
    place.write_policy([tree])
    code, out, err = run_cli(capsys, "backup", "ws-042")
    assert code == 0, err
    for name in HOSTILE_NAMES:
        (tree / name).write_text("changed since the backup\n")
    code, out, err = run_cli(capsys, "restore", "ws-042", "--in-place", "--dry-run")
    assert code == 0, err
    assert terminal_safe(out) and terminal_safe(err)
    for name in HOSTILE_NAMES:
        assert f"{tree}/{visible(name)}" in out
    assert f"{tree}/\\x1b[31mred\\x1b[0m.txt" in out
    assert f"{tree}/carriage\\rreturn.txt" in out
    assert f"{tree}/bidi\\u202etxt.exe" in out
    assert not [ln for ln in out.split("\n") if ln.startswith("  creates    999")]
    code, out, _ = run_cli(capsys, "restore", "ws-042", "--in-place", "--dry-run", "--json")
    assert terminal_safe(out)
    (plan,) = [json.loads(line)["plan"] for line in out.splitlines()]
    assert {f"{tree}/{name}" for name in HOSTILE_NAMES} <= set(plan["replaced"])


@pytest.mark.slow
def test_remote_error_with_escapes_is_shown_escaped_on_one_line(
    place: Workplace, capsys: pytest.CaptureFixture[str]
) -> None:
    restic = place.root / "hostile-restic"
    restic.write_text(
        "#!/bin/sh\n"
        "printf 'Fatal: \\033[2J\\033[31mdisk on fire\\r\\nrecoverd: all good\\n' >&2\n"
        "exit 1\n"
    )
    restic.chmod(restic.stat().st_mode | stat.S_IXUSR)
    place.write_policy([place.root], restic=restic)
    code, out, err = run_cli(capsys, "backup", "ws-042")
    assert code == 1
    assert terminal_safe(out) and terminal_safe(err)
    assert "\\x1b[2J\\x1b[31mdisk on fire" in out + err
    assert not [ln for ln in (out + err).split("\n") if ln.startswith("recoverd: all good")]
    code, out, _ = run_cli(capsys, "log")
    assert terminal_safe(out) and len(out.rstrip("\n").split("\n")) == 2
    code, out, _ = run_cli(capsys, "log", "--json")
    (view,) = [json.loads(line) for line in out.splitlines()]
    assert "\x1b[2J\x1b[31mdisk on fire" in view["error"]


# --- deep policies ---------------------------------------------------------------------------


def deep_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (f"deep = {deep_arrays(500)}\n", "line 4: arrays and inline tables nested more than 16"),
        (
            "deep = " + "{ a = " * 500 + "1" + " }" * 500 + "\n",
            "line 4: arrays and inline tables nested more than 16",
        ),
        ("deep." + ".".join(["k"] * 3000) + " = 1\n", "client.deep.k.k...: nested more than 16"),
    ],
    ids=["arrays", "inline-tables", "dotted-keys"],
)
@pytest.mark.parametrize("command", [["check"], ["status"], ["machines"], ["plan"]])
def test_deep_policy_every_command_exit_2_with_where(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    problem: str,
    command: list[str],
) -> None:
    (tmp_path / "acme.toml").write_text(POLICY.replace('restore_sla = "4h"\n', f"{extra}"))
    code, _, err = run_cli(capsys, "--policies", str(tmp_path), "--state", str(tmp_path), *command)
    assert code == 2
    assert "Traceback" not in err
    assert f"{tmp_path}/acme.toml: {problem}" in err


def test_deep_policy_log_still_lists_runs(
    hostile_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = hostile_log / "policies" / "acme.toml"
    policy.write_text(f"deep = {deep_arrays(1000)}\n" + POLICY)
    code, out, _ = run_cli(capsys, "log")
    assert code == 0 and len(out.rstrip("\n").split("\n")) == 3


def test_daemon_reload_deep_policy_keeps_old_policies_and_logs_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "acme.toml").write_text(POLICY)
    ctl = Controller(tmp_path, tmp_path / "state")
    daemon = Scheduler(ctl)
    before = ctl.policies
    (tmp_path / "acme.toml").write_text(POLICY + f"deep = {deep_arrays(800)}\n")
    with caplog.at_level(logging.ERROR):
        assert daemon.reload() is False
    assert ctl.policies is before
    assert "nested more than 16 levels deep" in caplog.text


@pytest.mark.slow
def test_daemon_sighup_with_deep_policy_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policies").mkdir()
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("TEST_NAS_PASSWORD", "daemon-Pa55word-nas")
    monkeypatch.setenv("TEST_OFFSITE_PASSWORD", "daemon-Pa55word-offsite")
    policy = tmp_path / "policies" / "acme.toml"
    policy.write_text(local_machine(tmp_path))
    daemon = Daemon(tmp_path)
    try:
        deadline = time.monotonic() + 20
        while "daemon started" not in daemon.stderr:
            assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.stderr
            time.sleep(0.1)
        policy.write_text(CLIENT.format(root=tmp_path) + f"deep = {deep_arrays(500)}\n")
        daemon.process.send_signal(signal.SIGHUP)
        while "policy reload refused" not in daemon.stderr:
            assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.stderr
            time.sleep(0.1)
        assert "nested more than 16 levels deep" in daemon.stderr
        assert "RecursionError" not in daemon.stderr
        assert daemon.process.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.process.kill()


# --- out-of-range values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('restore_sla = "4h"', 'restore_sla = "1000000000d"', "client.restore_sla"),
        ('restore_sla = "4h"', f'restore_sla = "{"9" * 5000}d"', "client.restore_sla"),
        ('restore_sla = "4h"', 'restore_sla = "367d"', "client.restore_sla"),
        (
            'every = "day at 01:30"',
            f'every = "{"9" * 5000} hours"',
            "machines.ws-1.levels[0].every",
        ),
        (
            'every = "day at 01:30"',
            "keep = { last = 9223372036854775807 }",
            "machines.ws-1.levels[0].keep.last",
        ),
        (
            'every = "day at 01:30"',
            'keep = { within = "99999999999999999999y" }',
            "machines.ws-1.levels[0].keep.within",
        ),
        (
            'address = "127.0.0.1"',
            'address = "127.0.0.1"\nconnect_timeout = 1e300',
            "machines.ws-1.connect_timeout",
        ),
        ('paths = ["/home"]', 'paths = ["/home\\u0000"]', "machines.ws-1.levels[0].paths"),
        ('name = "Acme', 'name = "\\u001b]0;pwned\\u0007Acme', "client.name"),
        ('password = "env:NOPE"', 'password = "file:/etc/x\\u0000"', "repositories.nas.password"),
    ],
)
def test_out_of_range_policy_value_is_policy_error_with_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, where: str
) -> None:
    assert old in POLICY
    (tmp_path / "acme.toml").write_text(POLICY.replace(old, new))
    code, _, err = run_cli(capsys, "--policies", str(tmp_path), "check")
    assert code == 2, err
    assert "Traceback" not in err and terminal_safe(err)
    assert f"acme.toml: {where}" in err


def test_sample_out_of_range_is_policy_error(tmp_path: Path) -> None:
    (tmp_path / "acme.toml").write_text(
        POLICY + '[[machines.ws-1.levels]]\nname = "drill"\nkind = "verify"\nof = "nightly"\n'
        'sample = "99999999999999999999"\n'
    )
    with pytest.raises(PolicyError, match=r"levels\[1\]\.sample"):
        load_policies(tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--client", "acme", "--month", "0000-01"], "the year must be 1970..9998"),
        (["report", "--client", "acme", "--month", "9999-12"], "the year must be 1970..9998"),
        (["log", "export", "--client", "acme", "--month", "0000-01"], "the year must be"),
        (["log", "--since", "99999999999d"], "an age of at most 36600d"),
        (["log", "--since", "9" * 5000 + "h"], "an age of at most"),
        (["log", "--since", "0001-01-01"], "the year must be 1970..9998"),
        (["plan", "--days", "99999999999"], "--days must be 0..366"),
        (["daemon", "--tick", "nan"], "--tick must be"),
        (["daemon", "--tick", "inf"], "--tick must be"),
        (["daemon", "--grace", "1e999"], "--grace must be"),
    ],
)
def test_out_of_range_argument_is_usage_error(
    hostile_log: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert message in err and "Traceback" not in err


@given(st.text(max_size=30) | st.from_regex(r"\A[0-9]{1,30}[dhm]\Z"))
@example("99999999999d")
@example("0001-01-01")
def test_parse_since_any_text_is_an_instant_or_usage_error(text: str) -> None:
    try:
        moment = parse_since(text)
    except UsageError:
        return
    assert moment.tzinfo is not None and 1900 < moment.year < 10000


@given(st.text(max_size=12) | st.from_regex(r"\A[0-9]{4}-[0-9]{2}\Z"))
@example("0000-01")
@example("9999-12")
def test_month_parse_any_text_is_a_month_or_usage_error(text: str) -> None:
    try:
        month = Month.parse(text, "Pacific/Kiritimati")
    except UsageError:
        return
    assert month.start < month.end


HOSTILE_VALUES = st.one_of(
    st.integers(),
    st.floats(),
    st.from_regex(r"\A[0-9]{1,40}(d|h|m|y|%| hours| minutes)?\Z"),
    st.text(max_size=8),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2), max_leaves=40),
)
"""Values no generated-policy test fed before: unbounded integers, long digit strings in
every unit, nested lists."""


@st.composite
def hostile_policies(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        container, key = draw(st.sampled_from(spots(document)))
        container[key] = draw(HOSTILE_VALUES)
    return document


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=hostile_policies())
def test_load_policies_hostile_values_load_or_report_paths(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "mutant.toml"
    path.write_text(to_toml(document), encoding="utf-8")
    try:
        load_policies(tmp_path)
    except PolicyError as exc:
        for problem in exc.problems:
            assert problem.startswith(f"{path}: ") and "\n" not in problem, problem


# --- secrets ---------------------------------------------------------------------------------


@given(st.binary(max_size=40))
def test_resolve_file_any_bytes_give_text_or_secret_error(data: bytes) -> None:
    # hypothesis runs this many times in one tmp dir: a fixed name is rewritten each time
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"recoverd-secret-{os.getpid()}"
    path.write_bytes(data)
    try:
        value = resolve_file(str(path))
    except SecretError as exc:
        assert str(path) in str(exc)
    else:
        assert value == data.split(b"\n", 1)[0].removesuffix(b"\r").decode("utf-8")
    finally:
        path.unlink()


def test_resolve_file_not_utf8_or_endless_is_secret_error() -> None:
    with pytest.raises(SecretError, match="is not UTF-8 text"):
        resolve_file("/proc/self/exe")
    with pytest.raises(SecretError, match="no line break in its first 65536 bytes"):
        resolve_file("/dev/zero")


def test_resolve_command_not_utf8_is_secret_error() -> None:
    with pytest.raises(SecretError, match="the output of the secret command is not UTF-8"):
        resolve_command("printf '\\377\\376\\n'")


def test_snapshots_with_non_utf8_secret_file_is_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "nas.pass"
    secret.write_bytes(b"\xff\xfepassword\n")
    (tmp_path / "acme.toml").write_text(
        POLICY.replace("env:NOPE", f"file:{secret}").replace(
            'address = "127.0.0.1"', 'transport = "local"'
        )
    )
    code, _, err = run_cli(
        capsys, "--policies", str(tmp_path), "--state", str(tmp_path / "s"), "snapshots", "ws-1"
    )
    assert code == 1
    assert f"secret file '{secret}' is not UTF-8 text" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "entry",
    ["a string", 42, None, [1, 2], {"nonce": 1, "sealed": "00", "key_id": "x"}, {}],
)
def test_vault_entry_of_wrong_type_is_secret_error_and_removable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: object
) -> None:
    vault = Vault(tmp_path)
    vault.set("good", "hunter2-hunter2")
    content = json.loads(vault.path.read_text())
    content["secrets"]["bad"] = entry
    vault.path.write_text(json.dumps(content))
    with pytest.raises(SecretError, match="entry 'bad' is not a sealed secret"):
        vault.get("good")
    code, _, err = run_cli(capsys, "--state", str(tmp_path), "vault", "list")
    assert code == 1 and "Traceback" not in err
    vault.remove("bad")
    assert vault.get("good") == "hunter2-hunter2"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(st.sampled_from(["a", "b"]), JSON_VALUES, max_size=2))
def test_vault_any_edited_content_gives_secrets_or_secret_error(
    tmp_path: Path, entries: dict[str, Any]
) -> None:
    vault = Vault(tmp_path)
    if not vault.key_path.exists():
        vault.set("seed", "hunter2-hunter2")
    vault.path.write_text(json.dumps({"format": 1, "secrets": entries}))
    for name in ("a", "b"):
        try:
            vault.names()
            vault.get(name)
        except SecretError:
            pass


@given(st.text(max_size=40) | st.from_regex(r"\A[0-9]{1,40} (hours|minutes)\Z"))
def test_parse_every_any_text_is_a_schedule_or_value_error(text: str) -> None:
    from recoverd.policy.every import parse_every

    try:
        every = parse_every(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert every.period > timedelta(0)
