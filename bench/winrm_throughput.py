"""How fast output and stdin cross the winrm transport, per auth, against the test WS-Man server.

Run: .venv/bin/python bench/winrm_throughput.py [MEGABYTES]

It measures the protocol path (pywinrm client, SOAP, base64, TLS or NTLM sealing, the Python test
server), not a Windows machine; the numbers compare the auths with each other and show what a
Receive loop costs. Every auth runs against its own server on 127.0.0.1 in the same run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from recoverd.policy.model import Machine
from recoverd.secrets import SecretResolver
from recoverd.testing_windows import Invocation
from recoverd.testing_wsman import WSManServer
from recoverd.transport import CommandRequest
from recoverd_plugins.winrm import WinRMTransport

CHUNK = os.urandom(64 * 1024)


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    size = megabytes * 1024 * 1024

    def produce(inv: Invocation) -> int:
        for _ in range(size // len(CHUNK)):
            inv.stdout(CHUNK)
        return 0

    def consume(inv: Invocation) -> int:
        total = sum(len(c) for c in iter(lambda: inv.stdin.read(65536), b""))
        inv.stdout(str(total).encode())
        return 0

    print(f"{'auth':<22} {'output MB/s':>12} {'stdin MB/s':>12}")
    for https, auth in ((True, "basic"), (True, "ntlm"), (False, "ntlm")):
        with (
            tempfile.TemporaryDirectory() as tmp,
            WSManServer(Path(tmp), https=https, auth=auth) as server,
        ):
            server.host.programs.update({"produce.exe": produce, "consume.exe": consume})
            machine = Machine(
                name="bench",
                client="bench",
                transport="winrm",
                address="127.0.0.1",
                port=server.port,
                https=https,
                auth=auth,
                user=server.user,
                password="env:X",
                ca=str(server.ca_path) if https else None,
            )
            secrets = SecretResolver({"env": lambda _: server.password})
            received = 0

            def count(chunk: bytes) -> None:
                nonlocal received
                received += len(chunk)

            with WinRMTransport(machine, secrets) as transport:
                started = time.monotonic()
                transport.run(CommandRequest(["produce.exe"], on_stdout=count))
                out_rate = received / (time.monotonic() - started) / 1e6
                started = time.monotonic()
                done = transport.run(CommandRequest(["consume.exe"], stdin=os.urandom(size)))
                in_rate = size / (time.monotonic() - started) / 1e6
            assert received == size and int(done.stdout) == size
            label = f"{auth} over {'HTTPS' if https else 'HTTP (sealed)'}"
            print(f"{label:<22} {out_rate:>12.1f} {in_rate:>12.1f}")


if __name__ == "__main__":
    main()
