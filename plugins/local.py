"""The ``local`` transport: commands run on the controller itself (the demo, its own backup)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import IO, Any

import recoverd
from recoverd.errors import CommandTimeout
from recoverd.transport import CommandOutcome, CommandRequest, OutputBuffer, StdinFeeder, Transport

READ_SIZE = 64 * 1024


def _pump(stream: IO[bytes], sink: OutputBuffer) -> None:
    for chunk in iter(lambda: stream.read1(READ_SIZE), b""):  # type: ignore[attr-defined]
        sink(chunk)


class LocalTransport(Transport):
    """Run argv lists as child processes of the controller; no shell is involved."""

    name = "local"

    def connect(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to close."""

    def describe(self) -> str:
        return "the controller"

    def run(self, request: CommandRequest) -> CommandOutcome:
        """Given a request, run it as a child process and return how it ended.

        Raise CommandTimeout (after killing the process) past ``request.timeout``. A program
        that does not exist ends with status 127, as it would under a shell.
        """
        out, err = OutputBuffer(request.on_stdout), OutputBuffer(request.on_stderr)
        try:
            proc = subprocess.Popen(
                request.argv,
                stdin=subprocess.PIPE if request.stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C reaches recoverd, which decides what to stop
            )
        except FileNotFoundError:
            return CommandOutcome(127, stderr=f"{request.argv[0]}: not found\n".encode())
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True),
        ]
        feeder: StdinFeeder | None = None
        if proc.stdin is not None:
            feeder = StdinFeeder(request.stdin, proc.stdin.write, proc.stdin.close)
            feeder.start()
        for reader in readers:
            reader.start()
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        try:
            proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise CommandTimeout(
                f"{request.argv[0]} on the controller did not finish within {request.timeout:g}s"
            ) from None
        except BaseException:
            self._kill(proc)
            raise
        for reader in readers:
            reader.join()
        if feeder is not None:
            feeder.finish()
        status = proc.returncode
        if status < 0:
            return CommandOutcome(None, out.value(), err.value(), signal.Signals(-status).name)
        return CommandOutcome(status, out.value(), err.value())

    @staticmethod
    def _kill(proc: subprocess.Popen[Any]) -> None:
        proc.kill()
        proc.wait()


@recoverd.hookimpl
def recoverd_add_transports(register: Any) -> None:
    register.add("local", LocalTransport)
