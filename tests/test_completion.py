"""Shell completion: the bash script completes commands, options, and the machine and level
names of the policies, run by a real bash; zsh sources the same through bashcompinit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from recoverd.cli import main

POLICIES = Path(__file__).resolve().parent.parent / "policies"
RECOVERD = str(Path(sys.executable).with_name("recoverd"))


@cache
def bash_script() -> str:
    return subprocess.run(
        [RECOVERD, "completion", "bash"], capture_output=True, text=True, check=True
    ).stdout


def complete(*words: str, policies: Path = POLICIES) -> list[str]:
    """Return what bash offers for the command line ``recoverd WORDS`` (the last is the word
    being completed)."""
    script = bash_script()
    quoted = " ".join(f"'{w}'" for w in (RECOVERD, *words))
    probe = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
        '_recoverd; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RECOVERD_POLICIES": str(policies)},
        timeout=60,
        check=True,
    )
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_completion_bash_completes_commands_and_their_options() -> None:
    assert "restore" in complete("")
    assert complete("ba") == ["backup"]
    assert complete("restore", "ws-042", "--dr") == ["--dry-run"]
    assert set(complete("restore", "ws-042", "--")) >= {"--level", "--to", "--dry-run", "--yes"}
    assert complete("log", "") == ["verify", "head", "pubkey", "export"]


def test_completion_bash_completes_machine_and_level_names_from_the_policies() -> None:
    assert complete("backup", "") == ["ws-042", "ws-043", "srv-01", "srv-02", "fin-pc"]
    assert complete("backup", "srv") == ["srv-01", "srv-02"]
    assert complete("backup", "ws-042", "--level", "") == ["nightly", "weekly-image", "drill"]
    # Once the machine is named, options follow.
    assert "--level" in complete("restore", "srv-01", "--level", "hourly", "")
    assert "acme" in complete("machines", "--client", "")


def test_completion_names_stay_silent_on_a_broken_policy(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[client\n")
    assert complete("backup", "", policies=tmp_path) == []


def test_completion_zsh_uses_the_bash_script_through_bashcompinit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert "bashcompinit" in script and "complete -o default -F _recoverd recoverd" in script
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-f", "-c", script], check=True, timeout=60)
