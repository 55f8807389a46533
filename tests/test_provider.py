"""provider.toml and notification routes: the typed settings, and every problem at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_policy import BASE as CLIENT

from recoverd.errors import PolicyError
from recoverd.policy import load_policies
from recoverd.policy.model import INCIDENT_EVENTS

EXAMPLES = Path(__file__).resolve().parent.parent / "policies"


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(directory)
    return caught.value.problems


def test_load_policies_example_provider_is_typed() -> None:
    policies = load_policies(EXAMPLES)
    provider = policies.provider
    assert provider.name == "Hongyi IT Services"
    assert provider.timezone == "Asia/Shanghai"
    assert provider.engineers == {"lina": "Li Na", "zhang": "Zhang Wei"}
    assert provider.metrics_textfile == "/var/lib/node_exporter/textfile/recoverd.prom"
    assert provider.witness == ("acme/srv-01:/var/lib/recoverd-witness",)
    assert provider.source == EXAMPLES / "provider.toml"
    assert set(provider.routes) == {"oncall", "morning"}
    assert provider.routes["morning"].digest == "day at 07:30"
    assert provider.routes["oncall"].urls == ("env:ONCALL_URL",)
    assert [r.name for r in policies.routes_for("acme")] == ["oncall", "morning"]
    assert "provider" not in policies.clients


def test_load_policies_without_provider_file_has_defaults(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text(CLIENT)
    provider = load_policies(tmp_path).provider
    assert provider.source is None and provider.routes == {} and provider.timezone == "UTC"


def test_load_policies_provider_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text(CLIENT)
    (tmp_path / "provider.toml").write_text(
        """
[provider]
timezone = "Asia/Shanghi"
engineers = { lina = "Li Na", zhang = 3 }
databse = "env:DB"

[notify.oncall]
urls = ["env:ONCALL_URL", "mailto://user:hunter2@mail.example"]
on = ["failed", "overdu"]

[notify.team]
urls = ["env:TEAM"]
clients = ["exampel"]

[notify.morning]
urls = "env:MAIL"
on = ["failed"]
digest = "day at 07:30"

[metrics]
textfile = "relative.prom"

[audit]
witness = ["example/ws-2:/var/w", "nonsense"]

[machines.x]
"""
    )
    path = tmp_path / "provider.toml"
    found = [p.removeprefix(f"{path}: ") for p in problems_of(tmp_path)]
    assert found == [
        "machines: [machines] belongs in a client's policy file, not in provider.toml",
        "provider.timezone: unknown time zone 'Asia/Shanghi' (did you mean 'Asia/Shanghai'?);"
        " use a name like 'Asia/Shanghai'",
        "provider.engineers.zhang: expected the engineer's name (a string)",
        "provider.databse: unknown key (did you mean 'database'?)",
        "notify.oncall.urls[1]: not a secret reference with a known scheme; never write a "
        "password into a policy: use env:NAME or file:/path (schemes: env:, file:, command:, "
        "vault:; the value is not shown)",
        "notify.oncall.on[1]: unknown event 'overdu' (did you mean 'overdue'?); events: "
        "failed, overdue, stalled, drill-failed, anomaly, offline, resolved, digest",
        "notify.morning.digest: the route is not on 'digest'; add \"digest\" to `on`",
        "notify.team.clients[0]: no client 'exampel' (did you mean 'example'?)",
        "metrics.textfile: 'relative.prom' is not an absolute path",
        "audit.witness[0]: client 'example' has no machine 'ws-2' (did you mean 'ws-1'?)",
        "audit.witness[1]: 'nonsense' is not 'client/machine:/absolute/path'",
    ]
    assert not any("hunter2" in p for p in found)


def test_load_policies_client_file_route_covers_that_client(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text(
        CLIENT + '\n[notify.it]\nurls = ["env:EXAMPLE_IT"]\non = ["failed", "resolved"]\n'
    )
    (tmp_path / "other.toml").write_text(CLIENT.replace("Example", "Other"))
    policies = load_policies(tmp_path)
    route = policies.clients["example"].routes["it"]
    assert route.clients == ("example",) and route.on == ("failed", "resolved")
    assert [r.name for r in policies.routes_for("example")] == ["it"]
    assert policies.routes_for("other") == []


def test_load_policies_client_route_with_clients_is_misplaced(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text(
        CLIENT + '\n[notify.it]\nurls = ["env:EXAMPLE_IT"]\nclients = ["*"]\n'
    )
    assert problems_of(tmp_path) == [
        f"{tmp_path}/example.toml: notify.it.clients: a client file's route covers that "
        "client; list clients in provider.toml's routes"
    ]


def test_load_policies_client_route_cannot_take_the_digest(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text(
        CLIENT + '\n[notify.it]\nurls = ["env:IT"]\non = ["digest"]\ndigest = "day at 08:00"\n'
    )
    assert problems_of(tmp_path) == [
        f"{tmp_path}/example.toml: notify.it.{key}: the digest covers every client: route it "
        "in provider.toml"
        for key in ("digest", "on")
    ]


def test_load_policies_route_defaults_to_incidents_and_digest_time(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text(CLIENT)
    (tmp_path / "provider.toml").write_text(
        '[notify.a]\nurls = ["env:A"]\n[notify.b]\nurls = ["env:B"]\non = ["digest"]\n'
    )
    routes = load_policies(tmp_path).provider.routes
    assert routes["a"].on == INCIDENT_EVENTS and routes["a"].digest is None
    assert routes["b"].digest == "day at 07:30"


def test_load_policies_level_healthchecks_is_a_secret_reference(tmp_path: Path) -> None:
    text = CLIENT + 'healthchecks = "https://hc-ping.com/0b1c-uuid"\ngrace = "2x"\n'
    (tmp_path / "example.toml").write_text(text)
    found = problems_of(tmp_path)
    assert len(found) == 2
    assert "machines.ws-1.levels[0].healthchecks: not a secret reference" in found[0]
    assert "0b1c" not in found[0]
    assert "machines.ws-1.levels[0].grace: '2x' is not a duration" in found[1]
    (tmp_path / "example.toml").write_text(CLIENT + 'healthchecks = "env:HC"\ngrace = "6h"\n')
    level = load_policies(tmp_path).find_machine("ws-1").levels[0]
    assert (level.healthchecks, level.grace) == ("env:HC", "6h")


def test_check_command_reports_provider_problems_exit_2(tmp_path: Path, capsys) -> None:
    from recoverd.cli import main

    shutil.copy(EXAMPLES / "acme.toml", tmp_path / "acme.toml")
    (tmp_path / "provider.toml").write_text('[notify.x]\nurls = ["env:X"]\non = ["faild"]\n')
    assert main(["--policies", str(tmp_path), "--state", str(tmp_path / "s"), "check"]) == 2
    err = capsys.readouterr().err
    assert "provider.toml: notify.x.on[0]: unknown event 'faild' (did you mean 'failed'?)" in err


def test_check_command_names_the_provider_file(tmp_path: Path, capsys) -> None:
    from recoverd.cli import main

    assert main(["--policies", str(EXAMPLES), "--state", str(tmp_path), "check"]) == 0
    out = capsys.readouterr().out
    assert f"{EXAMPLES}/provider.toml: provider settings, 2 notification route(s)" in out
