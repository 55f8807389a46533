"""`recoverd service`: a systemd unit that runs the daemon from wherever recoverd is installed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.commands.service import unit_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "recoverd.service"


def exec_start(unit: str) -> list[str]:
    [line] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_service_unit_runs_this_installations_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--policies", str(tmp_path / "p"), "--state", str(tmp_path / "s"), "service"]
    assert main([*args, "--grace", "120"]) == 0
    unit = capsys.readouterr().out
    argv = exec_start(unit)
    assert argv[:3] == [sys.executable, "-m", "recoverd"]
    assert argv[3:] == [
        "daemon",
        "--policies",
        str(tmp_path / "p"),
        "--state",
        str(tmp_path / "s"),
        "--max-parallel",
        "4",
        "--grace",
        "120",
    ]
    assert "TimeoutStopSec=165" in unit  # above --grace + 30
    # The command the unit starts is this installation's recoverd.
    version = subprocess.run([*argv[:3], "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("recoverd ")
    if shutil.which("systemd-analyze"):
        (tmp_path / "recoverd.service").write_text(unit)
        checked = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / "recoverd.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "recoverd.service" not in checked.stderr, checked.stderr


def test_service_example_unit_is_the_output_for_opt_recoverd() -> None:
    expected = unit_text(
        "/opt/recoverd/.venv/bin/python", Path("/etc/recoverd/policies"), Path("/var/lib/recoverd")
    )
    assert EXAMPLE.read_text() == expected
