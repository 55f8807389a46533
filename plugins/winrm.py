"""The ``winrm`` transport: run commands on Windows machines over WS-Management (pywinrm).

One WinRS shell per transport session, one WinRS command per request. HTTPS (port 5986) is the
default and the server's certificate is always validated, against the policy's ``ca`` bundle or
the controller's trust store; a certificate that does not validate ends the TLS handshake, so no
credentials are ever sent to it. Plain HTTP is allowed only with an auth that encrypts the
messages itself (ntlm, kerberos, credssp); the policy loader refuses anything else.

Commands are argv lists turned into one Windows command line (:mod:`recoverd.powershell`) that
WinRS hands to CreateProcess directly, with no ``cmd.exe`` in between. Output is passed on as each
Receive returns it; a Receive that times out on the server (WS-Management fault 2150858793, no
output yet) is simply repeated.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import recoverd
from recoverd.errors import (
    AuthenticationFailed,
    CertificateRejected,
    CommandTimeout,
    ConnectionLost,
    TransportError,
    Unreachable,
)
from recoverd.plugins import lazy_import
from recoverd.powershell import command_line
from recoverd.transport import (
    CommandOutcome,
    CommandRequest,
    OutputBuffer,
    StdinFeeder,
    Transport,
)

if TYPE_CHECKING:
    from winrm.protocol import Protocol

    from recoverd.plugins import Kind
    from recoverd.policy.model import Machine
    from recoverd.secrets import SecretResolver

OPERATION_TIMEOUT_S = 20
"""How long the machine holds a Receive open when there is no output (WS-Management's
OperationTimeout); the deadline of a request is checked between two Receives."""

READ_TIMEOUT_S = OPERATION_TIMEOUT_S + 10
"""How long to wait for any HTTP answer: longer than the operation timeout, as pywinrm requires."""

UTF8_CODEPAGE = 65001
"""The shell's console code page: programs' console output and input are UTF-8."""

PYWINRM_AUTH = {
    "ntlm": "ntlm",
    "kerberos": "kerberos",
    "credssp": "credssp",
    "certificate": "certificate",
    "basic": "basic",
}
"""Policy ``auth`` values mapped to pywinrm's transport names."""

NOT_FOUND_CODES = (2, 3)
"""Windows errors ERROR_FILE_NOT_FOUND and ERROR_PATH_NOT_FOUND: WinRS could not start the
program of a command."""

OPTIONAL_AUTHS = {"kerberos": "HAVE_KERBEROS", "credssp": "HAVE_CREDSSP"}
"""Auths whose libraries are pywinrm extras, and the flag pywinrm sets when they load."""

# pywinrm and requests are imported at the first connection, not with the plugin.
requests = lazy_import("requests")
winrm_errors = lazy_import("winrm.exceptions")
winrm_protocol = lazy_import("winrm.protocol")
winrm_transport = lazy_import("winrm.transport")


def http_errors() -> tuple[type[BaseException], ...]:
    """Return what a pywinrm call raises when the exchange with the machine fails."""
    return (
        requests.exceptions.RequestException,
        winrm_errors.WinRMError,
        winrm_errors.WinRMTransportError,
    )


class WinRMTransport(Transport):
    """A WinRS shell on one Windows machine, reused by every command of a run."""

    name = "winrm"
    os_family = "windows"

    def __init__(self, machine: Machine, secrets: SecretResolver) -> None:
        super().__init__(machine, secrets)
        self.address: str = machine.address or machine.name
        self.https: bool = machine.https
        self.port: int = machine.port or (5986 if machine.https else 5985)
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.endpoint = f"{'https' if self.https else 'http'}://{host}:{self.port}/wsman"
        self._protocol: Protocol | None = None
        self._shell: str | None = None

    def describe(self) -> str:
        """Return ``user@https://address:port/wsman``."""
        return f"{self.machine.user}@{self.endpoint}" if self.machine.user else self.endpoint

    def quote(self, argv: list[str]) -> str:
        """Return ``argv`` as one Windows command line (CommandLineToArgvW rules)."""
        return command_line(argv)

    # -- connecting ------------------------------------------------------------------------

    def connect(self) -> None:
        """Open a WinRS shell on the machine.

        Raise CertificateRejected if its certificate does not validate, AuthenticationFailed if
        it refuses the credentials, Unreachable if it does not answer, TransportError if it
        answers with an error.
        """
        if self._shell is not None:
            return
        protocol = self._new_protocol()
        try:
            self._shell = protocol.open_shell(codepage=UTF8_CODEPAGE, noprofile=True)
        except BaseException as exc:
            protocol.transport.close_session()
            error = self._error(exc, "open a shell", connecting=True)
            if error is None:
                raise
            raise error from None
        self._protocol = protocol

    def _new_protocol(self) -> Protocol:
        """Return a pywinrm Protocol for the machine. Raise TransportError if it cannot be made."""
        machine = self.machine
        auth = machine.auth
        if auth in OPTIONAL_AUTHS and not getattr(winrm_transport, OPTIONAL_AUTHS[auth]):
            raise TransportError(
                f"WinRM auth {auth!r} of {machine.name} needs pywinrm's {auth} extra on the "
                f"controller: pip install 'pywinrm[{auth}]'"
            )
        password = None
        if machine.password is not None:
            password = self.secrets.resolve(
                machine.password, what=f"WinRM password of {machine.name}"
            )
        try:
            protocol = winrm_protocol.Protocol(
                self.endpoint,
                transport=PYWINRM_AUTH[auth],  # type: ignore[arg-type]
                username=machine.user,
                password=password,
                server_cert_validation="validate",
                ca_trust_path=machine.ca,  # type: ignore[arg-type]  # None: the default trust
                cert_pem=machine.cert,
                cert_key_pem=machine.cert_key,
                read_timeout_sec=READ_TIMEOUT_S,
                operation_timeout_sec=OPERATION_TIMEOUT_S,
                # Over plain HTTP the messages must be encrypted: fail rather than send clear text.
                message_encryption="auto" if self.https else "always",
                proxy=None,  # machines are reached directly, never through an environment proxy
            )
        except winrm_errors.WinRMError as exc:  # missing certificate files, unsupported auth
            raise TransportError(
                f"cannot use WinRM auth {auth!r} for {machine.name}: {exc}"
            ) from None
        # requests takes (connect, read): an absent machine fails within connect_timeout while a
        # Receive may still take the whole operation timeout.
        protocol.transport.read_timeout_sec = (machine.connect_timeout, READ_TIMEOUT_S)  # type: ignore[assignment]
        return protocol

    def close(self) -> None:
        """Delete the shell on the machine and close the HTTP session; safe to call again."""
        protocol, shell = self._protocol, self._shell
        self._protocol = self._shell = None
        if protocol is None:
            return
        try:
            if shell is not None:
                protocol.close_shell(shell, close_session=True)
        except (*http_errors(), AssertionError):
            # The machine is gone or refuses: WinRM deletes an idle shell by itself
            # (IdleTimeout), nothing more can be done from here.
            pass
        finally:
            protocol.transport.close_session()

    # -- running ---------------------------------------------------------------------------

    def run(self, request: CommandRequest) -> CommandOutcome:
        """Given a request, run it as a WinRS command of the shell and return how it ended.

        stdin is sent in full, in chunks, before the output is read: WinRS keeps a command's
        output on the machine until it is received, and a security context whose message
        sequence (NTLM or Kerberos encryption) must stay in order is used from one thread only.

        Raise CommandTimeout past ``request.timeout`` (the command is terminated),
        ConnectionLost if the machine stops answering, TransportError if it refuses the command.
        """
        protocol, shell = self._protocol, self._shell
        if protocol is None or shell is None:
            raise RuntimeError(f"{type(self).__name__}.run() before connect()")
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        stdout = OutputBuffer(request.on_stdout)
        stderr = OutputBuffer(request.on_stderr)
        try:
            command = protocol.run_command(shell, self.quote(request.argv), skip_cmd_shell=True)
        except winrm_errors.WSManFaultError as exc:
            if exc.wsman_fault_code in NOT_FOUND_CODES:
                # As under a POSIX shell: engines tell a missing program by status 127.
                return CommandOutcome(127, stderr=f"{request.argv[0]}: not found\n".encode())
            raise self._error(exc, f"start {_summary(request.argv)}") or exc from None
        except BaseException as exc:
            raise self._error(exc, f"start {_summary(request.argv)}") or exc from None
        try:
            # Even without stdin its end is sent: a program that reads stdin must not wait.
            self._send_stdin(protocol, shell, command, request)
            status = self._receive(protocol, shell, command, request, stdout, stderr, deadline)
        except BaseException as exc:
            error = self._error(exc, f"run {_summary(request.argv)}")
            if error is None:
                raise
            raise error from None
        finally:
            self._end(protocol, shell, command)
        return CommandOutcome(status, stdout.value(), stderr.value())

    def _send_stdin(
        self, protocol: Protocol, shell: str, command: str, request: CommandRequest
    ) -> None:
        """Send the stdin of ``request`` in chunks, then its end. Raise what its iterable raises."""

        def write(chunk: bytes) -> None:
            try:
                protocol.send_command_input(shell, command, chunk)
            except winrm_errors.WSManFaultError as exc:
                # The command no longer reads (it ended or closed its stdin): its exit status
                # tells what that means.
                raise BrokenPipeError(str(exc)) from None

        def end() -> None:
            if feeder.error is None:
                try:
                    protocol.send_command_input(shell, command, b"", end=True)
                except winrm_errors.WSManFaultError as exc:
                    raise BrokenPipeError(str(exc)) from None

        feeder = StdinFeeder(request.stdin, write, end)
        feeder.run()  # in this thread: see run()
        if feeder.error is not None:
            raise feeder.error

    def _receive(
        self,
        protocol: Protocol,
        shell: str,
        command: str,
        request: CommandRequest,
        stdout: OutputBuffer,
        stderr: OutputBuffer,
        deadline: float | None,
    ) -> int:
        """Pass output on as each Receive returns it; return the exit code once it is done.

        Raise CommandTimeout past ``deadline``.
        """
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise CommandTimeout(
                    f"{_summary(request.argv)} on {self.machine.name} did not finish within "
                    f"{request.timeout:g}s; it was terminated"
                )
            try:
                out, err, status, done = protocol.get_command_output_raw(shell, command)
            except winrm_errors.WinRMOperationTimeoutError:
                continue  # no output within the operation timeout: the command still runs
            if out:
                stdout(out)
            if err:
                stderr(err)
            if done:
                return status

    def _end(self, protocol: Protocol, shell: str, command: str) -> None:
        """Terminate the command (a no-op once it ended) and free it on the machine."""
        try:
            protocol.cleanup_command(shell, command)
        except (*http_errors(), AssertionError):
            pass  # the shell goes with close(); an unreachable machine is reported already

    # -- errors ----------------------------------------------------------------------------

    def _error(
        self, exc: BaseException, doing: str, *, connecting: bool = False
    ) -> TransportError | None:
        """Given what a pywinrm call raised, return the error to raise instead (None: re-raise)."""
        where = f"{self.machine.name} at {self.endpoint}"
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, winrm_errors.InvalidCredentialsError):
            return AuthenticationFailed(
                f"wrong credentials for {self.machine.name}: {self.machine.user or 'the client'} "
                f"was refused by {self.endpoint} (auth {self.machine.auth}); check user and "
                "password"
                + (" and that the machine allows this auth" if self.machine.auth != "ntlm" else "")
            )
        if isinstance(exc, PermissionError) and "challenge" in str(exc):
            # requests_ntlm's way of saying the 401 carried no NTLM challenge to answer.
            return AuthenticationFailed(
                f"{where} answered HTTP 401 without an NTLM challenge (auth "
                f"{self.machine.auth}): WinRM there does not offer Negotiate, or a proxy in "
                "between strips it. Check `winrm get winrm/config/service/auth` on the machine, "
                "or set auth to one it offers"
            )
        if isinstance(exc, requests.exceptions.SSLError):
            verify_failed = re.search(r"certificate verify failed: ([^(']+)", str(exc))
            if verify_failed:
                trust = f"the CA bundle {self.machine.ca}" if self.machine.ca else "the system CAs"
                return CertificateRejected(
                    f"the TLS certificate of {where} does not validate against {trust} "
                    f"({verify_failed[1].strip()}); nothing was sent. Set ca = "
                    '"/path/to/ca.pem" to the CA that issued it'
                )
            if self.machine.auth == "certificate":
                return AuthenticationFailed(
                    f"wrong credentials for {self.machine.name}: {where} refused the client "
                    f"certificate {self.machine.cert} during the TLS handshake; it must be "
                    "issued by a CA the machine trusts and mapped to a user (winrm create "
                    "winrm/config/service/certmapping)"
                )
            return TransportError(f"TLS with {where} failed: {exc}")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return Unreachable(
                f"cannot reach {where}: timed out after {self.machine.connect_timeout:g}s"
            )
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            if connecting:
                return Unreachable(f"cannot reach {where}: {_connection_reason(exc)}")
            return ConnectionLost(
                f"connection to {where} was lost while trying to {doing}: {_connection_reason(exc)}"
            )
        if isinstance(exc, winrm_errors.WSManFaultError):
            return TransportError(f"{where} refused to {doing}: {exc.reason}")
        if isinstance(exc, winrm_errors.WinRMTransportError):
            return TransportError(
                f"{where} answered HTTP {exc.code} when asked to {doing}; is WinRM enabled "
                "there (winrm quickconfig)?"
            )
        if isinstance(exc, winrm_errors.WinRMError):
            return TransportError(f"WinRM with {where} failed while trying to {doing}: {exc}")
        return None


def _summary(argv: list[str], limit: int = 80) -> str:
    """Return the command line for messages, shortened to ``limit`` characters."""
    line = command_line(argv)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo failed" in text:
        return "unknown host name"
    if "timed out" in text.lower():
        return "no answer in time"
    return text


@recoverd.hookimpl
def recoverd_add_transports(register: Kind) -> None:
    """Register the ``winrm`` transport."""
    register.add("winrm", WinRMTransport)
