"""The ``ssh`` transport: run commands on Linux machines over SSH (paramiko).

One SSH connection per transport, one session channel per command. The server's host key is
always verified (the policy's pinned ``host_key``, else a known_hosts file); an unknown or
changed key stops the run with a message that shows the fingerprint and says how to pin it.

Commands are argv lists quoted for a POSIX shell. Nothing travels in SSH environment requests:
OpenSSH drops what its AcceptEnv does not allow, and secrets must not go that way anyway.
stdout and stderr are read together because they share one flow-control window: a command
that fills it with stderr while the caller waits for stdout would block forever.
"""

from __future__ import annotations

import base64
import logging
import selectors
import shlex
import socket
import threading
import time
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any, NoReturn

import recoverd
from recoverd.errors import (
    AuthenticationFailed,
    CommandTimeout,
    ConnectionLost,
    HostKeyRejected,
    Interrupted,
    Stalled,
    TransportError,
    Unreachable,
)
from recoverd.plugins import lazy_import
from recoverd.transport import (
    CommandOutcome,
    CommandRequest,
    HostKey,
    OutputBuffer,
    StdinFeeder,
    Transport,
)

if TYPE_CHECKING:
    from recoverd.plugins import Kind
    from recoverd.policy.model import Machine
    from recoverd.secrets import SecretResolver

CHUNK = 64 * 1024
"""Bytes read from a stream at a time: output is passed on, never accumulated whole."""

KEEPALIVE_S = 30
"""Seconds of silence before a keepalive: keeps NAT and firewalls from dropping a quiet run."""

POLL_S = 0.5
"""Longest wait on the channel before checking the deadline and the stdin thread again."""

TRANSPORT_POLL_S = 1.0
"""How often paramiko's reader thread wakes on a quiet connection (paramiko: 0.1 s). Each
wake-up is a socket timeout handled in Python: at 0.1 s, 32 connections waiting on restic cost
more controller CPU than their SSH traffic. Keepalives and close() do not depend on it."""

PROBE_AFTER_S = 10.0
"""Seconds without a packet from the machine after which a keepalive asking for a reply is
sent during a command (paramiko's own keepalive asks for none, so it cannot tell a dead peer)."""

DEAD_AFTER_S = 30.0
"""Seconds without any packet from the machine, keepalives unanswered, after which its
connection counts as dead: a laptop that left the network, a frozen machine. The command is
given up and its run frees its repository slot."""

STDIN_GRACE_S = 5.0
"""How long to wait, after the command ended, for the stdin thread to notice and stop."""

paramiko = lazy_import("paramiko")  # imported at the first connection, not with the plugin
# paramiko logs what its transport thread cannot handle (a server's garbage) with a traceback,
# then the connecting call raises it again, and recoverd reports it: without a handler of its
# own, logging's last resort would print that traceback on a command's stderr. The daemon's
# handlers still receive it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def channel_errors() -> tuple[type[BaseException], ...]:
    """Return what paramiko raises when a channel operation fails (EOFError: the socket
    closed)."""
    return (paramiko.SSHException, OSError, EOFError)


STOP_GRACE_S = 5.0
"""How long a command we gave up on may take to end after SIGTERM before it gets SIGKILL."""

STOP_CONNECT_S = 10.0
"""Longest wait for a new connection when the command's own connection is gone."""

STOP_SCRIPT = """\
alive() {
  if ps -o pgid= -p $$ >/dev/null 2>&1; then
    ps -e -o pgid= -o stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { n++ } END { exit !n }'
  else
    kill -0 -"$1" 2>/dev/null
  fi
}
alive "$1" || { echo ended; exit 0; }
kill -TERM -"$1" 2>/dev/null
said=terminated
i=0
while alive "$1"; do
  if [ "$i" -eq "$2" ]; then kill -KILL -"$1" 2>/dev/null; said=killed; fi
  if [ "$i" -ge $(($2 + 50)) ]; then echo unkillable; exit 0; fi
  sleep 0.1
  i=$((i + 1))
done
echo "$said"
"""
"""Stop the process group $1: SIGTERM, then SIGKILL after $2 tenths of a second; wait until
it is gone (5 s more at most) and say how (``ended``: nothing was left). Zombies do not count:
on a machine whose init does not reap them, they would look alive until the SIGKILL."""

REKEY_BYTES = 1 << 36
"""Bytes one direction carries before paramiko starts a key exchange: OpenSSH's own default for
ciphers with 128-bit blocks, instead of paramiko's 512 MiB (four rekeys each way in a 2 GiB
image stream). sshd still rekeys by its own RekeyLimit."""


class SSHTransport(Transport):
    """A connection to one machine over SSH, reused by every command of a run."""

    name = "ssh"
    os_family = "posix"

    def __init__(self, machine: Machine, secrets: SecretResolver) -> None:
        super().__init__(machine, secrets)
        self.address: str = machine.address or machine.name
        self.port: int = machine.port or 22
        self.user: str = machine.user or "root"
        self._client: paramiko.SSHClient | None = None
        self._given_up: str | None = None
        self._heard = time.monotonic()
        """When the last packet came from the machine (any channel, keepalive replies too)."""

    def give_up(self, reason: str) -> bool:
        """Stop the running command (see Transport.give_up); run() notices within POLL_S."""
        self._given_up = reason
        return True

    def describe(self) -> str:
        """Return ``user@address:port``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{host}:{self.port}"

    # -- connecting ------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the SSH connection, verify the host key and log in.

        Raise Unreachable if the machine does not answer, HostKeyRejected if its key is unknown,
        changed or cannot be checked, AuthenticationFailed if it refuses the login.
        """
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return
            self.close()
        self._client = self._open_client(self.machine.connect_timeout)

    def _open_client(self, timeout: float) -> paramiko.SSHClient:
        """Return a new logged-in connection; raise as connect() does, each step bounded by
        ``timeout`` seconds."""
        credentials = self._credentials()
        client = paramiko.SSHClient()
        try:
            self._trust_host_keys(client)
            client.connect(
                self.address,
                port=self.port,
                username=self.user,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                transport_factory=_transport_preferring_aead,
                **credentials,
            )
            transport = client.get_transport()
            assert transport is not None  # set by a successful connect()
            transport.set_keepalive(KEEPALIVE_S)
            transport.sock.settimeout(TRANSPORT_POLL_S)
            _rekey_less_often(transport)
            _hold_own_replies_during_rekey(transport)
            self._listen(transport)
        except BaseException as exc:
            # paramiko leaves its transport thread running when the host key is rejected.
            client.close()
            error = self._connect_error(exc, timeout)
            if error is None:
                raise
            raise error from None
        return client

    def _listen(self, transport: paramiko.Transport) -> None:
        """Note the time of every packet the machine sends on ``transport`` in ``_heard``."""
        read = transport.packetizer.read_message

        def read_and_note() -> Any:
            message = read()
            self._heard = time.monotonic()
            return message

        transport.packetizer.read_message = read_and_note  # type: ignore[method-assign]
        self._heard = time.monotonic()

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _trust_host_keys(self, client: paramiko.SSHClient) -> None:
        """Load the keys this machine may present: the pinned one, else a known_hosts file.

        Raise HostKeyRejected if the pinned key or the known_hosts file is unusable.
        """
        client.set_missing_host_key_policy(_RejectUnknownKey(self))
        if self.machine.host_key:
            key = self._pinned_key()
            client.get_host_keys().add(self._host_key_name(), key.get_name(), key)
            return
        try:
            if self.machine.known_hosts:
                path = Path(self.machine.known_hosts).expanduser()
                try:
                    client.load_host_keys(str(path))
                except OSError as exc:
                    # An explicit file that is missing must not silently mean "trust nothing".
                    raise HostKeyRejected(
                        f"cannot check the host key of {self.machine.name}: known_hosts file "
                        f"{path} cannot be read ({exc.strerror or exc})"
                    ) from None
            else:
                # Ignores a missing ~/.ssh/known_hosts: the unknown key is then reported.
                client.load_system_host_keys()
        except paramiko.hostkeys.InvalidHostKey as exc:
            raise HostKeyRejected(
                f"cannot check the host key of {self.machine.name}: a known_hosts line is not "
                f"a valid key: {exc.line!r}"
            ) from None

    @classmethod
    def unready(cls, machine: Machine) -> str | None:
        """A machine whose host key nothing vouches for is not enrolled yet: its first run
        would be refused (and recorded failed), so it waits for ``recoverd enroll``."""
        if machine.host_key:
            return None
        path = Path(machine.known_hosts or "~/.ssh/known_hosts").expanduser()
        port = machine.port or 22
        address = machine.address or machine.name
        name = address if port == 22 else f"[{address}]:{port}"
        try:
            if paramiko.HostKeys(str(path)).lookup(name):
                return None
        except (OSError, paramiko.hostkeys.InvalidHostKey):
            pass  # unreadable: the run says exactly why; here it is simply not known
        return (
            f"no host key is pinned and {path} has none for {name}: the first run would be "
            f"refused; run `recoverd enroll {machine.client}/{machine.name}` to check and pin it"
        )

    def host_key(self) -> HostKey:
        """Return the key the server offers (a key exchange, no login) and how the policy's
        pinned key or known_hosts file judges it. Raise Unreachable, or HostKeyRejected if the
        pinned key or the known_hosts file is unusable."""
        timeout = self.machine.connect_timeout
        try:
            sock = socket.create_connection((self.address, self.port), timeout=timeout)
        except OSError as exc:
            error = self._connect_error(exc, timeout)
            raise error or Unreachable(str(exc)) from None
        session = paramiko.Transport(sock)
        try:
            session.banner_timeout = timeout
            session.start_client(timeout=timeout)
            offered = session.get_remote_server_key()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            error = self._connect_error(exc, timeout)
            raise error or Unreachable(str(exc)) from None
        finally:
            session.close()
        trusted = paramiko.SSHClient()
        self._trust_host_keys(trusted)
        known = trusted.get_host_keys().lookup(self._host_key_name()) or {}
        expected = known.get(offered.get_name()) or next(iter(known.values()), None)
        if expected is None:
            trust, shown = "unknown", None
        elif expected == offered:
            trust, shown = ("pinned" if self.machine.host_key else "known"), None
        else:
            trust, shown = "changed", f"{expected.get_name()} {expected.fingerprint}"
        return HostKey(offered.get_name(), offered.get_base64(), offered.fingerprint, trust, shown)

    def _pinned_key(self) -> paramiko.PKey:
        """Return the policy's ``host_key`` as a key. Raise HostKeyRejected if it is not one."""
        fields = (self.machine.host_key or "").split()
        try:
            key_type, data = fields[0], base64.b64decode(fields[1], validate=True)
            return paramiko.PKey.from_type_string(key_type, data)
        except (IndexError, ValueError, paramiko.UnknownKeyType, paramiko.SSHException):
            # ValueError: bad base64 (binascii.Error) or key data the key class rejects.
            raise HostKeyRejected(
                f"host_key of {self.machine.name} is not a public key: expected "
                '"TYPE BASE64" as in the machine\'s /etc/ssh/ssh_host_ed25519_key.pub, '
                'e.g. host_key = "ssh-ed25519 AAAAC3Nz..."'
            ) from None

    def _host_key_name(self) -> str:
        # The name known_hosts files use: OpenSSH writes non-default ports as [host]:port.
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def _key_source(self) -> str:
        if self.machine.host_key:
            return "host_key in the policy"
        known_hosts = self.machine.known_hosts or "~/.ssh/known_hosts"
        return f"the {self._host_key_name()} entry in {known_hosts}"

    def _unknown_key_error(self, key: paramiko.PKey) -> HostKeyRejected:
        """Given the key the server offered, return the error that explains how to pin it."""
        known_hosts = self.machine.known_hosts or "~/.ssh/known_hosts"
        return HostKeyRejected(
            f"host key of {self.machine.name} ({self.address}:{self.port}) is unknown: "
            f"{key.get_name()} {key.fingerprint}. Verify it (on the machine: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then pin it in the policy: "
            f'host_key = "{key.get_name()} {key.get_base64()}" '
            f"(or add it to {known_hosts})"
        )

    def _changed_key_error(
        self, offered: paramiko.PKey, expected: paramiko.PKey
    ) -> HostKeyRejected:
        return HostKeyRejected(
            f"host key of {self.machine.name} ({self.address}:{self.port}) has CHANGED: "
            f"expected {expected.get_name()} {expected.fingerprint}, offered "
            f"{offered.get_name()} {offered.fingerprint}. This is a possible man-in-the-middle; "
            f"if the machine was reinstalled, verify the new key (on the machine: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub) and update {self._key_source()}: "
            f'host_key = "{offered.get_name()} {offered.get_base64()}" '
            f"(or run `recoverd enroll {self.machine.client}/{self.machine.name}`)"
        )

    def _credentials(self) -> dict[str, Any]:
        """Return the login arguments for paramiko: the identity file, else agent and ~/.ssh.

        Raise AuthenticationFailed if the identity file is missing or not a usable key.
        """
        if not self.machine.identity:
            return {"allow_agent": True, "look_for_keys": True}
        path = Path(self.machine.identity).expanduser()
        problem = f"identity file {path} of {self.machine.name}"
        try:
            key = paramiko.PKey.from_path(path)
        except FileNotFoundError:
            raise AuthenticationFailed(f"{problem} does not exist") from None
        except OSError as exc:
            raise AuthenticationFailed(f"{problem} cannot be read: {exc.strerror}") from None
        except (TypeError, ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
            # TypeError: cryptography's answer to an encrypted key without a passphrase.
            raise AuthenticationFailed(
                f"{problem} is not a usable private key ({exc}); it must be an unencrypted "
                "OpenSSH or PEM key (load passphrase-protected keys into ssh-agent instead)"
            ) from None
        return {"pkey": key, "allow_agent": False, "look_for_keys": False}

    def _connect_error(self, exc: BaseException, timeout: float) -> TransportError | None:
        """Given what connecting raised, return the error to raise instead (None: re-raise)."""
        where = f"{self.machine.name} at {self.address}:{self.port}"
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            return self._changed_key_error(exc.key, exc.expected_key)
        if isinstance(exc, paramiko.AuthenticationException):
            if "timeout" in str(exc):
                return Unreachable(f"cannot reach {where}: the login timed out")
            return AuthenticationFailed(
                f"user {self.user} was refused by {where}: {self._identity_hint()}"
            )
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return Unreachable(f"cannot reach {where}: connection refused")
        if isinstance(exc, TimeoutError):
            return Unreachable(f"cannot reach {where}: timed out after {timeout:g}s")
        if isinstance(exc, socket.gaierror):
            return Unreachable(f"cannot reach {where}: unknown host name ({exc.strerror})")
        if isinstance(exc, OSError | EOFError):
            return Unreachable(f"cannot reach {where}: {getattr(exc, 'strerror', None) or exc}")
        if isinstance(exc, paramiko.SSHException):
            message = str(exc)
            if "No authentication methods" in message:
                return AuthenticationFailed(
                    f"user {self.user} cannot log in to {where}: no key to offer; "
                    "set identity in the policy or load a key into ssh-agent"
                )
            # paramiko has no types for these: a silent or closing server, or a handshake that
            # start_client() gave up on ("No existing session").
            if "banner" in message or "No existing session" in message:
                return Unreachable(f"cannot reach {where}: no SSH handshake within {timeout:g}s")
            return TransportError(f"SSH to {where} failed: {message}")
        return None

    def _identity_hint(self) -> str:
        if self.machine.identity:
            return (
                f"check identity ({self.machine.identity}): its public key must be in "
                f"~{self.user}/.ssh/authorized_keys on the machine"
            )
        return (
            "check identity: no identity is set, so ssh-agent and ~/.ssh/id_* were tried; "
            f"one of those keys must be in ~{self.user}/.ssh/authorized_keys on the machine"
        )

    # -- running ---------------------------------------------------------------------------

    def run(self, request: CommandRequest) -> CommandOutcome:
        """Given a request, run it on a new channel of the connection and return how it ended.

        Raise CommandTimeout past ``request.timeout``, ConnectionLost if the connection drops,
        Interrupted on Ctrl-C or after give_up(), TransportError if the machine refuses to start
        the command; an exception raised by the request's stdin iterable or output consumers is
        raised as it is. A command given up on is stopped on the machine, and the error says so.
        """
        if self._given_up is not None:
            raise Interrupted(
                f"{self._given_up} before {_summary(request.argv)} started on {self.machine.name}"
            )
        transport = self._active_transport(request)
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        watch = _Watch(transport, self.stall_after)
        stdout = OutputBuffer(request.on_stdout)
        stderr = OutputBuffer(request.on_stderr)
        try:
            channel = transport.open_session(timeout=self.machine.connect_timeout)
        except channel_errors() as exc:
            raise self._refused(request, transport, exc) from None

        def send_stdin(chunk: bytes) -> None:
            try:
                channel.sendall(chunk)
                watch.progressed()  # the command took input: it is not stuck
            except (paramiko.SSHException, EOFError) as exc:
                # Not an OSError, so the feeder keeps it and end_stdin() aborts the command.
                raise self._lost(request, f"sending stdin failed: {exc}") from None

        def end_stdin() -> None:
            # No EOF after a failure: _pump() aborts the command instead, so that it cannot
            # take the truncated input for a complete one.
            if feeder.error is None:
                channel.shutdown_write()

        feeder = StdinFeeder(request.stdin, send_stdin, end_stdin)
        shell = _ShellPid(stderr)
        try:
            try:
                channel.exec_command(self._reporting_pid(request.argv, shell.marker))
            except channel_errors() as exc:
                raise self._refused(request, transport, exc) from None
            feeder.start()
            try:
                self._pump(channel, request, feeder, stdout, shell, deadline, watch)
                self._wait_for_status(channel, request, feeder, deadline, watch)
            except (CommandTimeout, ConnectionLost) as exc:
                raise type(exc)(f"{exc}; {self._stop_remote(channel, shell.pid)}") from None
            except (KeyboardInterrupt, Interrupted) as exc:
                reason = str(exc) or "stopped by the operator"  # Ctrl-C, or give_up()
                raise Interrupted(
                    f"{reason} while {_summary(request.argv)} ran on {self.machine.name}; "
                    f"{self._stop_remote(channel, shell.pid)}"
                ) from None
            except BaseException:
                # A failing stdin or output consumer: the command's work is lost anyway.
                self._stop_remote(channel, shell.pid)
                raise
        finally:
            # Also wakes a stdin thread that waits for window space.
            channel.close()
        shell.finish()
        feeder.finish(timeout=STDIN_GRACE_S)
        status = channel.recv_exit_status()
        if status != -1:
            return CommandOutcome(status, stdout.value(), stderr.value())
        # -1: no exit-status came. The server closes a finished command's channel cleanly, EOF
        # first; a dropped connection closes it without EOF.
        if not channel.eof_received or not transport.is_active():
            stopped = self._stop_remote(channel, shell.pid)
            raise self._lost(request, f"the connection closed; {stopped}")
        # OpenSSH reports a killed command with an exit-signal request, which paramiko 5.1
        # ignores: the signal's name is not known here.
        return CommandOutcome(None, stdout.value(), stderr.value(), signal="unknown")

    def _reporting_pid(self, argv: list[str], marker: str) -> str:
        """Return the command line that runs ``argv`` after writing ``marker PID`` to stderr.

        sshd starts a command without a terminal in a session of its own (setsid), so that
        pid, which the login shell, sh and the command keep through exec, names the process
        group of the command and of everything it starts: what _stop_remote() signals. sh, not
        the login shell, reads the line, whatever the login shell is.
        """
        return self.quote(["exec", "sh", "-c", f'echo {marker} $$ >&2; exec "$@"', "sh", *argv])

    def _stop_remote(self, channel: paramiko.Channel, pid: int | None) -> str:
        """Stop the process group ``pid`` of a command we gave up on: SIGTERM, then SIGKILL
        after :data:`STOP_GRACE_S`. Use the command's connection, else a new one.

        Return what happened, as the end of an error message. Never raise a TransportError.
        """
        if channel.exit_status != -1:
            return "it had ended on the machine"
        if pid is None:
            return "its shell never reported its process id, so it may still run on the machine"
        transport = channel.get_transport()
        client = None
        try:
            if not transport.is_active():
                client = self._open_client(min(self.machine.connect_timeout, STOP_CONNECT_S))
                transport = client.get_transport()
                assert transport is not None  # set by a successful connect()
            ticks = int(STOP_GRACE_S * 10)
            stop = ["sh", "-c", STOP_SCRIPT, "recoverd-stop", str(pid), str(ticks)]
            said = _run_briefly(transport, self.quote(stop), STOP_GRACE_S + STOP_CONNECT_S)
        except (TransportError, *channel_errors()) as exc:
            return (
                f"it could not be stopped on the machine ({exc or type(exc).__name__}), so it "
                "may still run there"
            )
        finally:
            if client is not None:
                client.close()
        if said == "terminated":
            return f"it was stopped on the machine (SIGTERM to process group {pid})"
        if said == "killed":
            return (
                f"it was killed on the machine (SIGKILL to process group {pid}: it was still "
                f"running {STOP_GRACE_S:g}s after SIGTERM)"
            )
        if said == "ended":
            return "it had ended on the machine"
        if said == "unkillable":
            return (
                f"it could not be stopped on the machine (process group {pid} was still there "
                "5s after SIGKILL), so it may still run there"
            )
        return f"it may still run on the machine (stopping process group {pid} said {said!r})"

    def _active_transport(self, request: CommandRequest) -> paramiko.Transport:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__}.run() before connect()")
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(request, "it was already closed; connect again")
        return transport

    def _pump(
        self,
        channel: paramiko.Channel,
        request: CommandRequest,
        feeder: StdinFeeder,
        stdout: OutputBuffer,
        stderr: OutputBuffer | _ShellPid,
        deadline: float | None,
        watch: _Watch,
    ) -> None:
        """Pass stdout and stderr chunks on as they arrive, until both streams end.

        Raise CommandTimeout past ``deadline``, Stalled or ConnectionLost as :meth:`_next_wait`
        says, ConnectionLost if reading fails, the stdin feeder's error if it failed.
        """
        streams = [
            (channel.recv_ready, channel.recv, stdout),
            (channel.recv_stderr_ready, channel.recv_stderr, stderr),
        ]
        # channel.fileno() is a pipe paramiko makes readable while either stream has data or
        # has ended. A selector, not select(): a busy daemon may hold descriptors above 1023.
        with selectors.DefaultSelector() as selector:
            selector.register(channel.fileno(), selectors.EVENT_READ)
            while streams:
                selector.select(self._next_wait(request, feeder, deadline, watch))
                ended = channel.eof_received or channel.closed
                for stream in list(streams):
                    ready, recv, sink = stream
                    if not (ready() or ended):
                        continue
                    try:
                        chunk = recv(CHUNK)
                    except channel_errors() as exc:
                        raise self._lost(request, str(exc) or type(exc).__name__) from None
                    if chunk:
                        if request.moved is None:
                            watch.progressed()
                        sink(chunk)
                    else:
                        streams.remove(stream)

    def _wait_for_status(
        self,
        channel: paramiko.Channel,
        request: CommandRequest,
        feeder: StdinFeeder,
        deadline: float | None,
        watch: _Watch,
    ) -> None:
        """Wait until the exit status came or the channel closed.

        Raise as :meth:`_next_wait` does.
        """
        while not channel.status_event.wait(self._next_wait(request, feeder, deadline, watch)):
            pass

    def _next_wait(
        self,
        request: CommandRequest,
        feeder: StdinFeeder,
        deadline: float | None,
        watch: _Watch,
    ) -> float:
        """Return how long to wait for the channel before looking at the clock and the stdin
        feeder again. Raise CommandTimeout past ``deadline``, the feeder's error if it failed,
        Interrupted after give_up(), Stalled after ``stall_after`` seconds without progress,
        ConnectionLost (the connection closed) when the machine stopped answering.
        """
        if feeder.error is not None:
            raise feeder.error
        if self._given_up is not None:
            raise Interrupted(self._given_up)
        now = time.monotonic()
        silent = now - self._heard
        if silent > DEAD_AFTER_S:
            # Closed, so that stopping the command takes a new connection, not this dead one.
            watch.transport.close()
            raise self._lost(
                request,
                f"the machine stopped answering (nothing for {silent:.0f}s, keepalives unanswered)",
            )
        if silent > PROBE_AFTER_S:
            watch.probe(self._heard)
        last = watch.progress if request.moved is None else max(watch.progress, request.moved())
        if watch.stall_after is not None and now - last > watch.stall_after:
            measure = "no output" if request.moved is None else "its own progress report unchanged"
            raise Stalled(
                f"stalled: {_summary(request.argv)} on {self.machine.name} made no progress "
                f"for {watch.stall_after:g}s (stall_after: {measure}, no input taken)"
            )
        if deadline is None:
            return POLL_S
        left = deadline - time.monotonic()
        if left <= 0:
            raise CommandTimeout(
                f"{_summary(request.argv)} on {self.machine.name} did not finish within "
                f"{request.timeout:g}s"
            )
        return min(left, POLL_S)

    def _lost(self, request: CommandRequest, reason: str) -> ConnectionLost:
        return ConnectionLost(
            f"connection to {self.machine.name} ({self.describe()}) was lost while running "
            f"{_summary(request.argv)}: {reason}"
        )

    def _refused(
        self, request: CommandRequest, transport: paramiko.Transport, exc: BaseException
    ) -> TransportError:
        if not transport.is_active():
            return self._lost(request, str(exc) or type(exc).__name__)
        return TransportError(
            f"{self.machine.name} ({self.describe()}) would not start {_summary(request.argv)}: "
            f"{exc or type(exc).__name__}"
        )


class _Watch:
    """A running command's progress, and keepalive probes of its connection."""

    def __init__(self, transport: paramiko.Transport, stall_after: float | None) -> None:
        self.transport = transport
        self.stall_after = stall_after
        self.progress = time.monotonic()
        """When the command last wrote output or took input."""
        self._probed_after: float | None = None

    def progressed(self) -> None:
        self.progress = time.monotonic()

    def probe(self, heard: float) -> None:
        """Send one keepalive that wants a reply (OpenSSH answers any global request), unless
        one went out since the machine was last heard (``heard``) or keys are being changed
        (nothing else may be sent then; the key exchange is traffic of its own)."""
        if self._probed_after == heard or not self.transport.clear_to_send.is_set():
            return
        self._probed_after = heard
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
        message.add_string("keepalive@openssh.com")
        message.add_boolean(True)
        try:
            self.transport._send_user_message(message)
        except channel_errors():
            pass  # a connection that cannot send is dead: DEAD_AFTER_S says so


class _RejectUnknownKey:
    """Refuse a host key that is neither pinned nor known, with a message on how to pin it.

    A paramiko MissingHostKeyPolicy by duck typing (paramiko only calls ``missing_host_key``),
    so that defining it does not import paramiko.
    """

    def __init__(self, transport: SSHTransport) -> None:
        self.transport = transport

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> NoReturn:
        raise self.transport._unknown_key_error(key)


class _ShellPid:
    """Pass a command's stderr on, minus the line in which its shell reports its pid.

    The line is ``<marker> <pid>``; a login script may write to stderr before it. Until the
    line comes, stderr is held back (at most :data:`CHUNK` bytes; more means the shell did
    not report, and everything is passed on).
    """

    def __init__(self, sink: OutputBuffer) -> None:
        self.marker = f"recoverd-pid-{token_hex(8)}"
        self.pid: int | None = None
        self._sink = sink
        self._held: bytes | None = b""  # None once the line came or holding gave up

    def __call__(self, chunk: bytes) -> None:
        if self._held is None:
            self._sink(chunk)
            return
        self._held += chunk
        start = self._held.find(self.marker.encode() + b" ")
        end = self._held.find(b"\n", start)
        if start >= 0 and end >= 0:
            word = self._held[start + len(self.marker) + 1 : end]
            self.pid = int(word) if word.isdigit() else None
            self._held = self._held[:start] + self._held[end + 1 :]
            self.finish()
        elif len(self._held) > CHUNK:
            self.finish()

    def finish(self) -> None:
        """Pass on what is held back (at the end of the stream)."""
        held, self._held = self._held, None
        if held:
            self._sink(held)


def _run_briefly(transport: paramiko.Transport, command: str, timeout: float) -> str:
    """Run a command that prints one short line and return the line.

    Raise TransportError if it does not end within ``timeout`` seconds.
    """
    channel = transport.open_session(timeout=timeout)
    try:
        channel.exec_command(command)
        channel.shutdown_write()
        if not channel.status_event.wait(timeout):
            raise TransportError(f"no answer within {timeout:g}s")
        # The output comes before the exit status and is far smaller than the window.
        output = b""
        while channel.recv_ready():
            output += channel.recv(CHUNK)
    finally:
        channel.close()
    lines = output.decode(errors="replace").split()
    return lines[-1] if lines else ""


AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
"""Ciphers recoverd offers first. paramiko lists them last; with them it encrypts and
authenticates in one pass instead of AES-CTR plus a separate HMAC, which took a third less
controller CPU for an image stream via the controller (1.2–1.4 s against 1.8–2.0 s per 512 MiB,
bench/RESULTS.md section 2). Every cipher paramiko offers stays on offer, after them."""


def _transport_preferring_aead(sock: Any, **options: Any) -> paramiko.Transport:
    """Return paramiko's transport over ``sock``, offering :data:`AEAD_CIPHERS` first."""
    transport = paramiko.Transport(sock, **options)
    security = transport.get_security_options()
    offered = tuple(security.ciphers)
    security.ciphers = tuple(c for c in AEAD_CIPHERS if c in offered) + tuple(
        c for c in offered if c not in AEAD_CIPHERS
    )
    return transport


def _rekey_less_often(transport: paramiko.Transport) -> None:
    """Raise the connection's client-side rekey threshold to :data:`REKEY_BYTES` when both
    directions use a cipher with 128-bit blocks (3des-cbc keeps paramiko's lower one)."""
    ciphers = (transport.local_cipher, transport.remote_cipher)
    if min(transport._cipher_info[name]["block-size"] for name in ciphers) >= 16:
        transport.packetizer.REKEY_BYTES = REKEY_BYTES


def _hold_own_replies_during_rekey(transport: paramiko.Transport) -> None:
    """Make paramiko's own thread hold back its replies while a key exchange is in flight and
    send them once the new keys are in use.

    paramiko's thread answers a channel close (and channel requests) through
    ``_send_user_message``, which waits for the key exchange to end, but only that thread can
    end it: a close that crossed a rekey paramiko had just started stalled the connection for
    30 s and then killed it (paramiko issue #822). Other threads still wait as before.
    """
    send, parse_newkeys = transport._send_user_message, transport._parse_newkeys
    held: list[paramiko.Message] = []

    def send_user_message(message: paramiko.Message) -> None:
        # Only this thread starts and ends key exchanges (recoverd never calls
        # renegotiate_keys()), so the check cannot go stale.
        if threading.current_thread() is transport and not transport.clear_to_send.is_set():
            held.append(message)
            return
        send(message)

    def newkeys_then_held(message: paramiko.Message) -> None:
        parse_newkeys(message)
        while held:
            send(held.pop(0))

    transport._send_user_message = send_user_message  # type: ignore[method-assign]
    transport._handler_table[paramiko.common.MSG_NEWKEYS] = newkeys_then_held


def _summary(argv: list[str], limit: int = 80) -> str:
    """Return the command line for messages, shortened to ``limit`` characters. A ``sh -c
    SCRIPT NAME ARGS`` wrapper (the one that reads restic's credentials) is shown as what it
    runs: ``ARGS``, or ``NAME ARGS`` where NAME is the program (``$0``)."""
    if argv[:2] == ["sh", "-c"] and len(argv) > 4:
        argv = argv[4:] if argv[3].startswith("recoverd-") else argv[3:]
    line = shlex.join(argv)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@recoverd.hookimpl
def recoverd_add_transports(register: Kind) -> None:
    """Register the ``ssh`` transport."""
    register.add("ssh", SSHTransport)
