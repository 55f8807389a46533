"""Loading and validating policy files: the model built, and every problem reported at once."""

from __future__ import annotations

import copy
import math
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recoverd.errors import PolicyError
from recoverd.policy import Client, load_policies, load_policy_file

EXAMPLES = Path(__file__).resolve().parent.parent / "policies"
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeWd906fd1ErawaVhxtJbCDdnfFjtvYaZqxvLD6vO7s"
ECDSA_BLOB = (
    "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNZNtn1GKESotvvjEyOeL9cUy8tBSVLpOyw+"
    "VRrb5lG72oJ8qqnLdKDQVm7XaxwCkRGlCgK+CR+QayMph1OxLbw="
)

BASE = """
[client]
name = "Example Ltd."

[repositories.nas]
url = "sftp:backup@nas.example.lan:/srv/restic"
password = "env:RESTIC_PASSWORD"

[machines.ws-1]
address = "10.0.0.1"

[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
every = "day at 01:30"
"""


def check(tmp_path: Path, text: str, name: str = "example.toml") -> list[str]:
    """Write ``text`` as a policy file; return its problems without the ``FILE: `` prefix."""
    path = tmp_path / name
    path.write_text(text)
    client, problems = load_policy_file(path)
    assert (client is None) == bool(problems)
    for problem in problems:
        assert problem.startswith(f"{path}: "), problem
    return [problem.removeprefix(f"{path}: ") for problem in problems]


def load(tmp_path: Path, text: str) -> Client:
    path = tmp_path / "example.toml"
    path.write_text(text)
    client, problems = load_policy_file(path)
    assert problems == []
    assert client is not None
    return client


def test_load_policies_example_policy_loads() -> None:
    policies = load_policies(EXAMPLES)
    acme = policies.clients["acme"]
    assert acme.name == "Acme Trading Co."
    assert acme.timezone == "Asia/Shanghai"
    assert sorted(acme.repositories) == ["nas", "offsite"]
    ws = policies.find_machine("ws-042")
    assert [lv.name for lv in ws.levels] == ["nightly", "weekly-image", "drill"]
    assert ws.level("nightly").paths == ("/home", "/etc")
    assert ws.host_key is not None and ws.host_key.startswith("ssh-ed25519 ")
    windows = policies.find_machine("acme/fin-pc")
    assert (windows.transport, windows.port, windows.https) == ("winrm", 5986, True)


def test_load_policies_example_policy_uses_every_schedule_form() -> None:
    text = (EXAMPLES / "acme.toml").read_text()
    for form in (
        r'"day at ',
        r'"(monday|tuesday|wednesday|thursday|friday|saturday|sunday) at ',
        r'"weekday at ',
        r'"\w{3},\w{3}[\w,]* at ',
        r'"\d+ hours"',
        r'"\d+ minutes"',
        r'"month on day \d+ at ',
        r'"month on last day at ',
    ):
        assert re.search(form, text), form


def test_load_policy_file_template_merges_keys_and_levels(tmp_path: Path) -> None:
    client = load(
        tmp_path,
        """
[client]
name = "Example Ltd."
[repositories.nas]
url = "/srv/restic"
password = "file:/etc/recoverd/nas.pass"

[templates.ws]
user = "backup"
role = "server"
[[templates.ws.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
[[templates.ws.levels]]
name = "image"
kind = "image"
repository = "nas"
device = "/dev/sda"

[machines.ws-1]
template = "ws"
address = "ws-1.example.lan"
role = "workstation"
[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/srv"]
[[machines.ws-1.levels]]
name = "drill"
kind = "verify"
of = "image"
""",
    )
    machine = client.machines["ws-1"]
    assert machine.user == "backup"  # from the template
    assert machine.role == "workstation"  # the machine's own key wins
    assert [lv.name for lv in machine.levels] == ["nightly", "image", "drill"]
    assert machine.level("nightly").paths == ("/srv",)  # replaced in place


TEMPLATED = """
[client]
name = "Example Ltd."
[repositories.nas]
url = "/srv/restic"
password = "file:/etc/recoverd/nas.pass"

[templates.ws]
[[templates.ws.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["/home"]
exclude = ["*.tmp"]
every = "day at 01:30"
keep = { daily = 7 }
[[templates.ws.levels]]
name = "image"
kind = "image"
repository = "nas"
device = "/dev/sda"
every = "sunday at 03:00"

[machines.ws-1]
template = "ws"
address = "ws-1.example.lan"
[[machines.ws-1.levels]]
name = "drill"
kind = "verify"
of = "nightly"
"""


def test_load_policy_file_level_without_kind_amends_the_template_level(tmp_path: Path) -> None:
    client = load(
        tmp_path,
        TEMPLATED
        + """[[machines.ws-1.levels]]
name = "nightly"
paths = ["/srv", "/etc"]
every = "day at 23:00"
[[machines.ws-1.levels]]
name = "image"
device = "/dev/nvme0n1"
""",
    )
    machine = client.machines["ws-1"]
    nightly = machine.level("nightly")
    assert nightly.kind == "files" and nightly.repository == "nas"  # from the template
    assert nightly.paths == ("/srv", "/etc") and nightly.every == "day at 23:00"  # amended
    assert nightly.exclude == ("*.tmp",) and nightly.keep == {"daily": 7}  # kept
    assert machine.level("image").device == "/dev/nvme0n1"
    # Listed as a reader expects: what is backed up, then the drills of it.
    assert [lv.name for lv in machine.levels] == ["nightly", "image", "drill"]


def test_load_policy_file_amendment_with_a_key_of_another_kind_is_reported(
    tmp_path: Path,
) -> None:
    problems = check(
        tmp_path, TEMPLATED + '[[machines.ws-1.levels]]\nname = "nightly"\ndevice = "/dev/sdb"\n'
    )
    assert problems == [
        "machines.ws-1.levels[1].device: 'device' is a key of image levels, not of files levels"
    ]


def test_load_policy_file_level_without_kind_naming_no_template_level_is_reported(
    tmp_path: Path,
) -> None:
    problems = check(
        tmp_path, TEMPLATED + '[[machines.ws-1.levels]]\nname = "nightlly"\npaths = ["/srv"]\n'
    )
    assert problems == [
        "machines.ws-1.levels[1].kind: missing required key (or name a level of the template "
        "to amend it: nightly, image)"
    ]


def test_load_policy_file_defaults_filled_in(tmp_path: Path) -> None:
    client = load(tmp_path, BASE)
    assert (client.id, client.timezone, client.engineer) == ("example", "UTC", None)
    machine = client.machines["ws-1"]
    assert (machine.transport, machine.port, machine.user) == ("ssh", 22, "root")
    assert (machine.role, machine.restore) == ("workstation", "files-in-place")
    assert machine.level("nightly").every == "day at 01:30"


@pytest.mark.parametrize(("https", "port"), [("true", 5986), ("false", 5985)])
def test_load_policy_file_winrm_port_follows_https(tmp_path: Path, https: str, port: int) -> None:
    client = load(
        tmp_path,
        BASE
        + f"""
[machines.win]
transport = "winrm"
address = "win.example.lan"
https = {https}
user = "backup"
password = "env:WIN_PASSWORD"
""",
    )
    assert client.machines["win"].port == port
    assert client.machines["win"].user == "backup"


def test_load_policy_file_missing_keys_reported(tmp_path: Path) -> None:
    text = BASE.replace('url = "sftp:backup@nas.example.lan:/srv/restic"\n', "")
    text = text.replace('paths = ["/home"]\n', "").replace('name = "nightly"\n', "")
    assert check(tmp_path, text) == [
        "repositories.nas.url: missing required key",
        "machines.ws-1.levels[0].name: missing required key",
        "machines.ws-1.levels[0].paths: missing; required for files levels",
    ]


def test_load_policy_file_missing_client_table_reported(tmp_path: Path) -> None:
    text = BASE.replace('[client]\nname = "Example Ltd."\n', "")
    assert check(tmp_path, text) == ["client: missing required table [client]"]


def test_load_policy_file_missing_address_reported(tmp_path: Path) -> None:
    text = BASE.replace('address = "10.0.0.1"\n', "")
    assert check(tmp_path, text) == ["machines.ws-1.address: missing; required for transport 'ssh'"]


def test_load_policy_file_local_machine_needs_no_address(tmp_path: Path) -> None:
    text = BASE.replace('address = "10.0.0.1"\n', 'transport = "local"\n')
    machine = load(tmp_path, text).machines["ws-1"]
    assert (machine.address, machine.port, machine.user) == (None, None, None)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nport = "22"',
            "machines.ws-1.port: expected an integer, found string '22'",
        ),
        (
            'paths = ["/home"]',
            'paths = "/home"',
            "machines.ws-1.levels[0].paths: expected a list of strings, found string '/home'",
        ),
        (
            'paths = ["/home"]',
            'paths = ["/home", 3]',
            "machines.ws-1.levels[0].paths[1]: expected a string, found integer 3",
        ),
        (
            'name = "Example Ltd."',
            "name = 3",
            "client.name: expected a string, found integer 3",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nhttps = "yes"',
            "machines.ws-1.https: expected a boolean (true or false), found string 'yes'",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nconnect_timeout = 0',
            "machines.ws-1.connect_timeout: must be a positive number of seconds, not 0",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nport = 0',
            "machines.ws-1.port: must be a positive integer, not 0",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nport = 65536',
            "machines.ws-1.port: 65536 is not a port (1..65535)",
        ),
        (
            'password = "env:RESTIC_PASSWORD"',
            'password = "env:RESTIC_PASSWORD"\nmax_parallel = 0',
            "repositories.nas.max_parallel: must be a positive integer, not 0",
        ),
        (
            'every = "day at 01:30"',
            "every = 1",
            "machines.ws-1.levels[0].every: expected a string, found integer 1",
        ),
    ],
)
def test_load_policy_file_wrong_type_names_expected_and_found(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    assert check(tmp_path, BASE.replace(old, new)) == [problem]


def test_load_policy_file_machines_not_a_table_reported(tmp_path: Path) -> None:
    text = BASE[: BASE.index("[machines")].replace("[client]", 'machines = "ws-1"\n[client]')
    assert check(tmp_path, text) == ["machines: expected a table, found string 'ws-1'"]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            'address = "10.0.0.1"',
            'adress = "10.0.0.1"',
            "machines.ws-1.adress: unknown key (did you mean 'address'?)",
        ),
        (
            'name = "Example Ltd."',
            'name = "Example Ltd."\nengineeer = "Wang Lei"',
            "client.engineeer: unknown key (did you mean 'engineer'?)",
        ),
        (
            'every = "day at 01:30"',
            'every = "day at 01:30"\nexcludes = ["*.tmp"]',
            "machines.ws-1.levels[0].excludes: unknown key (did you mean 'exclude'?)",
        ),
        (
            "[client]",
            "[clients]",
            "clients: unknown key (did you mean 'client'?)",
        ),
        (
            'password = "env:RESTIC_PASSWORD"',
            'password = "env:RESTIC_PASSWORD"\ncolour = "red"',
            "repositories.nas.colour: unknown key; known keys: url, password, max_parallel",
        ),
    ],
)
def test_load_policy_file_unknown_key_hints(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    assert problem in check(tmp_path, BASE.replace(old, new))


def test_load_policy_file_key_of_other_kind_names_its_kind(tmp_path: Path) -> None:
    text = BASE.replace('paths = ["/home"]', 'paths = ["/home"]\ndevice = "/dev/sda"')
    assert check(tmp_path, text) == [
        "machines.ws-1.levels[0].device: 'device' is a key of image levels, not of files levels"
    ]


def test_load_policy_file_undefined_repository_hints(tmp_path: Path) -> None:
    text = BASE.replace('repository = "nas"', 'repository = "naz"')
    assert check(tmp_path, text) == [
        "machines.ws-1.levels[0].repository: no repository 'naz' in this file "
        "(did you mean 'nas'?); defined: nas"
    ]


def test_load_policy_file_undefined_template_hints(tmp_path: Path) -> None:
    text = (
        BASE.replace('address = "10.0.0.1"', 'address = "10.0.0.1"\ntemplate = "workstaton"')
        + '[templates.workstation]\nuser = "backup"\n'
    )
    assert check(tmp_path, text) == [
        "machines.ws-1.template: no template 'workstaton' in this file "
        "(did you mean 'workstation'?); defined: workstation"
    ]


def test_load_policy_file_template_problem_reported_once_at_template(tmp_path: Path) -> None:
    text = (
        BASE.replace('address = "10.0.0.1"', 'address = "10.0.0.1"\ntemplate = "ws"')
        + '[machines.ws-2]\naddress = "10.0.0.2"\ntemplate = "ws"\n'
        + '[templates.ws]\n[[templates.ws.levels]]\nname = "x"\nkind = "verify"\nof = "nightly"\n'
        + 'every = "dayly at 01:00"\n'
    )
    found = check(tmp_path, text)
    assert len(found) == 2  # ws-2 has no 'nightly': an error of the merged machine
    assert found[0].startswith(
        "templates.ws.levels[0].every: unknown schedule 'dayly at 01:00' "
        "(did you mean 'day at 01:00'?); forms: "
    )
    assert (
        found[1]
        == "templates.ws.levels[0].of: machine 'ws-2' has no level 'nightly'; its levels: x"
    )


def test_load_policy_file_duplicate_machine_is_toml_error(tmp_path: Path) -> None:
    text = BASE + '\n[machines.ws-1]\naddress = "10.0.0.2"\n'
    line = text.count("\n", 0, text.rindex("[machines.ws-1]")) + 1
    assert check(tmp_path, text) == [
        f"line {line}: Cannot declare ('machines', 'ws-1') twice (column 15)"
    ]


def test_load_policy_file_syntax_error_gives_line(tmp_path: Path) -> None:
    assert check(tmp_path, '[client]\nname = "x"\nengineer = \n') == [
        "line 3: Invalid value (column 12)"
    ]


def test_load_policies_duplicate_client_id_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE.replace("[client]", '[client]\nid = "acme"'))
    (tmp_path / "b.toml").write_text(BASE.replace("[client]", '[client]\nid = "acme"'))
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path}/b.toml: client.id: client id 'acme' is already used by "
        f"{tmp_path}/a.toml; set a different client.id"
    ]


def test_load_policy_file_client_id_defaults_to_stem_and_must_be_valid(tmp_path: Path) -> None:
    assert check(tmp_path, BASE, name="Acme Corp.toml") == [
        "client.id: the file name 'Acme Corp' is not a valid client id (lower-case letters, "
        "digits, '.', '_', '-'); rename the file or set client.id"
    ]
    assert check(tmp_path, BASE.replace("[client]", '[client]\nid = "Acme"')) == [
        "client.id: 'Acme' is not a valid client id: use lower-case letters, digits, "
        "'.', '_' and '-', starting with a letter or digit"
    ]


def test_load_policy_file_bad_machine_name_reported(tmp_path: Path) -> None:
    text = BASE.replace("machines.ws-1", 'machines."ws 1"')
    assert check(tmp_path, text)[0] == (
        "machines.\"ws 1\": 'ws 1' is not a valid machine name: use letters, digits, '.', '_' "
        "and '-', starting with a letter or digit"
    )


def test_load_policy_file_duplicate_level_name_reported(tmp_path: Path) -> None:
    text = BASE + BASE[BASE.index("[[machines") :]
    assert check(tmp_path, text) == [
        "machines.ws-1.levels[1].name: duplicate level name 'nightly' "
        "(also machines.ws-1.levels[0])"
    ]


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        (
            "env:RESTIC-PASSWORD",
            "env: needs an environment variable name (letters, digits and '_')",
        ),
        ("env:", "env: needs an environment variable name (letters, digits and '_')"),
        ("file:etc/restic.pass", "file: needs an absolute path (file:/path)"),
        ("command:  ", "command: needs a value after the colon"),
        ("vault:", "vault: needs a secret name (letters, digits, '.', '_', '-', '/')"),
        (
            "evn:RESTIC_PASSWORD",
            "unknown secret scheme (did you mean 'env:'?); "
            "use one of env:, file:, command:, vault:",
        ),
    ],
)
def test_load_policy_file_bad_secret_reference_reported(
    tmp_path: Path, reference: str, problem: str
) -> None:
    text = BASE.replace('"env:RESTIC_PASSWORD"', f'"{reference}"')
    assert check(tmp_path, text) == [f"repositories.nas.password: {problem}"]


@pytest.mark.parametrize(
    "secret", ["S3cr3t-Pa55w0rd", "hunter2:x", "Zq9:looks-like-a-ref", "12345678"]
)
def test_load_policy_file_literal_password_not_echoed(tmp_path: Path, secret: str) -> None:
    text = BASE.replace('"env:RESTIC_PASSWORD"', f'"{secret}"')
    found = check(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("repositories.nas.password: not a secret reference")
    assert "env:NAME or file:/path" in found[0]
    assert secret not in found[0] and secret.split(":")[0] not in found[0]


def test_load_policy_file_non_string_password_not_echoed(tmp_path: Path) -> None:
    text = BASE.replace('"env:RESTIC_PASSWORD"', "73519284")
    assert check(tmp_path, text) == [
        "repositories.nas.password: expected a secret reference such as 'env:NAME', found integer"
    ]
    assert "73519284" not in check(tmp_path, text)[0]


def test_load_policy_file_plugin_secret_scheme_accepted(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(BASE.replace('"env:RESTIC_PASSWORD"', '"keyring:acme/nas"'))
    assert load_policy_file(path, ("env", "keyring"))[1] == []
    assert load_policy_file(path)[1] != []


def test_load_policy_file_bad_every_hints(tmp_path: Path) -> None:
    text = BASE.replace('"day at 01:30"', '"dayly at 01:30"')
    (problem,) = check(tmp_path, text)
    assert problem.startswith(
        "machines.ws-1.levels[0].every: unknown schedule 'dayly at 01:30' "
        "(did you mean 'day at 01:30'?); forms: "
    )


WINRM = """
[machines.win]
transport = "winrm"
address = "win.example.lan"
user = "backup"
password = "env:WIN_PASSWORD"
"""


def test_load_policy_file_winrm_basic_over_http_rejected(tmp_path: Path) -> None:
    text = BASE + WINRM + 'https = false\nauth = "basic"\n'
    assert check(tmp_path, text) == [
        "machines.win.auth: basic authentication over plain HTTP sends the password in clear; "
        "set https = true or use ntlm, kerberos or credssp"
    ]


def test_load_policy_file_winrm_certificate_over_http_rejected(tmp_path: Path) -> None:
    text = BASE + WINRM + 'https = false\nauth = "certificate"\n'
    assert check(tmp_path, text) == [
        "machines.win.auth: 'certificate' authentication needs https (no message encryption "
        "over plain HTTP); set https = true or use ntlm, kerberos or credssp"
    ]


def test_load_policy_file_winrm_password_needed_unless_kerberos(tmp_path: Path) -> None:
    text = BASE + WINRM.replace('password = "env:WIN_PASSWORD"\n', "")
    assert check(tmp_path, text) == [
        "machines.win.password: missing; required for winrm auth 'ntlm'"
    ]
    assert check(tmp_path, text + 'auth = "kerberos"\n') == []


def test_load_policy_file_winrm_unknown_auth_hints(tmp_path: Path) -> None:
    text = BASE + WINRM + 'auth = "kerberoos"\n'
    assert check(tmp_path, text) == [
        "machines.win.auth: unknown value 'kerberoos' (did you mean 'kerberos'?); one of "
        "'ntlm', 'kerberos', 'credssp', 'certificate', 'basic'"
    ]


def test_load_policy_file_transport_specific_key_rejected(tmp_path: Path) -> None:
    text = BASE + WINRM + f'host_key = "{ED25519}"\n'
    assert check(tmp_path, text) == [
        "machines.win.host_key: 'host_key' applies to ssh machines; "
        "this machine's transport is 'winrm'"
    ]


@pytest.mark.parametrize(
    ("keep", "problem"),
    [
        ("{ dayly = 7 }", "keep.dayly: unknown key (did you mean 'daily'?)"),
        ("{ daily = 0 }", "keep.daily: expected a positive integer, found integer 0"),
        ("{ daily = true }", "keep.daily: expected a positive integer, found boolean True"),
        (
            '{ within = "30 days" }',
            "keep.within: expected a restic duration like '30d' or '1y2m', found string '30 days'",
        ),
        ("7", "keep: expected a table like { daily = 7, weekly = 4 }, found integer 7"),
    ],
)
def test_load_policy_file_bad_keep_reported(tmp_path: Path, keep: str, problem: str) -> None:
    text = BASE.replace('paths = ["/home"]', f'paths = ["/home"]\nkeep = {keep}')
    assert check(tmp_path, text) == [f"machines.ws-1.levels[0].{problem}"]


def test_load_policy_file_good_keep_loads(tmp_path: Path) -> None:
    text = BASE.replace(
        'paths = ["/home"]', 'paths = ["/home"]\nkeep = { last = 3, within = "1y2m" }'
    )
    assert load(tmp_path, text).machines["ws-1"].level("nightly").keep == {
        "last": 3,
        "within": "1y2m",
    }


VERIFY = """
[[machines.ws-1.levels]]
name = "drill"
kind = "verify"
"""


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (
            'of = "nigthly"',
            "of: machine 'ws-1' has no level 'nigthly' (did you mean 'nightly'?)",
        ),
        ('of = "weekly"', "of: machine 'ws-1' has no level 'weekly'; its levels: drill, nightly"),
        ('of = "drill"', "of: a level cannot refer to itself; name another level"),
        ("", "of: missing; required for verify levels"),
        (
            'of = "nightly"\nsample = "110%"',
            "sample: '110%' is not a sample: use 'N%' (1..100), "
            "a number of files like '200', or 'all'",
        ),
        (
            'of = "nightly"\nwhere = "nas"',
            "where: unknown value 'nas'; one of 'machine', 'controller'",
        ),
    ],
)
def test_load_policy_file_bad_verify_level_reported(
    tmp_path: Path, extra: str, problem: str
) -> None:
    assert check(tmp_path, BASE + VERIFY + extra + "\n") == [f"machines.ws-1.levels[1].{problem}"]


def test_load_policy_file_of_must_name_a_backup_level(tmp_path: Path) -> None:
    text = BASE + VERIFY + 'of = "nightly"\n' + VERIFY.replace("drill", "drill2") + 'of = "drill"\n'
    assert check(tmp_path, text) == [
        "machines.ws-1.levels[2].of: 'drill' is a verify level; name a files, image, copy level"
    ]


def test_load_policy_file_copy_to_same_repository_rejected(tmp_path: Path) -> None:
    text = (
        BASE + '[[machines.ws-1.levels]]\nname = "c"\nkind = "copy"\nof = "nightly"\nto = "nas"\n'
    )
    assert check(tmp_path, text) == [
        "machines.ws-1.levels[1].to: 'nightly' already writes to 'nas'; copy to another repository"
    ]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            'name = "Example Ltd."',
            'name = "x"\ntimezone = "Asia/Shangai"',
            "client.timezone: unknown time zone 'Asia/Shangai' (did you mean 'Asia/Shanghai'?); "
            "use a name like 'Asia/Shanghai'",
        ),
        (
            'name = "Example Ltd."',
            'name = "x"\nrestore_sla = "4 hours"',
            "client.restore_sla: '4 hours' is not a duration like '4h', '30m', '1d' or '1d12h'",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nmac = "52-54-00-12-34-56"',
            "machines.ws-1.mac: '52-54-00-12-34-56' is not a MAC address like 'aa:bb:cc:dd:ee:ff'",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nrole = "desktop"',
            "machines.ws-1.role: unknown value 'desktop'; one of 'workstation', 'server'",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\ntransport = "sshd"',
            "machines.ws-1.transport: unknown value 'sshd' (did you mean 'ssh'?); one of 'ssh', "
            "'winrm', 'local'",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nrestore = "image"',
            "machines.ws-1.restore: 'image' needs an image level on this machine",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nhost_key = "ssh-ed25519"',
            "machines.ws-1.host_key: 'ssh-ed25519' is not a host key: expected '<type> <base64>', "
            "e.g. 'ssh-ed25519 AAAA...'",
        ),
        (
            'address = "10.0.0.1"',
            'address = "10.0.0.1"\nhost_key = "ssh-ed2519 AAAA"',
            "machines.ws-1.host_key: unknown host key type 'ssh-ed2519' (did you mean "
            "'ssh-ed25519'?)",
        ),
        (
            'address = "10.0.0.1"',
            f'address = "10.0.0.1"\nhost_key = "ssh-ed25519 {ECDSA_BLOB}"',
            "machines.ws-1.host_key: the key data is for 'ecdsa-sha2-nistp256', not 'ssh-ed25519': "
            "a key pasted from elsewhere?",
        ),
        (
            'url = "sftp:backup@nas.example.lan:/srv/restic"',
            'url = "sftpp:nas:/srv"',
            "repositories.nas.url: not a restic repository URL or absolute path (did you mean "
            "'sftp'?); backends: local, sftp, rest, s3, b2, azure, gs, swift, rclone",
        ),
        (
            'kind = "files"',
            'kind = "file"',
            "machines.ws-1.levels[0].kind: unknown value 'file' (did you mean 'files'?); one of "
            "'files', 'image', 'copy', 'verify'",
        ),
    ],
)
def test_load_policy_file_bad_value_reported(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    assert check(tmp_path, BASE.replace(old, new)) == [problem]


def test_load_policy_file_host_key_with_comment_is_normalised(tmp_path: Path) -> None:
    text = BASE.replace(
        'address = "10.0.0.1"', f'address = "10.0.0.1"\nhost_key = "{ED25519} root@ws"'
    )
    assert load(tmp_path, text).machines["ws-1"].host_key == ED25519


def test_load_policy_file_windows_repository_path_accepted(tmp_path: Path) -> None:
    text = BASE.replace('"sftp:backup@nas.example.lan:/srv/restic"', "'D:\\restic'")
    assert load(tmp_path, text).repositories["nas"].url == "D:\\restic"


def test_load_policies_reports_all_problems_of_all_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE.replace('"day at 01:30"', '"dayly at 01:30"'))
    (tmp_path / "b.toml").write_text(BASE.replace("port", "x").replace("address", "adress"))
    (tmp_path / "c.toml").write_text(BASE)
    (tmp_path / ".#d.toml").write_text("not toml")  # an editor's lock file: skipped
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        f"{tmp_path}/a.toml",
        f"{tmp_path}/b.toml",
        f"{tmp_path}/b.toml",
    ]
    assert "levels[0].every: unknown schedule" in problems[0]
    assert problems[1].endswith("machines.ws-1.adress: unknown key (did you mean 'address'?)")
    assert problems[2].endswith("machines.ws-1.address: missing; required for transport 'ssh'")
    assert str(caught.value) == "\n".join(problems)


@pytest.mark.parametrize("make", [False, True])
def test_load_policies_no_files_says_what_to_do(tmp_path: Path, make: bool) -> None:
    directory = tmp_path / "policies"
    if make:
        directory.mkdir()
    with pytest.raises(PolicyError) as caught:
        load_policies(directory)
    assert caught.value.problems == [
        f"no policy files in {directory}; create {directory}/<client>.toml, "
        "see policies/ in the source for an example"
    ]


def test_load_policies_loads_every_client(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "acme.toml", tmp_path / "acme.toml")
    (tmp_path / "beta.toml").write_text(BASE)
    policies = load_policies(tmp_path)
    assert sorted(policies.clients) == ["acme", "beta"]
    assert policies.find_machine("beta/ws-1").client == "beta"


# --- random mutations of a valid policy: always a PolicyError with paths, never a crash ---


def toml_string(text: str) -> str:
    escaped = "".join(
        "\\" + ch
        if ch in '"\\'
        else f"\\u{ord(ch):04x}"
        if ord(ch) < 0x20 or ord(ch) == 0x7F
        else ch
        for ch in text
    )
    return f'"{escaped}"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_value(value: Any) -> str:
    """Return ``value`` as TOML, with inline tables and arrays (enough for these tests)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(document: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in document.items())


VALID: dict[str, Any] = tomllib.loads(
    BASE
    + WINRM
    + f"""
[[machines.win.levels]]
name = "files"
kind = "files"
repository = "nas"
paths = ['C:\\Users']
vss = true
[[machines.win.levels]]
name = "offsite"
kind = "copy"
of = "files"
to = "usb"
every = "month on last day at 04:00"

[repositories.usb]
url = "/mnt/usb/restic"
password = "file:/etc/recoverd/usb.pass"
max_parallel = 1

[templates.srv]
transport = "ssh"
role = "server"
host_key = "{ED25519}"
[[templates.srv.levels]]
name = "image"
kind = "image"
repository = "nas"
device = "/dev/sda"
snapshot = "lvm"
every = "sunday at 03:00"
keep = {{ last = 4, within = "1y" }}
[[templates.srv.levels]]
name = "drill"
kind = "verify"
of = "image"
sample = "10%"
every = "mon,wed at 05:00"

[machines.srv-1]
template = "srv"
address = "srv-1.example.lan"
mac = "52:54:00:12:34:56"
"""
)
WORDS = [
    "ssh",
    "winrm",
    "local",
    "files",
    "image",
    "copy",
    "verify",
    "basic",
    "certificate",
    "ntlm",
    "machine",
    "controller",
    "nightly",
    "drill",
    "image",
    "nas",
    "usb",
    "srv",
    "workstation",
    "server",
    "lvm",
    "env:X",
    "file:/x",
    "hunter2",
    "day at 01:00",
    "10%",
    "4h",
    "UTC",
]
ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(WORDS),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(min_value=-9, max_value=9), max_size=2),
)


def spots(node: Any) -> list[tuple[Any, Any]]:
    """Return every (container, key or index) of a parsed TOML document, depth first."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        found.append((node, key))
        if isinstance(value, dict | list):
            found.extend(spots(value))
    return found


@st.composite
def mutated_policies(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        choices = spots(document)
        if not choices:
            break
        container, key = draw(st.sampled_from(choices))
        action = draw(st.sampled_from(["drop", "retype", "extra", "word"]))
        if action == "drop":
            del container[key]
        elif action == "retype":
            container[key] = draw(ANY_VALUE)
        elif action == "word":
            container[key] = draw(st.sampled_from(WORDS) | st.text(max_size=8))
        elif isinstance(container, dict):
            container[draw(st.text(max_size=10))] = draw(ANY_VALUE)
        else:
            container.append(draw(ANY_VALUE))
    return document


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=mutated_policies())
def test_load_policies_mutated_policy_loads_or_reports_paths(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "mutant.toml"
    path.write_text(to_toml(document), encoding="utf-8")
    try:
        policies = load_policies(tmp_path)
    except PolicyError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.startswith(f"{path}: "), problem
            assert "\n" not in problem
    else:
        assert list(policies.clients) == ["mutant"]


def test_to_toml_round_trips_valid_policy() -> None:
    assert tomllib.loads(to_toml(VALID)) == VALID
