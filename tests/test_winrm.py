"""The winrm transport against a WS-Management server on 127.0.0.1 and the real pywinrm client.

The server (recoverd.testing_wsman) speaks the WinRS shell protocol over HTTPS with a throwaway
CA; the simulated Windows host behind it runs the real restic for ``restic.exe``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recoverd import powershell
from recoverd.cli import main
from recoverd.errors import (
    AuthenticationFailed,
    CertificateRejected,
    CommandTimeout,
    ConnectionLost,
    ToolMissing,
    TransportError,
    Unreachable,
    UsageError,
)
from recoverd.policy.model import Machine, Repository
from recoverd.secrets import SecretResolver
from recoverd.testing_windows import Invocation, reporting_version
from recoverd.testing_wsman import WSManServer
from recoverd.transport import CommandRequest
from recoverd_plugins.restic import ResticEngine, windows_in_place_args
from recoverd_plugins.winrm import WinRMTransport

REPO_PASSWORD = "Repo-s3cret-for-windows-tests"
RESTIC_EXE = r"C:\Program Files\restic\restic.exe"

HOSTILE_NAMES = [
    "with space.txt",
    "it's quoted.txt",
    "\u2018typographic\u2019 quotes.txt",
    "$env:USERNAME $(whoami).txt",
    "`backtick` ``.txt",
    "semi;colon & ampersand | pipe.txt",
    "100% ^caret^ !bang!.txt",
    "中文文件名 Ünïcødé.txt",
    "-dash-first.txt",
    "trailing backslash",
]
HOSTILE_DIR = "O'Brien $HOME `x` 100% & co; 中文"


def slow_program(inv: Invocation) -> int:
    """Say nothing for 1.5 s, then one line: the server answers Receives with timeout faults."""
    time.sleep(1.5)
    inv.stdout(b"done waiting\r\n")
    return 7


def big_program(inv: Invocation) -> int:
    """Write 5 MB of varied bytes in 64 KiB chunks."""
    for i in range(80):
        inv.stdout(hashlib.sha256(str(i).encode()).digest() * 2048)
    return 0


def cat_program(inv: Invocation) -> int:
    """Copy stdin to stdout until EOF, like ``findstr ^^`` would."""
    for chunk in iter(lambda: inv.stdin.read(65536), b""):
        inv.stdout(chunk)
    return 0


def argv_program(inv: Invocation) -> int:
    """Print the argv as the program received it, as JSON."""
    inv.stdout(json.dumps(inv.argv[1:]).encode())
    return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WSManServer]:
    with WSManServer(tmp_path_factory.mktemp("windows") / "drives", operation_timeout=0.3) as s:
        s.host.programs.update(
            {
                "slow.exe": slow_program,
                "big.exe": big_program,
                "cat.exe": cat_program,
                "argv.exe": argv_program,
            }
        )
        yield s


@pytest.fixture
def secrets(server: WSManServer, monkeypatch: pytest.MonkeyPatch) -> SecretResolver:
    monkeypatch.setenv("TEST_WINRM_PASSWORD", server.password)
    monkeypatch.setenv("TEST_REPO_PASSWORD", REPO_PASSWORD)
    return SecretResolver({"env": lambda name: os.environ[name]})


def windows_machine(server: WSManServer, **overrides: object) -> Machine:
    settings: dict = {
        "name": "fin-pc",
        "client": "acme",
        "transport": "winrm",
        "address": "127.0.0.1",
        "port": server.port,
        "auth": "basic",
        "user": server.user,
        "password": "env:TEST_WINRM_PASSWORD",
        "ca": str(server.ca_path),
        "restic": RESTIC_EXE,
        "connect_timeout": 3,
    }
    settings.update(overrides)
    return Machine(**settings)


def test_winrm_runs_command_and_closes_its_shell(
    server: WSManServer, secrets: SecretResolver
) -> None:
    with WinRMTransport(windows_machine(server), secrets) as transport:
        outcome = transport.run(CommandRequest(["argv.exe", "a b", 'quote"d']))
        assert json.loads(outcome.stdout) == ["a b", 'quote"d']
        assert len(server.shells) == 1
    assert server.shells == set()


def test_winrm_keeps_polling_through_operation_timeouts(
    server: WSManServer, secrets: SecretResolver
) -> None:
    faults = len(server.faults)
    with WinRMTransport(windows_machine(server), secrets) as transport:
        outcome = transport.run(CommandRequest(["slow.exe"]))
    assert (outcome.exit_status, outcome.stdout) == (7, b"done waiting\r\n")
    assert server.faults[faults:].count(2150858793) >= 3  # 1.5 s of silence, 0.3 s per Receive


def test_winrm_streams_5mb_of_output_and_chunked_stdin(
    server: WSManServer, secrets: SecretResolver
) -> None:
    chunks: list[bytes] = []
    expected = b"".join(hashlib.sha256(str(i).encode()).digest() * 2048 for i in range(80))
    data = os.urandom(1_000_000)
    sends = sum(r.action is not None and r.action.endswith("/Send") for r in server.requests)
    with WinRMTransport(windows_machine(server), secrets) as transport:
        outcome = transport.run(CommandRequest(["big.exe"], on_stdout=chunks.append))
        echoed = transport.run(CommandRequest(["cat.exe"], stdin=data))
        nothing = transport.run(CommandRequest(["cat.exe"], timeout=10))  # stdin ends at once
    assert nothing.ok and nothing.stdout == b""
    assert outcome.ok and b"".join(chunks) == expected and len(expected) == 5 * 1024 * 1024
    assert len(chunks) > 10  # passed on as each Receive returned, not collected at the end
    assert echoed.stdout == data
    sent = sum(r.action is not None and r.action.endswith("/Send") for r in server.requests)
    assert sent - sends >= 16  # 64 KiB at a time, plus the end


def test_winrm_timeout_terminates_command_and_session_stays_usable(
    server: WSManServer, secrets: SecretResolver
) -> None:
    with WinRMTransport(windows_machine(server), secrets) as transport:
        with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5s"):
            transport.run(CommandRequest(["slow.exe"], timeout=0.5))
        assert transport.run(CommandRequest(["argv.exe", "again"])).stdout == b'["again"]'
    assert server.shells == set()


def test_winrm_cut_connection_is_connection_lost_and_shell_still_closed(
    server: WSManServer, secrets: SecretResolver
) -> None:
    cutter = threading.Timer(0.5, server.cut_connections)
    with WinRMTransport(windows_machine(server), secrets) as transport:
        cutter.start()
        with pytest.raises(ConnectionLost, match=r"was lost while trying to run slow\.exe"):
            transport.run(CommandRequest(["slow.exe"]))
    cutter.join()
    # close() reconnected to delete the shell; the interrupted command was terminated.
    assert server.shells == set()


def test_winrm_wrong_password_is_wrong_credentials_for_machine(
    server: WSManServer, secrets: SecretResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WINRM_PASSWORD", "not-the-password")
    transport = WinRMTransport(windows_machine(server), secrets)
    with pytest.raises(AuthenticationFailed, match="wrong credentials for fin-pc"):
        transport.connect()
    transport.close()


def test_winrm_untrusted_certificate_refused_before_any_request(
    tmp_path: Path, secrets: SecretResolver
) -> None:
    # A fresh server: its request list shows that nothing, credentials least of all, arrived.
    with WSManServer(tmp_path / "drives") as other:
        secrets_for_other = SecretResolver({"env": lambda name: other.password})
        for ca in (None, str(secrets_ca(tmp_path))):
            machine = windows_machine(other, ca=ca)
            with pytest.raises(CertificateRejected, match="does not validate"):
                WinRMTransport(machine, secrets_for_other).connect()
        deadline = time.monotonic() + 5  # the server notes a failed handshake on its own thread
        while len(other.tls_failures) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(other.tls_failures) == 2 and "unknown ca" in other.tls_failures[0]
        assert other.requests == []


def secrets_ca(tmp_path: Path) -> Path:
    """A CA bundle of another throwaway CA: valid PEM, but not the server's issuer."""
    from recoverd.testing_wsman import make_certificate_chain

    other = tmp_path / "other-ca"
    other.mkdir()
    make_certificate_chain(other)
    return other / "ca.pem"


def test_winrm_basic_over_plain_http_sends_nothing(tmp_path: Path, secrets: SecretResolver) -> None:
    with WSManServer(tmp_path / "drives", https=False) as plain:
        machine = windows_machine(plain, https=False, ca=None)
        with pytest.raises(TransportError, match="basic"):
            WinRMTransport(machine, secrets).connect()
        assert plain.requests == []


def test_winrm_ntlm_over_plain_http_encrypts_every_message(tmp_path: Path) -> None:
    with WSManServer(tmp_path / "drives", https=False, auth="ntlm", operation_timeout=0.3) as plain:
        plain.host.programs.update({"slow.exe": slow_program, "cat.exe": cat_program})
        secrets = SecretResolver({"env": lambda name: plain.password})
        machine = windows_machine(plain, https=False, ca=None, auth="ntlm")
        data = os.urandom(300_000)
        with WinRMTransport(machine, secrets) as transport:
            slow = transport.run(CommandRequest(["slow.exe"]))
            echoed = transport.run(CommandRequest(["cat.exe"], stdin=data))
        assert (slow.exit_status, slow.stdout) == (7, b"done waiting\r\n")
        assert 2150858793 in plain.faults  # the timeout faults travelled encrypted too
        assert echoed.stdout == data
        # The handshake carried no SOAP; every SOAP message after it was sealed.
        assert [r.action for r in plain.requests] == [None] * len(plain.requests)
        assert plain.encrypted >= 10 and plain.shells == set()

        secrets = SecretResolver({"env": lambda name: "wrong password"})
        with pytest.raises(AuthenticationFailed, match="wrong credentials for fin-pc"):
            WinRMTransport(machine, secrets).connect()


def test_winrm_certificate_auth_presents_the_client_certificate(tmp_path: Path) -> None:
    with WSManServer(tmp_path / "drives", auth="certificate") as server:
        server.host.programs["argv.exe"] = argv_program
        secrets = SecretResolver({})
        machine = windows_machine(
            server,
            auth="certificate",
            user=None,
            password=None,
            cert=str(server.client_cert),
            cert_key=str(server.client_key),
        )
        with WinRMTransport(machine, secrets) as transport:
            assert transport.run(CommandRequest(["argv.exe", "x"])).stdout == b'["x"]'
        # Another CA's certificate is not accepted.
        other = secrets_ca(tmp_path).parent
        stranger = windows_machine(
            server,
            auth="certificate",
            user=None,
            password=None,
            cert=str(other / "client.pem"),
            cert_key=str(other / "client.key"),
        )
        with pytest.raises(AuthenticationFailed, match="refused the client certificate"):
            WinRMTransport(stranger, secrets).connect()


def test_winrm_auth_without_its_library_says_what_to_install(
    server: WSManServer, secrets: SecretResolver
) -> None:
    requests_before = len(server.requests)
    for auth in ("kerberos", "credssp"):
        with pytest.raises(TransportError, match=rf"pip install 'pywinrm\[{auth}\]'"):
            WinRMTransport(windows_machine(server, auth=auth), secrets).connect()
    assert len(server.requests) == requests_before


def test_winrm_unreachable_machine(server: WSManServer, secrets: SecretResolver) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(Unreachable, match="cannot reach fin-pc"):
        WinRMTransport(windows_machine(server, port=port), secrets).connect()


def test_winrm_hostile_arguments_arrive_intact(
    server: WSManServer, secrets: SecretResolver
) -> None:
    values = [*HOSTILE_NAMES, 'C:\\dir\\with "quote" and\\', "", "a\\\\b\\", "tab\there"]
    script = powershell.start_process("argv.exe", values)
    with WinRMTransport(windows_machine(server), secrets) as transport:
        direct = transport.run(CommandRequest(["argv.exe", *values]))
        through_powershell = transport.run(CommandRequest(powershell.encoded(script)))
    assert json.loads(direct.stdout) == values
    assert json.loads(through_powershell.stdout) == values


def test_winrm_missing_restic_is_tool_missing(server: WSManServer, secrets: SecretResolver) -> None:
    machine = windows_machine(server, restic=r"C:\nowhere\norestic.exe")
    with WinRMTransport(machine, secrets) as transport:
        with pytest.raises(ToolMissing, match="not installed"):
            ResticEngine(transport, secrets).version()


# -- files on Windows, end to end --------------------------------------------------------------

POLICY = """\
[client]
name = "Acme Trading Co."
engineer = "Wang Lei"

[repositories.nas]
url = 'D:\\Backups\\restic'
password = "env:TEST_REPO_PASSWORD"

[machines.fin-pc]
transport = "winrm"
address = "127.0.0.1"
port = {port}
auth = "basic"
user = "{user}"
password = "env:TEST_WINRM_PASSWORD"
ca = "{ca}"
restic = '{restic}'

[[machines.fin-pc.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = [{paths}]
exclude = ['*.tmp']
every = "day at 20:00"
keep = {{ last = 3 }}
"""


def toml_literal(text: str) -> str:
    return "'" + text + "'" if "'" not in text else json.dumps(text)


def test_windows_files_backup_and_restore_end_to_end(
    server: WSManServer,
    secrets: SecretResolver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = f"C:\\Users\\{HOSTILE_DIR}"
    tree = server.host.local_path(source)
    (tree / "sub dir").mkdir(parents=True)
    for i, name in enumerate(HOSTILE_NAMES):
        (tree / name).write_bytes(f"content {i}\n".encode() + os.urandom(i * 100))
    (tree / "sub dir" / "big.bin").write_bytes(os.urandom(1_500_000))
    (tree / "skipped.tmp").write_text("excluded")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.toml").write_text(
        POLICY.format(
            port=server.port,
            user=server.user,
            ca=server.ca_path,
            restic=RESTIC_EXE,
            paths=toml_literal(source + "\\"),  # a trailing backslash must survive quoting
        )
    )
    monkeypatch.setenv("RECOVERD_POLICIES", str(policies))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    vss = server.host.vss_snapshots

    assert main(["backup", "fin-pc"]) == 0
    capsys.readouterr()
    assert main(["log", "--json"]) == 0
    out = capsys.readouterr().out
    runs = [json.loads(line) for line in out.splitlines()]
    backup = next(r for r in runs if r["action"] == "backup")
    assert backup["state"] == "succeeded", backup["error"]
    assert backup["machine"] == "fin-pc" and backup["kind"] == "files"
    assert backup["stats"]["files_new"] == len(HOSTILE_NAMES) + 1
    assert [r["state"] for r in runs if r["action"] == "prune"] == ["succeeded"]
    assert server.host.vss_snapshots == vss + 1  # vss = true is the default on Windows
    assert REPO_PASSWORD not in out and server.password not in out
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert REPO_PASSWORD.encode() not in blob and server.password.encode() not in blob
    # Secrets went through stdin only: no command line the machine saw holds them.
    for line in server.host.command_lines:
        script = powershell.decode(line.split(" ")) or ""
        assert REPO_PASSWORD not in line + script and server.password not in line + script

    target = "C:\\Restore\\fin-pc 'restored' $now"
    machine = windows_machine(server)
    repository = Repository("nas", "D:\\Backups\\restic", "env:TEST_REPO_PASSWORD")
    with WinRMTransport(machine, secrets) as transport:
        restored = ResticEngine(transport, secrets).restore_snapshot(
            repository, backup["snapshot"], target
        )
    assert restored.state == "succeeded"
    # restic for Windows recreates the source path below the target: TARGET\C\Users\...
    below = server.host.local_path(target + "\\C\\Users\\" + HOSTILE_DIR)
    for path in tree.rglob("*"):
        copy = below / path.relative_to(tree)
        if path.name == "skipped.tmp":
            assert not copy.exists()
        elif path.is_file():
            assert copy.read_bytes() == path.read_bytes(), path.name


def test_windows_backup_with_untrusted_certificate_is_recorded_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with WSManServer(tmp_path / "drives") as other:
        monkeypatch.setenv("TEST_WINRM_PASSWORD", other.password)
        monkeypatch.setenv("TEST_REPO_PASSWORD", REPO_PASSWORD)
        policies = tmp_path / "policies"
        policies.mkdir()
        text = POLICY.format(
            port=other.port, user=other.user, ca="", restic=RESTIC_EXE, paths="'C:\\Users'"
        ).replace('ca = ""\n', "")  # no ca: the system's CAs, which do not know this one
        (policies / "acme.toml").write_text(text)
        monkeypatch.setenv("RECOVERD_POLICIES", str(policies))
        monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
        assert main(["backup", "fin-pc"]) == 1
        capsys.readouterr()
        assert main(["log", "--json"]) == 0
        (run,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert run["state"] == "failed" and "does not validate" in run["error"]
        assert other.requests == []


def test_windows_in_place_restore_is_one_restic_restore_per_drive() -> None:
    paths = ["C:\\Users\\Alice Smith\\", "d:\\Finance", "C:\\Data"]
    drive_c = ["restore", "3f2a9c1b:/C", "--target", "C:\\"]
    assert windows_in_place_args("3f2a9c1b", paths) == [
        [*drive_c, "--include", "/Users/Alice Smith", "--include", "/Data"],
        ["restore", "3f2a9c1b:/D", "--target", "D:\\", "--include", "/Finance"],
    ]
    whole_drive = windows_in_place_args("s", ["C:\\", "C:\\x"])
    assert whole_drive == [["restore", "s:/C", "--target", "C:\\"]]
    with pytest.raises(UsageError, match="not an absolute Windows path"):
        windows_in_place_args("s", ["Users\\x"])


def test_windows_in_place_restore_needs_restic_0_16(
    server: WSManServer, secrets: SecretResolver
) -> None:
    repository = Repository("nas", "D:\\Backups\\restic", "env:TEST_REPO_PASSWORD")
    restic = server.host.programs["restic.exe"]
    server.host.programs["restic.exe"] = reporting_version(restic, "0.14.0")
    try:
        with WinRMTransport(windows_machine(server), secrets) as transport:
            engine = ResticEngine(transport, secrets)
            with pytest.raises(ToolMissing, match=r"needs restic 0\.16 or later .* has 0\.14"):
                engine.restore_windows_in_place(repository, "latest", ["C:\\Users"])
    finally:
        server.host.programs["restic.exe"] = restic
