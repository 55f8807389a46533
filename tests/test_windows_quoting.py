"""Windows command lines, PowerShell literals and the Windows policy keys."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from recoverd import powershell
from recoverd.policy import load_policy_file
from recoverd.testing_windows import parse_literal, split_command_line

# Any text a command line can carry (no NUL), weighted towards what quoting gets wrong.
ARGUMENT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(" \t\"\\'‘’‚‛$`%^&|<>()!;,中")),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    ),
    max_size=20,
)


@given(st.lists(ARGUMENT, max_size=6))
def test_windows_command_line_splits_back_into_the_same_arguments(args: list[str]) -> None:
    line = powershell.command_line(["C:\\Program Files\\restic\\restic.exe", *args])
    assert split_command_line(line) == ["C:\\Program Files\\restic\\restic.exe", *args]


@given(ARGUMENT)
def test_windows_powershell_literal_keeps_any_text(text: str) -> None:
    quoted = powershell.literal(text)
    assert quoted[0] == quoted[-1] == "'"
    assert parse_literal(quoted[1:-1]) == text
    # Nothing inside can end the literal: every quote character comes doubled.
    inner = quoted[1:-1]
    for quote in powershell.SINGLE_QUOTES:
        assert inner.count(quote) % 2 == 0


def test_windows_encoded_command_round_trips_non_ascii() -> None:
    script = "Write-Output '中文 $HOME `x'"
    argv = powershell.encoded(script)
    assert argv[0] == "powershell.exe" and "-EncodedCommand" in argv
    assert all(c.isalnum() or c in "+/=-." for c in argv[-1])  # nothing to quote
    assert powershell.decode(argv) == script


def test_windows_start_process_reads_secrets_from_stdin_only() -> None:
    script = powershell.start_process(
        "C:\\restic.exe", ["backup", "C:\\O'Brien"], env_from_stdin=["RESTIC_PASSWORD"]
    )
    assert "$start.EnvironmentVariables['RESTIC_PASSWORD'] = [Console]::In.ReadLine()" in script
    assert "$start.Arguments = 'backup C:\\O''Brien'" in script


POLICY = """
[client]
name = "Example Ltd."

[machines.win]
transport = "winrm"
address = "win.example.lan"
auth = "certificate"
{keys}

[[machines.win.levels]]
name = "image"
kind = "image"
device = "all-critical"
{target}
"""


def problems(tmp_path: Path, keys: str = "", target: str = "target = 'E:'") -> list[str]:
    path = tmp_path / "example.toml"
    path.write_text(POLICY.format(keys=keys, target=target))
    _, found = load_policy_file(path)
    return [p.removeprefix(f"{path}: ") for p in found]


def test_windows_certificate_auth_needs_cert_and_key(tmp_path: Path) -> None:
    assert problems(tmp_path) == [
        "machines.win.cert: missing; required for winrm auth 'certificate'",
        "machines.win.cert_key: missing; required for winrm auth 'certificate'",
    ]
    assert problems(tmp_path, 'cert = "/etc/c.pem"\ncert_key = "/etc/c.key"') == []


def test_windows_image_level_needs_target(tmp_path: Path) -> None:
    keys = 'cert = "/etc/c.pem"\ncert_key = "/etc/c.key"'
    assert problems(tmp_path, keys, target="") == [
        "machines.win.levels[0].target: missing; required for image levels on winrm"
    ]
