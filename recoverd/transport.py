"""The transport contract: run an argv on a machine and stream its bytes.

A transport knows how to reach a machine and how to quote for its shell; it knows nothing of
restic. Engines receive a connected transport and call :meth:`Transport.run` with a
:class:`CommandRequest`; they get a :class:`CommandOutcome` back or a typed
:class:`~recoverd.errors.TransportError`.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recoverd.errors import RecoverdError, TransportError, unexpected

if TYPE_CHECKING:
    from recoverd.policy.model import Machine
    from recoverd.secrets import SecretResolver

Chunk = Callable[[bytes], None]
"""A consumer of one chunk of a command's output."""

COLLECT_LIMIT = 4 * 1024 * 1024
"""Bytes of stdout/stderr kept in a CommandOutcome when no consumer is given (the tail)."""

MAX_RECORD = 256 * 1024
"""Longest line (or NUL-terminated record) a :class:`RecordSplitter` passes on: a machine that
prints one endless line must not fill the controller's memory. restic's longest lines (a
node of ``ls --json`` with a 4 KiB path, escaped) are a few dozen KiB."""


@dataclass
class CommandRequest:
    """One command to run on a machine.

    ``argv`` is a list of arguments, never a shell string: the transport quotes it for the
    machine's shell. ``stdin`` is bytes or an iterable of byte chunks, sent then closed (EOF).
    ``on_stdout`` / ``on_stderr`` receive output as it arrives; without them the output is
    collected into the outcome (the last :data:`COLLECT_LIMIT` bytes). ``timeout`` is the
    deadline for the whole command in seconds (None: no limit).
    """

    argv: list[str]
    stdin: bytes | Iterable[bytes] | None = None
    on_stdout: Chunk | None = None
    on_stderr: Chunk | None = None
    timeout: float | None = None
    moved: Callable[[], float] | None = None
    """When the command last moved on by its own account (a ``time.monotonic()``), for the
    transport's ``stall_after``: then output alone is not progress (restic retrying a full or
    unreachable repository prints the same status every second). None: every byte of output
    is progress. Stdin taken is progress either way."""


@dataclass
class CommandOutcome:
    """How a command ended: its exit status (None when killed by a signal) and output."""

    exit_status: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    signal: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True)
class HostKey:
    """The key a machine offers to prove who it is, and whether the policy trusts it."""

    type: str
    """``ssh-ed25519``, ``ecdsa-sha2-nistp256``, ..."""
    base64: str
    fingerprint: str
    """``SHA256:...``, as ``ssh-keygen -lf`` prints it."""
    trust: str
    """``pinned`` (the policy's ``host_key``), ``known`` (a known_hosts entry), ``unknown`` or
    ``changed`` (neither matches: the policy or known_hosts names another key)."""
    expected: str | None = None
    """For ``changed``: the fingerprint the policy or known_hosts expects."""

    @property
    def line(self) -> str:
        """The key as a policy pins it: ``TYPE BASE64``."""
        return f"{self.type} {self.base64}"


class Transport(ABC):
    """A session with one machine, opened once per run and reused for all its commands.

    Use as a context manager: ``with transport: transport.run(...)``.
    """

    name: str = ""
    os_family: str = "posix"
    """``posix`` or ``windows``: tells engines which path and quoting rules apply."""
    stall_after: float | None = None
    """Seconds a command may go without progress (a byte of output, a chunk of stdin taken)
    before the transport stops it and raises Stalled; None: no limit. The action sets it per
    level (``stall_after``); a transport that cannot stop commands ignores it."""

    def __init__(self, machine: Machine, secrets: SecretResolver) -> None:
        self.machine = machine
        self.secrets = secrets
        with _made_lock:
            _made.add(self)

    @abstractmethod
    def connect(self) -> None:
        """Open the session. Raise Unreachable, HostKeyRejected or AuthenticationFailed."""

    @abstractmethod
    def run(self, request: CommandRequest) -> CommandOutcome:
        """Run one command to its end and return how it ended.

        Raise CommandTimeout past ``request.timeout``, ConnectionLost if the session drops.
        """

    @abstractmethod
    def close(self) -> None:
        """Close the session; safe to call more than once."""

    def give_up(self, reason: str) -> bool:
        """Give up on this transport's commands, from any thread: the running one (and any
        later one) is stopped on the machine and :meth:`run` raises Interrupted, whose message
        starts with ``reason``. Return False if this transport cannot (the default): its
        command runs to its end."""
        return False

    @classmethod
    def policy_warnings(cls, machine: Machine) -> list[str]:
        """Return what ``recoverd check`` should point out about ``machine``'s connection
        settings without connecting (by default: why it is not :meth:`unready`)."""
        reason = cls.unready(machine)
        return [reason] if reason else []

    @classmethod
    def unready(cls, machine: Machine) -> str | None:
        """Return why no scheduled run should start on ``machine`` yet, without connecting
        (it was never enrolled: nothing vouches for its host key), or None. The daemon then
        leaves its levels alone instead of recording runs that are bound to fail."""
        return None

    def host_key(self) -> HostKey | None:
        """Return the key the machine offers now and whether it is trusted, without logging in
        and without trusting it; None if this transport identifies machines otherwise (TLS
        certificates, or none on the controller itself). Raise Unreachable."""
        return None

    def quote(self, argv: list[str]) -> str:
        """Return ``argv`` as one command line for the machine's shell."""
        return shlex.join(argv)

    def describe(self) -> str:
        """Return where this transport goes, for messages (``root@10.1.0.42:22``)."""
        return self.machine.address or self.machine.name

    def open(self) -> None:
        """Connect as :meth:`connect` does; an exception that is no RecoverdError (a library's
        own: a server that answers garbage, an HTTP 401 without the expected challenge) closes
        the session and becomes a TransportError that names the machine and the reason, so that
        the runs it stops are recorded like any other failure to connect."""
        try:
            self.connect()
        except RecoverdError:
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.close()
            reason = unexpected(exc, f"cannot connect to {self.machine.name} ({self.describe()})")
            raise TransportError(str(reason)) from exc

    def __enter__(self) -> Transport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_made: weakref.WeakSet[Transport] = weakref.WeakSet()
"""Every transport of this process that still exists, for :func:`give_up_all`."""
_made_lock = threading.Lock()


def give_up_all(reason: str) -> bool:
    """Call :meth:`Transport.give_up` on every transport of this process (a stopping daemon);
    return True if any of them will stop a command."""
    with _made_lock:
        transports = list(_made)
    return any([transport.give_up(reason) for transport in transports])


@dataclass
class OutputBuffer:
    """Collect the tail of a stream, or pass chunks on to a consumer."""

    consumer: Chunk | None = None
    limit: int = COLLECT_LIMIT
    _parts: list[bytes] = field(default_factory=list)
    _size: int = 0

    def __call__(self, chunk: bytes) -> None:
        if self.consumer is not None:
            self.consumer(chunk)
            return
        self._parts.append(chunk)
        self._size += len(chunk)
        # Drop whole chunks only while the rest still holds ``limit`` bytes: value() cuts the
        # exact tail.
        while len(self._parts) > 1 and self._size - len(self._parts[0]) >= self.limit:
            self._size -= len(self._parts.pop(0))

    def value(self) -> bytes:
        return b"".join(self._parts)[-self.limit :]


class RecordSplitter:
    """Feed byte chunks of a stream; get its complete records (lines by default) passed to
    ``on_record`` without their separator.

    A record longer than ``limit`` bytes is passed on cut to ``limit`` bytes once, and the rest
    of it is dropped as it arrives: memory stays bounded whatever the machine prints.
    ``cut`` counts the records that were cut.
    """

    def __init__(
        self,
        on_record: Callable[[bytes], None],
        separator: bytes = b"\n",
        limit: int = MAX_RECORD,
    ) -> None:
        self._on_record = on_record
        self._separator = separator
        self._limit = limit
        self._rest = bytearray()
        self._skipping = False
        """True while the rest of a cut record is being dropped."""
        self.cut = 0

    def __call__(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(self._separator, start)
            if end < 0:
                self._hold(chunk[start:])
                return
            if self._skipping:
                self._skipping = False
            else:
                self._rest += chunk[start:end]
                record, self._rest = bytes(self._rest[: self._limit]), bytearray()
                self._on_record(record)
            start = end + len(self._separator)

    def _hold(self, part: bytes) -> None:
        if self._skipping:
            return
        self._rest += part
        if len(self._rest) > self._limit:
            self.cut += 1
            self._skipping = True
            record, self._rest = bytes(self._rest[: self._limit]), bytearray()
            self._on_record(record)

    def flush(self) -> None:
        """Pass on the last record if the stream did not end with a separator."""
        if self._rest:
            record, self._rest = bytes(self._rest), bytearray()
            self._on_record(record)
        self._skipping = False


def iter_stdin(stdin: bytes | Iterable[bytes] | None, size: int = 64 * 1024) -> Iterator[bytes]:
    """Yield ``stdin`` in chunks of at most ``size`` bytes."""
    if stdin is None:
        return
    if isinstance(stdin, bytes | bytearray | memoryview):
        data = memoryview(stdin)
        for start in range(0, len(data), size):
            yield bytes(data[start : start + size])
        return
    for chunk in stdin:
        if chunk:
            yield chunk


class StdinFeeder(threading.Thread):
    """Write a request's stdin on a thread so that output is read at the same time.

    ``write`` sends one chunk, ``close`` signals EOF. An OSError from ``write`` means the command
    no longer reads and ends the feeding quietly. Any other exception (from ``write`` or from the
    stdin iterable, its OSErrors included) is kept in ``error``, already set when ``close`` is
    called, and re-raised by :meth:`finish`.
    """

    def __init__(
        self,
        stdin: bytes | Iterable[bytes] | None,
        write: Callable[[bytes], object],
        close: Callable[[], object],
    ) -> None:
        super().__init__(daemon=True, name="stdin-feeder")
        self._stdin, self._write, self._close = stdin, write, close
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for chunk in iter_stdin(self._stdin):
                try:
                    self._write(chunk)
                except OSError:
                    # The command stopped reading (it exited or closed its stdin): its exit
                    # status tells what that means.
                    return
        except BaseException as exc:  # the iterable or write failed: handed over in finish()
            self.error = exc
        finally:
            try:
                self._close()
            except OSError:
                pass

    def finish(self, timeout: float | None = None) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error
