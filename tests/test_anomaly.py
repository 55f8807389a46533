"""Anomalies of files runs: a mass change (ransomware) or a snapshot that shrinks (mass
deletion), against the level's previous good backup, with the real restic over the real sshd."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_backup_e2e import Workplace

from recoverd.actions.backup import find_anomaly
from recoverd.cli import main
from recoverd.testing import ThrowawaySSHD


def test_find_anomaly_small_folders_never_count() -> None:
    stats = {"files_processed": 5, "files_new": 0, "files_changed": 5, "bytes_processed": 50}
    before = {"files_processed": 19, "bytes_processed": 10_000}
    assert find_anomaly(stats, before, 0.5, 0.5) == {}


def test_find_anomaly_bytes_shrink_counts_though_files_stay() -> None:
    stats = {"files_processed": 100, "files_changed": 1, "bytes_processed": 100}
    before = {"files_processed": 100, "bytes_processed": 1000}
    found = find_anomaly(stats, before, 0.5, 0.5)
    assert set(found) == {"shrunk"} and found["shrunk"]["share"] == 0.9


def test_mass_change_then_mass_deletion_are_recorded_as_anomalies(
    tmp_path: Path,
    sshd: ThrowawaySSHD,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    place = Workplace(tmp_path, sshd, monkeypatch)
    tree = tmp_path / "docs"
    tree.mkdir()
    for i in range(40):
        (tree / f"doc-{i:02}.txt").write_bytes(os.urandom(2000))
    place.write_policy([tree])
    assert main(["backup", "ws-042"]) == 0
    first = place.log(capsys)[0]
    assert "anomaly" not in first["stats"]  # the first backup: all new, as it should be

    for i in range(30):  # "encrypted" overnight
        (tree / f"doc-{i:02}.txt").write_bytes(os.urandom(2000))
    assert main(["backup", "ws-042"]) == 0
    second = [v for v in place.log(capsys) if v["action"] == "backup"][-1]
    assert second["state"] == "succeeded"
    anomaly = second["stats"]["anomaly"]
    assert anomaly["changed"] == {"files": 30, "of": 40, "share": 0.75, "limit": 0.5}
    assert anomaly["against"]["run"] == first["id"]
    assert anomaly["against"]["snapshot"] == first["snapshot"]

    for i in range(35):  # deleted
        (tree / f"doc-{i:02}.txt").unlink()
    assert main(["backup", "ws-042"]) == 0
    third = [v for v in place.log(capsys) if v["action"] == "backup"][-1]
    shrunk = third["stats"]["anomaly"]["shrunk"]
    assert shrunk["files"] == 5 and shrunk["files_before"] == 40 and shrunk["share"] == 0.875
    assert "changed" not in third["stats"]["anomaly"]
    assert third["stats"]["anomaly"]["against"]["run"] == second["id"]

    assert main(["backup", "ws-042"]) == 0  # nothing changed: nothing unusual
    fourth = [v for v in place.log(capsys) if v["action"] == "backup"][-1]
    assert "anomaly" not in fourth["stats"]

    month = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    assert main(["report", "--client", "acme", "--month", month]) == 0
    report = capsys.readouterr().out
    assert "### Offline and anomalies" in report
    assert "| anomaly: mass change | 30 of 40 files new or changed (75%, limit 50%)" in report
    assert "| anomaly: snapshot shrank | 5 files, " in report and "(-88%, limit 50%)" in report


POLICY_KEYS = """\
[client]
name = "Acme"

[repositories.nas]
url = "/srv/repo"
password = "env:PW"

[machines.ws-042]
address = "10.0.0.42"
stall_after = "{stall}"
offline = "{offline}"
wake = true
wake_via = "{via}"
wake_to = "{wake_to}"
alert_after = "2d"

[[machines.ws-042.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
anomaly_changed = "{changed}"
stall_after = "2h"

[machines.gw]
address = "10.0.0.1"
role = "server"
mac = "aa:bb:cc:dd:ee:ff"
"""


def test_policy_keys_for_unattended_runs_are_checked_with_their_paths(tmp_path: Path) -> None:
    from recoverd.errors import PolicyError
    from recoverd.policy import load_policies

    bad = POLICY_KEYS.format(
        stall="soon", offline="maybe", via="nobody", wake_to="nowhere", changed="150%"
    )
    (tmp_path / "acme.toml").write_text(bad)
    with pytest.raises(PolicyError) as raised:
        load_policies(tmp_path)
    text = "\n".join(raised.value.problems)
    assert "machines.ws-042.stall_after: 'soon' is not a duration like '30m'" in text
    assert "machines.ws-042.offline: unknown value 'maybe'" in text
    assert "machines.ws-042.mac: missing; wake = true sends its Wake-on-LAN packet to it" in text
    assert "machines.ws-042.wake_to: 'nowhere' is not 'ADDRESS:PORT'" in text
    assert "machines.ws-042.levels[0].anomaly_changed: '150%' is not a share" in text

    good = POLICY_KEYS.format(
        stall="45m", offline="fail", via="gw", wake_to="192.168.1.255:9", changed="80%"
    ).replace("wake = true", 'wake = true\nmac = "52:54:00:12:34:56"')
    (tmp_path / "acme.toml").write_text(good)
    machines = load_policies(tmp_path).clients["acme"].machines
    ws, gw = machines["ws-042"], machines["gw"]
    assert (ws.stall_after, ws.offline, ws.wake_via, ws.alert_after) == (2700, "fail", "gw", 172800)
    (nightly,) = ws.levels
    assert nightly.anomaly_changed == 0.8 and ws.stall_after_for(nightly) == 7200
    assert (gw.offline, gw.wake, gw.stall_after, gw.anomaly_shrink) == ("fail", False, 1800, 0.5)
