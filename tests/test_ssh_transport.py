"""The ssh transport against a real OpenSSH server on 127.0.0.1 (see recoverd.testing)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from recoverd.errors import (
    AuthenticationFailed,
    CommandTimeout,
    ConnectionLost,
    HostKeyRejected,
    Interrupted,
    Unreachable,
)
from recoverd.plugins import Kind
from recoverd.policy.model import Machine
from recoverd.secrets import SecretResolver
from recoverd.testing import ThrowawaySSHD, free_port, make_key
from recoverd.transport import CommandRequest, OutputBuffer
from recoverd_plugins.ssh import SSHTransport, _ShellPid, recoverd_add_transports

NO_SECRETS = SecretResolver({})


def fingerprint(public_key_file: Path) -> str:
    """Return the SHA256 fingerprint OpenSSH itself prints for a public key file."""
    listed = subprocess.run(
        ["ssh-keygen", "-lf", str(public_key_file)], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()[1]


@pytest.fixture
def ssh(ssh_machine: Machine) -> Iterator[SSHTransport]:
    with SSHTransport(ssh_machine, NO_SECRETS) as transport:
        yield transport


def test_recoverd_add_transports_registers_ssh() -> None:
    registry = Kind("transports")
    recoverd_add_transports(register=registry)
    assert registry.get("ssh") is SSHTransport


def test_describe_gives_user_address_port(ssh: SSHTransport, sshd: ThrowawaySSHD) -> None:
    assert ssh.describe() == f"root@127.0.0.1:{sshd.port}"


def test_run_hostile_argv_is_echoed_byte_exact_and_not_executed(
    ssh: SSHTransport, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    hostile = [
        "two words",
        "it's",
        'say "hi"',
        f"$(touch {marker})",
        f"`touch {marker}`",
        f";touch {marker}",
        f"| touch {marker}",
        "line one\nline two",
        "数据备份 恢复",
        "*",
        "~",
        "$HOME",
        "\\",
        "-n",
        "",
        "x" * 200,
    ]
    outcome = ssh.run(CommandRequest(["printf", "%s\\0", *hostile]))
    assert outcome.exit_status == 0
    assert outcome.stdout == b"".join(arg.encode() + b"\0" for arg in hostile)
    assert not marker.exists()


def test_connect_negotiates_aes_gcm_with_openssh(ssh: SSHTransport) -> None:
    # paramiko offers AES-CTR with HMAC first; recoverd offers AES-GCM first (a third less CPU
    # for a stream through the controller), and OpenSSH takes the client's first choice.
    assert ssh.run(CommandRequest(["true"])).ok
    assert ssh._client is not None
    session = ssh._client.get_transport()
    assert session is not None
    assert (session.local_cipher, session.remote_cipher) == ("aes128-gcm@openssh.com",) * 2


def test_run_stdin_bytes_come_back_identical_through_cat(ssh: SSHTransport) -> None:
    data = os.urandom(3 * 1024 * 1024)
    outcome = ssh.run(CommandRequest(["cat"], stdin=data, timeout=30))
    assert outcome.exit_status == 0
    assert outcome.stdout == data


def test_run_stdin_iterator_comes_back_identical_through_cat(ssh: SSHTransport) -> None:
    chunks = [os.urandom(size) for size in (1, 100_000, 65_536, 1_000_000, 7)]
    received = bytearray()
    outcome = ssh.run(
        CommandRequest(["cat"], stdin=iter(chunks), on_stdout=received.extend, timeout=30)
    )
    assert outcome.exit_status == 0
    assert bytes(received) == b"".join(chunks)


def test_run_without_stdin_sends_eof_at_once(ssh: SSHTransport) -> None:
    outcome = ssh.run(CommandRequest(["cat"], timeout=10))
    assert (outcome.exit_status, outcome.stdout) == (0, b"")


def test_run_command_that_ignores_stdin_still_succeeds(ssh: SSHTransport) -> None:
    outcome = ssh.run(CommandRequest(["true"], stdin=os.urandom(3 * 1024 * 1024), timeout=30))
    assert outcome.exit_status == 0


def test_run_stdin_iterator_failure_raises_it_instead_of_success(ssh: SSHTransport) -> None:
    def failing() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise OSError(5, "Input/output error reading the local image")

    started = time.monotonic()
    with pytest.raises(OSError, match="Input/output error"):
        ssh.run(CommandRequest(["sh", "-c", "cat >/dev/null; sleep 20"], stdin=failing()))
    # The command was aborted, not waited for.
    assert time.monotonic() - started < 10


def test_run_large_stderr_with_idle_stdout_finishes_with_all_bytes(ssh: SSHTransport) -> None:
    # More than the 2 MiB channel window on stderr, while stdin and stdout stay idle.
    script = "head -c 5000000 /dev/zero | tr '\\0' e >&2; echo done"
    received = bytearray()
    started = time.monotonic()
    outcome = ssh.run(CommandRequest(["sh", "-c", script], on_stderr=received.extend, timeout=30))
    assert time.monotonic() - started < 30
    assert outcome.exit_status == 0
    assert outcome.stdout == b"done\n"
    assert bytes(received) == b"e" * 5_000_000


def test_run_collected_stderr_keeps_exact_tail(ssh: SSHTransport) -> None:
    outcome = ssh.run(CommandRequest(["sh", "-c", "seq 1 1000000 >&2"], timeout=30))
    expected = "".join(f"{n}\n" for n in range(1, 1_000_001)).encode()
    assert outcome.stderr == expected[-4 * 1024 * 1024 :]


def test_run_with_stdout_consumer_passes_everything_and_keeps_nothing(ssh: SSHTransport) -> None:
    chunks: list[bytes] = []
    outcome = ssh.run(
        CommandRequest(["head", "-c", "3000000", "/dev/urandom"], on_stdout=chunks.append)
    )
    assert outcome.exit_status == 0
    assert sum(map(len, chunks)) == 3_000_000
    assert max(map(len, chunks)) <= 64 * 1024
    assert outcome.stdout == b""


def test_run_exit_status_passes_through(ssh: SSHTransport) -> None:
    outcome = ssh.run(CommandRequest(["sh", "-c", "echo partial; exit 7"]))
    assert (outcome.exit_status, outcome.stdout, outcome.ok) == (7, b"partial\n", False)


def test_run_command_killed_by_signal_gives_no_status_and_a_signal(ssh: SSHTransport) -> None:
    outcome = ssh.run(CommandRequest(["sh", "-c", "kill -9 $$"], timeout=10))
    assert outcome.exit_status is None
    assert outcome.signal
    assert not outcome.ok


def test_run_past_timeout_raises_command_timeout(ssh: SSHTransport) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="sleep 30 on ws-test did not finish within 1s"):
        ssh.run(CommandRequest(["sleep", "30"], timeout=1))
    assert time.monotonic() - started < 5
    # The connection stays usable after a timeout.
    assert ssh.run(CommandRequest(["true"], timeout=10)).exit_status == 0


def live_processes_with(tag: str) -> list[int]:
    """Return the pids of the machine's processes (this host's) with ``tag`` in their command
    line, zombies left out: this container's init may never reap them."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if not proc.name.isdigit() or tag.encode() not in (proc / "cmdline").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(proc.name))
    return pids


def sleepers(seconds: int = 300) -> tuple[list[str], str]:
    """Return a command whose shell runs two sleeps of its own, and the tag naming them all."""
    tag = f"{seconds}.{secrets.randbelow(10**9):09}"
    return ["sh", "-c", f"sleep {tag} & sleep {tag}; wait", tag], tag


def test_run_past_timeout_kills_the_remote_process_group(ssh: SSHTransport) -> None:
    argv, tag = sleepers()
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as raised:
        ssh.run(CommandRequest(argv, timeout=2))
    assert "it was stopped on the machine (SIGTERM to process group" in str(raised.value)
    assert time.monotonic() - started < 10
    assert live_processes_with(tag) == []
    assert ssh.run(CommandRequest(["true"], timeout=10)).exit_status == 0


def test_run_past_timeout_kills_with_sigkill_what_ignores_sigterm(
    ssh: SSHTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recoverd_plugins.ssh.STOP_GRACE_S", 1.0)
    tag = f"300.{secrets.randbelow(10**9):09}"
    # An ignored signal stays ignored across exec: the sleeps ignore SIGTERM too.
    argv = ["sh", "-c", f"trap '' TERM; sleep {tag} & sleep {tag}; wait", tag]
    with pytest.raises(CommandTimeout, match=r"it was killed on the machine \(SIGKILL"):
        ssh.run(CommandRequest(argv, timeout=2))
    assert live_processes_with(tag) == []


def test_run_interrupted_by_ctrl_c_kills_the_remote_process_and_raises_interrupted(
    ssh: SSHTransport,
) -> None:
    argv, tag = sleepers()
    ctrl_c = threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    try:
        with pytest.raises(Interrupted) as raised:
            ssh.run(CommandRequest(argv, timeout=60))
    finally:
        ctrl_c.cancel()
    assert "stopped by the operator while sh -c" in str(raised.value)
    assert "it was stopped on the machine" in str(raised.value)
    assert live_processes_with(tag) == []


def test_run_stderr_loses_only_the_pid_line() -> None:
    received: list[bytes] = []
    shell = _ShellPid(OutputBuffer(received.append))
    marker = shell.marker.encode()
    for chunk in [b"login noise\n" + marker[:5], marker[5:] + b" 12", b"34\nerr", b"or\n"]:
        shell(chunk)
    shell.finish()
    assert (shell.pid, b"".join(received)) == (1234, b"login noise\nerror\n")


def test_run_stderr_without_a_pid_line_is_passed_on_whole() -> None:
    received: list[bytes] = []
    shell = _ShellPid(OutputBuffer(received.append))
    shell(b"x" * 70_000)
    shell(b"tail")
    shell.finish()
    assert (shell.pid, b"".join(received)) == (None, b"x" * 70_000 + b"tail")


def test_run_twice_uses_one_connection(ssh: SSHTransport) -> None:
    first = ssh.run(CommandRequest(["sh", "-c", "echo $SSH_CONNECTION"])).stdout
    second = ssh.run(CommandRequest(["sh", "-c", "echo $SSH_CONNECTION"])).stdout
    assert first.startswith(b"127.0.0.1 ")
    assert first == second  # same client source port: the same TCP connection


def test_run_never_sends_environment_requests(
    ssh: SSHTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the ssh transport must not send environment requests")

    monkeypatch.setattr(paramiko.Channel, "update_environment", refuse)
    monkeypatch.setattr(paramiko.Channel, "set_environment_variable", refuse)
    original_exec = paramiko.Channel.exec_command
    seen: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def exec_command(self: paramiko.Channel, *args: object, **kwargs: object) -> None:
        seen.append((args, kwargs))
        original_exec(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.Channel, "exec_command", exec_command)
    outcome = ssh.run(CommandRequest(["cat"], stdin=b"secret-free"))
    assert outcome.stdout == b"secret-free"
    ((command,), options), *others = seen  # the command, then nothing: no stop was needed
    assert (command.endswith(" sh cat"), options, others) == (True, {}, [])


def test_connect_unknown_host_key_raises_with_fingerprint_and_pin_hint(
    ssh_machine: Machine, sshd: ThrowawaySSHD, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    machine = dataclasses.replace(ssh_machine, host_key=None, known_hosts=str(empty))
    with pytest.raises(HostKeyRejected) as raised:
        SSHTransport(machine, NO_SECRETS).connect()
    message = str(raised.value)
    assert f"ws-test (127.0.0.1:{sshd.port}) is unknown" in message
    assert f"ssh-ed25519 {fingerprint(sshd.host_key_path.with_suffix('.pub'))}" in message
    assert f'host_key = "{sshd.host_key_line}"' in message


def test_connect_pinned_key_differs_raises_changed(
    ssh_machine: Machine, sshd: ThrowawaySSHD, tmp_path: Path
) -> None:
    other = make_key(tmp_path / "other")
    pinned = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    machine = dataclasses.replace(ssh_machine, host_key=pinned)
    with pytest.raises(HostKeyRejected) as raised:
        SSHTransport(machine, NO_SECRETS).connect()
    message = str(raised.value)
    assert "CHANGED" in message and "man-in-the-middle" in message
    assert f"expected ssh-ed25519 {fingerprint(other.with_suffix('.pub'))}" in message
    assert f"offered ssh-ed25519 {fingerprint(sshd.host_key_path.with_suffix('.pub'))}" in message
    assert "update host_key" in message


def test_connect_after_host_key_regenerated_raises_changed(tmp_path: Path) -> None:
    with ThrowawaySSHD() as server:
        machine = Machine(
            name="ws-reinstalled",
            client="acme",
            address="127.0.0.1",
            port=server.port,
            identity=server.client_key,
            host_key=server.host_key_line,
            connect_timeout=5,
        )
        with SSHTransport(machine, NO_SECRETS) as transport:
            assert transport.run(CommandRequest(["true"])).exit_status == 0
        new_line = server.regenerate_host_key()
        assert new_line != machine.host_key
        with pytest.raises(HostKeyRejected, match=r"ws-reinstalled .* has CHANGED"):
            SSHTransport(machine, NO_SECRETS).connect()
        renewed = dataclasses.replace(machine, host_key=new_line)
        with SSHTransport(renewed, NO_SECRETS) as transport:
            assert transport.run(CommandRequest(["true"])).exit_status == 0


def test_connect_known_hosts_entry_with_port_is_accepted(
    ssh_machine: Machine, sshd: ThrowawaySSHD, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_line}\n")
    machine = dataclasses.replace(ssh_machine, host_key=None, known_hosts=str(known_hosts))
    with SSHTransport(machine, NO_SECRETS) as transport:
        assert transport.run(CommandRequest(["echo", "ok"])).stdout == b"ok\n"


def test_connect_missing_known_hosts_file_raises_clear_error(
    ssh_machine: Machine, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "known_hosts"
    machine = dataclasses.replace(ssh_machine, host_key=None, known_hosts=str(missing))
    with pytest.raises(HostKeyRejected, match=f"known_hosts file {missing} cannot be read"):
        SSHTransport(machine, NO_SECRETS).connect()


def test_connect_malformed_host_key_raises_clear_error(ssh_machine: Machine) -> None:
    machine = dataclasses.replace(ssh_machine, host_key="ssh-ed25519 not-base64!")
    with pytest.raises(HostKeyRejected, match="host_key of ws-test is not a public key"):
        SSHTransport(machine, NO_SECRETS).connect()


def test_connect_closed_port_raises_unreachable_fast(ssh_machine: Machine) -> None:
    machine = dataclasses.replace(ssh_machine, port=free_port())
    started = time.monotonic()
    refused = r"cannot reach ws-test at 127\.0\.0\.1:\d+: connection refused"
    with pytest.raises(Unreachable, match=refused):
        SSHTransport(machine, NO_SECRETS).connect()
    assert time.monotonic() - started < 2


def test_connect_silent_server_raises_unreachable_after_timeout(ssh_machine: Machine) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks SSH
        machine = dataclasses.replace(ssh_machine, port=silent.getsockname()[1], connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(Unreachable, match="no SSH handshake within 1s"):
            SSHTransport(machine, NO_SECRETS).connect()
        assert time.monotonic() - started < 4


def test_connect_unauthorised_identity_raises_authentication_failed(
    ssh_machine: Machine, tmp_path: Path
) -> None:
    stranger = make_key(tmp_path / "stranger")
    machine = dataclasses.replace(ssh_machine, identity=str(stranger))
    with pytest.raises(AuthenticationFailed, match="user root was refused by ws-test"):
        SSHTransport(machine, NO_SECRETS).connect()


def test_connect_missing_identity_file_raises_clear_error(
    ssh_machine: Machine, tmp_path: Path
) -> None:
    machine = dataclasses.replace(ssh_machine, identity=str(tmp_path / "id_missing"))
    with pytest.raises(AuthenticationFailed, match="id_missing of ws-test does not exist"):
        SSHTransport(machine, NO_SECRETS).connect()


def test_run_when_session_is_killed_raises_connection_lost_and_kills_the_command(
    ssh_machine: Machine, sshd: ThrowawaySSHD
) -> None:
    transport = SSHTransport(ssh_machine, NO_SECRETS)
    transport.connect()
    started = threading.Event()
    result: list[BaseException | object] = []

    tag = f"30.{secrets.randbelow(10**9):09}"

    def run_sleep() -> None:
        request = CommandRequest(
            ["sh", "-c", f"echo started; exec sleep {tag}"],
            on_stdout=lambda chunk: started.set(),
            timeout=20,
        )
        try:
            result.append(transport.run(request))
        except BaseException as exc:
            result.append(exc)

    runner = threading.Thread(target=run_sleep, daemon=True)
    runner.start()
    try:
        assert started.wait(10), "the remote command did not start"
        assert sshd.kill_sessions()
        runner.join(10)
        assert not runner.is_alive(), "run() did not notice the dropped connection"
        assert isinstance(result[0], ConnectionLost)
        assert "ws-test" in str(result[0])
        # The cut left the command running; a second connection stopped it.
        assert "it was stopped on the machine" in str(result[0])
        assert live_processes_with(tag) == []
        # The dead connection is reported, not reused; connect() opens a new one.
        with pytest.raises(ConnectionLost):
            transport.run(CommandRequest(["true"]))
        transport.connect()
        assert transport.run(CommandRequest(["true"])).exit_status == 0
    finally:
        transport.close()


def test_throwaway_sshd_that_cannot_start_raises_with_its_log() -> None:
    server = ThrowawaySSHD(sshd="/bin/false", start_timeout=2)
    try:
        with pytest.raises(RuntimeError, match=r"/bin/false did not start on 127\.0\.0\.1:\d+"):
            server.start()
    finally:
        server.stop()
    assert not server.workdir.exists()


def test_close_twice_is_safe(ssh_machine: Machine) -> None:
    transport = SSHTransport(ssh_machine, NO_SECRETS)
    transport.connect()
    transport.close()
    transport.close()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("RECOVERD_SLOW_TESTS"), reason="set RECOVERD_SLOW_TESTS=1 (about 20 s)"
)
def test_run_streams_several_gib_both_ways_across_rekeys(ssh_machine: Machine) -> None:
    gib = 1 << 30
    received = [0]

    def count(chunk: bytes) -> None:
        received[0] += len(chunk)

    # recoverd's side rekeys only every 64 GiB; this sshd every 512 MiB: both directions must
    # survive several rekeys the server starts.
    with ThrowawaySSHD(rekey_limit="512M") as server:
        machine = dataclasses.replace(
            ssh_machine, port=server.port, identity=server.client_key, host_key=server.host_key_line
        )
        with SSHTransport(machine, NO_SECRETS) as ssh:
            outcome = ssh.run(
                CommandRequest(["head", "-c", str(3 * gib), "/dev/zero"], on_stdout=count)
            )
            assert (outcome.exit_status, received[0]) == (0, 3 * gib)
            block = bytes(1 << 20)
            outcome = ssh.run(CommandRequest(["wc", "-c"], stdin=(block for _ in range(2 * 1024))))
            assert (outcome.exit_status, int(outcome.stdout)) == (0, 2 * gib)
