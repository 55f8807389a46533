"""The command line imports only the module of the command it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recoverd.cli import build_parser, command_in, main
from recoverd.commands import MODULES


def test_every_command_module_registers_exactly_the_commands_listed_for_it() -> None:
    for module, names in MODULES.items():
        parser = build_parser(names[0])
        subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        assert tuple(subcommands) == names, module
    everything = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(everything) == [name for names in MODULES.values() for name in names]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["log", "--machine", "m7"], "log"),
        (["--policies", "status", "log"], "log"),
        (["--pol", "status", "log", "--since", "7d"], "log"),
        (["--state=/s", "--json", "status"], "status"),
        (["--st", "/s", "report", "--client", "acme"], "report"),
        (["--json", "--", "log"], None),
        (["--help"], None),
        ([], None),
    ],
)
def test_command_in_skips_global_options_and_their_values(
    argv: list[str], command: str | None
) -> None:
    assert command_in(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["--pol", "status", "log", "--since", "7d", "--state", "running"],
        ["--state", "/s", "--json", "status"],
        ["restore", "ws-1", "--level", "nightly", "--dry-run", "--policies", "/p"],
        ["log", "export", "--client", "acme", "--month", "2026-10"],
    ],
)
def test_the_parser_of_one_command_module_parses_as_the_full_parser(argv: list[str]) -> None:
    assert build_parser(command_in(argv)).parse_args(argv) == build_parser().parse_args(argv)


def test_a_short_command_imports_no_other_command_module(tmp_path: Path) -> None:
    code = (
        "import sys; from recoverd.cli import main; "
        f"main(['--policies', {str(tmp_path)!r}, '--state', {str(tmp_path)!r}, 'log']); "
        "print(sorted(m for m in sys.modules if m.startswith('recoverd.commands.') "
        "or m.startswith('recoverd.actions.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "['recoverd.commands.log']"


def test_main_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`recoverd plan | head -1`: once the reader is gone, no traceback, no message."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.toml").write_text(
        '[client]\nname = "Acme"\n[repositories.r]\nurl = "/srv/r"\npassword = "env:P"\n'
        '[machines.m]\ntransport = "local"\n[[machines.m.levels]]\nname = "often"\n'
        'kind = "files"\nrepository = "r"\npaths = ["/etc"]\nevery = "30 minutes"\n'
    )
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert reader.stdin is not None
    program = "import sys; from recoverd.cli import main; sys.exit(main())"
    places = ["--policies", str(tmp_path / "policies"), "--state", str(tmp_path / "state")]
    plan = subprocess.run(
        [sys.executable, "-c", program, *places, "plan", "--days", "365"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    reader.stdin.close()
    assert reader.stdout is not None
    first = reader.stdout.read()
    assert reader.wait(timeout=10) == 0
    assert first.startswith(b"TIME (LOCAL)")
    assert plan.stderr == b""
    assert plan.returncode == 141


def test_log_actions_take_the_state_directory_after_the_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``recoverd log head --state DIR`` reads DIR, as ``backup ... --state DIR`` does; before
    the action ``--state`` filters runs by their state."""
    state, policies = tmp_path / "state", tmp_path / "policies"
    policies.mkdir()
    assert main(["log", "head", "--policies", str(policies), "--state", str(state)]) == 1
    assert f"the maintenance log in {state} has no signed head" in capsys.readouterr().err
    assert main(["--state", str(state), "log", "--state", "failed", "--json"]) == 0
    assert capsys.readouterr().out == ""
