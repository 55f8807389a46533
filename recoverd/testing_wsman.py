"""A WS-Management (WinRS) server on 127.0.0.1 for tests, the demo and plugin authors.

It speaks the shell protocol that the real pywinrm client speaks to Windows — Create, Command,
Send, Receive, Signal and Delete, SOAP faults included (the operation-timeout fault 2150858793
while a command runs without output) — over HTTP or HTTPS with a throwaway CA, with HTTP basic
authentication. Behind it runs a :class:`~recoverd.testing_windows.SimulatedWindows` host::

    with WSManServer(root=tmp / "C-drive-root", https=True) as server:
        machine = Machine(name="win", client="acme", transport="winrm", address="127.0.0.1",
                          port=server.port, auth="basic", user=server.user,
                          password="env:WINRM_PASSWORD", ca=str(server.ca_path))

What a test may want to check is kept: every HTTP request (:attr:`WSManServer.requests`, with
whether it carried credentials), failed TLS handshakes, faults sent, open shells.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import queue
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from recoverd.testing import LOOPBACK
from recoverd.testing_windows import Invocation, SimulatedWindows

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
OPERATION_TIMEOUT_FAULT = 2150858793
MUTUAL_TLS = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"
"""The Authorization value of WinRM certificate auth (the certificate is in the TLS layer)."""
NTLM_USER_FILE = "NTLM_USER_FILE"
BOUNDARY = b"--Encrypted Boundary"
ENCRYPTED_PROTOCOL = b"application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_TYPE = (
    'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";'
    'boundary="Encrypted Boundary"'
)
RECEIVE_LIMIT = 256 * 1024
"""Output bytes sent in one Receive response at most; the rest waits for the next one."""


@dataclass
class SeenRequest:
    """One HTTP request as the server saw it."""

    action: str | None
    authorization: str | None
    """The scheme of the Authorization header (``Basic``), or None without one."""


@dataclass
class _Command:
    """A WinRS command: its program runs on a thread, its output waits in a queue."""

    id: str
    output: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    exit_code: int | None = None
    stdin_read: Any = None
    stdin_write: Any = None
    invocation: Invocation | None = None
    finished: bool = False

    def terminate(self) -> None:
        if self.invocation is not None and not self.finished:
            for kill in self.invocation.on_terminate:
                with contextlib.suppress(OSError):
                    kill()
        with contextlib.suppress(OSError):
            self.stdin_write.close()


class WSManServer:
    """A WinRS endpoint on 127.0.0.1 with a simulated Windows host behind it."""

    def __init__(
        self,
        root: Path,
        *,
        https: bool = True,
        auth: str = "basic",
        user: str = "recoverd",
        password: str = "Winrm-Pa55word-for-tests",
        operation_timeout: float = 0.5,
        restic: str = "restic",
        ntlm_challenge: bool = True,
    ) -> None:
        self.root = Path(root)
        self.https = https
        if auth not in ("basic", "ntlm", "certificate"):
            raise ValueError(f"auth must be 'basic', 'ntlm' or 'certificate', not {auth!r}")
        self.auth = auth
        self.user, self.password = user, password
        self.operation_timeout = operation_timeout
        self.ntlm_challenge = ntlm_challenge
        """False: every NTLM attempt gets a 401 without a challenge (an endpoint where NTLM is
        off, or a proxy that strips the header)."""
        """Seconds a Receive waits for output before the timeout fault (Windows: up to the
        client's OperationTimeout; short here so that tests see the fault quickly)."""
        self.host = SimulatedWindows(self.root, restic=restic)
        self.workdir = Path(tempfile.mkdtemp(prefix="recoverd-wsman-"))
        self.ca_path = self.workdir / "ca.pem"
        self.client_cert = self.workdir / "client.pem"
        self.client_key = self.workdir / "client.key"
        """A client certificate for ``user`` signed by the CA (``certificate`` auth)."""
        self.requests: list[SeenRequest] = []
        self.encrypted = 0
        """SOAP messages that arrived encrypted (NTLM message encryption)."""
        self.tls_failures: list[str] = []
        self.faults: list[int] = []
        self.shells: set[str] = set()
        self.connections: set[socket.socket] = set()
        self.commands: dict[str, _Command] = {}
        self._lock = threading.Lock()
        self._saved_user_file: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.https else 'http'}://{LOOPBACK}:{self.port}/wsman"

    def start(self) -> WSManServer:
        """Listen on a free port of 127.0.0.1 and serve on a thread; return self.

        With NTLM, pyspnego's acceptor reads the accounts from the file named by the environment
        variable NTLM_USER_FILE: it is set for as long as the server runs.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.auth == "ntlm":
            users = self.workdir / "ntlm-users"
            users.write_text(f":{self.user}:{self.password}\n")
            users.chmod(0o600)
            self._saved_user_file = os.environ.get(NTLM_USER_FILE)
            os.environ[NTLM_USER_FILE] = str(users)
        server = _HTTPServer((LOOPBACK, 0), _Handler)
        server.wsman = self
        if self.https:
            server.tls = self._tls_context()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True, name="wsman")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, terminate what still runs and remove the CA files."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for command in list(self.commands.values()):
            command.terminate()
        if self.auth == "ntlm":
            if self._saved_user_file is None:
                os.environ.pop(NTLM_USER_FILE, None)
            else:
                os.environ[NTLM_USER_FILE] = self._saved_user_file
        shutil.rmtree(self.workdir, ignore_errors=True)

    def cut_connections(self) -> int:
        """Cut every open connection, as a pulled cable would; return how many there were.

        The server keeps listening and the commands keep running.
        """
        with self._lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        return len(connections)

    def __enter__(self) -> WSManServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tls_context(self) -> ssl.SSLContext:
        cert, key = make_certificate_chain(self.workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if self.auth == "certificate":
            context.verify_mode = ssl.CERT_OPTIONAL  # a missing certificate gets a 401 below
            context.load_verify_locations(self.ca_path)
        return context

    # -- the shell protocol ------------------------------------------------------------------

    def handle(self, body: bytes) -> tuple[int, str]:
        """Given a SOAP request, return the HTTP status and the SOAP response."""
        root = ET.fromstring(body)
        header = root.find("s:Header", NS)
        assert header is not None
        action = _text(header, "a:Action")
        message_id = _text(header, "a:MessageID")
        selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", NS)
        shell = selector.text if selector is not None else None
        request_body = root.find("s:Body", NS)
        if shell is not None and shell not in self.shells:
            return self._fault(
                message_id,
                2150858843,
                "The request for the Windows Remote Shell "
                "with ShellId " + shell + " failed because the shell was not "
                "found on the server.",
            )
        if action == f"{TRANSFER}/Create":
            return self._create(message_id)
        if action == f"{SHELL}/Command":
            return self._command(message_id, header, request_body)
        if action == f"{SHELL}/Send":
            return self._send(message_id, request_body)
        if action == f"{SHELL}/Receive":
            return self._receive(message_id, request_body)
        if action == f"{SHELL}/Signal":
            return self._signal(message_id, request_body)
        if action == f"{TRANSFER}/Delete":
            with self._lock:
                self.shells.discard(shell or "")
            return 200, _envelope(f"{TRANSFER}/DeleteResponse", message_id, "")
        return self._fault(message_id, 2150858817, f"unsupported action {action}")

    def _create(self, message_id: str) -> tuple[int, str]:
        shell = str(uuid.uuid4()).upper()
        with self._lock:
            self.shells.add(shell)
        body = (
            f"<x:ResourceCreated><a:Address>{self.endpoint}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL}/cmd</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell}</rsp:ShellId></rsp:Shell>"
        )
        return 200, _envelope(f"{TRANSFER}/CreateResponse", message_id, body)

    def _command(self, message_id: str, header: ET.Element, body: Any) -> tuple[int, str]:
        line = _text(body, "rsp:CommandLine/rsp:Command")
        arguments = body.find("rsp:CommandLine/rsp:Arguments", NS)
        if arguments is not None and arguments.text:
            line += " " + arguments.text
        command = _Command(str(uuid.uuid4()).upper())
        read_fd, write_fd = os.pipe()
        command.stdin_read = os.fdopen(read_fd, "rb", buffering=0)
        command.stdin_write = os.fdopen(write_fd, "wb", buffering=0)
        invocation = Invocation(
            host=self.host,
            argv=[],
            stdin=command.stdin_read,
            stdout=lambda data: command.output.put(("stdout", data)),
            stderr=lambda data: command.output.put(("stderr", data)),
        )
        command.invocation = invocation
        program = self.host.program(_first_word(line))
        if program is None:
            with self._lock:
                self.host.command_lines.append(line)
            command.stdin_read.close()
            command.stdin_write.close()
            return self._fault(message_id, 2, "The system cannot find the file specified.")
        with self._lock:
            self.commands[command.id] = command

        def run() -> None:
            try:
                command.exit_code = self.host.run(line, invocation)
            except Exception as exc:  # a simulated program's bug: show it like a crash
                command.output.put(("stderr", f"simulated host: {exc!r}\r\n".encode()))
                command.exit_code = 1
            finally:
                command.finished = True
                command.stdin_read.close()
                command.output.put(("done", b""))

        threading.Thread(target=run, daemon=True, name=f"wsman-{command.id[:8]}").start()
        response = (
            f"<rsp:CommandResponse><rsp:CommandId>{command.id}</rsp:CommandId>"
            "</rsp:CommandResponse>"
        )
        return 200, _envelope(f"{SHELL}/CommandResponse", message_id, response)

    def _send(self, message_id: str, body: Any) -> tuple[int, str]:
        stream = body.find("rsp:Send/rsp:Stream", NS)
        command = self.commands.get(stream.get("CommandId", ""))
        if command is None:
            return self._fault(message_id, 2150858843, "The command was not found.")
        data = base64.b64decode(stream.text or "")
        try:
            if data:
                command.stdin_write.write(data)
            if stream.get("End") == "true":
                command.stdin_write.close()
        except (OSError, ValueError):  # the program ended: its end of the pipe is closed
            return self._fault(message_id, 232, "The pipe is being closed.")
        return 200, _envelope(f"{SHELL}/SendResponse", message_id, "<rsp:SendResponse/>")

    def _receive(self, message_id: str, body: Any) -> tuple[int, str]:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command = self.commands.get(desired.get("CommandId", ""))
        if command is None:
            return self._fault(message_id, 2150858843, "The command was not found.")
        streams: list[str] = []
        size, done = 0, False
        wait = self.operation_timeout
        while size < RECEIVE_LIMIT:
            try:
                name, data = command.output.get(timeout=wait)
            except queue.Empty:
                break
            wait = 0  # once something came, send what there is without waiting for more
            if name == "done":
                done = True
                break
            size += len(data)
            encoded = base64.b64encode(data).decode("ascii")
            streams.append(
                f'<rsp:Stream Name="{name}" CommandId="{command.id}">{encoded}</rsp:Stream>'
            )
        if not streams and not done:
            return self._fault(
                message_id,
                OPERATION_TIMEOUT_FAULT,
                "The WS-Management service cannot complete the operation within the time "
                "specified in OperationTimeout.",
                subcode="w:TimedOut",
            )
        if done:
            state = (
                f'<rsp:CommandState CommandId="{command.id}" State="{SHELL}/CommandState/Done">'
                f"<rsp:ExitCode>{command.exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            state = (
                f'<rsp:CommandState CommandId="{command.id}" State="{SHELL}/CommandState/Running"/>'
            )
        response = f"<rsp:ReceiveResponse>{''.join(streams)}{state}</rsp:ReceiveResponse>"
        return 200, _envelope(f"{SHELL}/ReceiveResponse", message_id, response)

    def _signal(self, message_id: str, body: Any) -> tuple[int, str]:
        signal = body.find("rsp:Signal", NS)
        with self._lock:
            command = self.commands.pop(signal.get("CommandId", ""), None)
        if command is not None:
            command.terminate()
        return 200, _envelope(f"{SHELL}/SignalResponse", message_id, "<rsp:SignalResponse/>")

    def _fault(
        self, message_id: str, code: int, message: str, subcode: str = "w:InvalidParameter"
    ) -> tuple[int, str]:
        with self._lock:
            self.faults.append(code)
        fault = (
            f"<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>{subcode}"
            f'</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{escape(message)}'
            f'</s:Text></s:Reason><s:Detail><f:WSManFault Code="{code}" Machine="{LOOPBACK}">'
            f"<f:Message>{escape(message)}</f:Message></f:WSManFault></s:Detail></s:Fault>"
        )
        return 500, _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", message_id, fault)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    wsman: WSManServer
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Headers and body leave in separate writes: without this, Nagle's algorithm holds the
        # body until the client's delayed ACK (40 ms per response).
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake happens here, on the connection's own thread: a client that
        # refuses the certificate is recorded and never reaches the HTTP handler.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                with self.wsman._lock:
                    self.wsman.tls_failures.append(str(exc))
                return
        with self.wsman._lock:  # the TLS socket: wrapping detached the plain one
            self.wsman.connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.wsman._lock:
                self.wsman.connections.discard(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the records
        pass

    ntlm: Any = None
    """The NTLM security context of this connection (NTLM authenticates connections)."""

    def do_POST(self) -> None:
        wsman = self.server.wsman
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        authorization = self.headers.get("Authorization")
        encrypted = "multipart/encrypted" in (self.headers.get("Content-Type") or "")
        action = None
        with contextlib.suppress(ET.ParseError, AttributeError):
            action = _text(ET.fromstring(body).find("s:Header", NS), "a:Action")
        with wsman._lock:
            wsman.requests.append(
                SeenRequest(action, authorization.split()[0] if authorization else None)
            )
        if wsman.auth == "ntlm":
            if not self._ntlm_authenticated(authorization):
                return
            if encrypted:
                body = self._unseal(body)
                with wsman._lock:
                    wsman.encrypted += 1
            elif body and not wsman.https:
                # As Windows by default (AllowUnencrypted = false): no clear text over HTTP.
                self._answer(400, b"unencrypted traffic is disabled", {})
                return
            if not body:  # pywinrm's empty request that sets up the security context
                self._answer(200, b"", {})
                return
        elif wsman.auth == "certificate":
            peer = self.connection.getpeercert() or {}  # type: ignore[attr-defined]
            subject = dict(item for part in peer.get("subject", ()) for item in part)
            if authorization != MUTUAL_TLS or subject.get("commonName") != wsman.user:
                self._answer(401, b"", {"WWW-Authenticate": "Basic"})
                return
        else:
            credentials = base64.b64encode(f"{wsman.user}:{wsman.password}".encode()).decode()
            if authorization != f"Basic {credentials}":
                self._answer(401, b"", {"WWW-Authenticate": 'Basic realm="WSMAN"'})
                return
        status, text = wsman.handle(body)
        data = text.encode("utf-8")
        if encrypted:
            self._answer(status, self._seal(data), {"Content-Type": ENCRYPTED_TYPE})
        else:
            self._answer(status, data, {"Content-Type": "application/soap+xml;charset=UTF-8"})

    def _ntlm_authenticated(self, authorization: str | None) -> bool:
        """Take one step of the NTLM handshake if the request carries one; return True once
        this connection is authenticated, after answering 401 otherwise."""
        import spnego
        import spnego.exceptions

        if authorization is None:
            if self.ntlm is not None and self.ntlm.complete:
                return True
            self._answer(401, b"", {"WWW-Authenticate": "Negotiate"})
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme not in ("Negotiate", "NTLM") or not self.server.wsman.ntlm_challenge:
            self._answer(401, b"", {"WWW-Authenticate": "Negotiate"})
            return False
        if self.ntlm is None or self.ntlm.complete:
            self.ntlm = spnego.server(protocol="ntlm")
        try:
            answer = self.ntlm.step(base64.b64decode(token))
        except spnego.exceptions.SpnegoError:
            self.ntlm = None
            self._answer(401, b"", {"WWW-Authenticate": "Negotiate"})
            return False
        if not self.ntlm.complete:
            challenge = f"{scheme} {base64.b64encode(answer or b'').decode()}"
            self._answer(401, b"", {"WWW-Authenticate": challenge})
            return False
        return True

    def _unseal(self, body: bytes) -> bytes:
        """Given an encrypted MIME body as pywinrm builds it, return the SOAP message."""
        payload = body.split(BOUNDARY + b"\r\n")[2]
        payload = payload.removesuffix(BOUNDARY + b"--\r\n")
        payload = payload.removeprefix(b"\tContent-Type: application/octet-stream\r\n")
        size = struct.unpack("<i", payload[:4])[0]
        signature, sealed = payload[4 : 4 + size], payload[4 + size :]
        return self.ntlm.unwrap(signature + sealed).data

    def _seal(self, message: bytes) -> bytes:
        """Return ``message`` encrypted in the MIME form pywinrm reads."""
        wrapped = self.ntlm.wrap(message, encrypt=True).data
        signature, sealed = wrapped[:16], wrapped[16:]
        return (
            BOUNDARY + b"\r\n\tContent-Type: " + ENCRYPTED_PROTOCOL + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message)).encode()
            + b"\r\n"
            + BOUNDARY
            + b"\r\n\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<i", len(signature))
            + signature
            + sealed
            + BOUNDARY
            + b"--\r\n"
        )

    def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _envelope(action: str, relates_to: str, body: str) -> str:
    namespaces = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {namespaces}><s:Header>'
        f"<a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def _text(element: Any, path: str) -> str:
    found = element.find(path, NS)
    return (found.text or "") if found is not None else ""


def _first_word(line: str) -> str:
    line = line.lstrip()
    if line.startswith('"'):
        return line[1:].split('"', 1)[0]
    return line.split(None, 1)[0] if line.strip() else ""


def make_certificate_chain(
    directory: Path, host: str = LOOPBACK, client: str = "recoverd"
) -> tuple[Path, Path]:
    """Create a throwaway CA and certificates it signed, as PEM files in ``directory``.

    ``ca.pem`` is what a client must trust; ``client.pem`` / ``client.key`` are a client
    certificate for the user ``client`` (WinRM ``certificate`` auth). Return the paths of the
    server's certificate and key (for ``host``).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> x509.Certificate:
        issuer_name, issuer_key = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def save(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
        pem = serialization.Encoding.PEM
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        key_path = directory / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        key_path.chmod(0o600)
        return key_path

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue(
        name("recoverd test CA"),
        ca_key,
        None,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        ],
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    signer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue(
        name(host),
        server_key,
        signer,
        [
            (
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
                ),
                False,
            ),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    user = issue(
        name(client),
        client_key,
        signer,
        [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    save("client", user, client_key)
    return directory / "server.pem", save("server", server, server_key)
