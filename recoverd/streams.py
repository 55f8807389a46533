"""Byte streams between two commands that run at the same time on different transports.

An image pulled from a machine over SSH and stored by restic on the controller, or a snapshot
dumped by restic on the controller and written to a machine's device, passes through a
:class:`ByteQueue`: one side's output consumer puts chunks in, the other side's stdin (or a
file-like reader) takes them out. The queue is bounded, so a slow reader slows the writer down
instead of filling the controller's memory. :class:`StreamDigest` measures what passes.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_END = object()


class StreamAborted(Exception):
    """The other side of a :class:`ByteQueue` gave up; the stream is incomplete."""


class ByteQueue:
    """A bounded queue of byte chunks from one thread to another.

    The writer calls :meth:`put` for each chunk and :meth:`close` at the end. The reader
    iterates (``for chunk in q``) or calls :meth:`read`. :meth:`abort` from the reader makes
    the next ``put`` raise StreamAborted, so that a writer never waits forever for a reader
    that is gone.
    """

    def __init__(self, max_chunks: int = 64) -> None:
        self._queue: queue.Queue[object] = queue.Queue(max_chunks)
        self._aborted = threading.Event()
        self._rest = b""
        self._ended = False

    def put(self, chunk: bytes) -> None:
        """Hand one chunk to the reader, waiting while the queue is full.

        Raise StreamAborted if the reader gave up.
        """
        while True:
            if self._aborted.is_set():
                raise StreamAborted("the receiving side stopped reading")
            try:
                self._queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """End the stream: the reader gets what was put, then the end."""
        while not self._aborted.is_set():
            try:
                self._queue.put(_END, timeout=0.5)
                return
            except queue.Full:
                continue

    def abort(self) -> None:
        """Called by the reader: stop the writer, drop what is queued."""
        self._aborted.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[bytes]:
        while not self._ended:
            item = self._queue.get()
            if item is _END:
                self._ended = True
                return
            yield item  # type: ignore[misc]

    def read(self, size: int = -1) -> bytes:
        """Return up to ``size`` bytes (all that is left with -1); b"" at the end."""
        parts = [self._rest]
        have = len(self._rest)
        chunks = iter(self)
        while size < 0 or have < size:
            chunk = next(chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if size < 0:
            self._rest = b""
            return data
        self._rest = data[size:]
        return data[:size]


@dataclass
class StreamDigest:
    """Count, hash and time the bytes of a stream as they pass; report progress on the way."""

    on_bytes: Callable[[int], None] | None = None
    size: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    def __call__(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(self.size)

    def done(self) -> None:
        self.finished = time.monotonic()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started
