"""Wake-on-LAN: wake a sleeping machine before its run, and wait for it to answer.

The magic packet (six 0xFF bytes, then the MAC address sixteen times) goes by UDP to
``wake_to`` (by default the local broadcast, port 9): from the controller, or, for a machine
on another LAN, from ``wake_via``, a machine of the same client on the sleeper's LAN, over that
machine's own transport (a broadcast does not cross routers).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

from recoverd.errors import TransportError, Unreachable, UsageError
from recoverd.transport import CommandRequest

if TYPE_CHECKING:
    from recoverd.controller import Controller
    from recoverd.policy.model import Machine
    from recoverd.transport import Transport

WAKE_POLL_S = 5.0
"""Seconds between two connection attempts while a woken machine boots."""

SEND_FROM_MACHINE = """\
import socket, sys
mac, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
packet = b"\\xff" * 6 + bytes.fromhex(mac.replace(":", "")) * 16
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(packet, (host, port))
"""
SEND_VIA = (
    'if command -v python3 >/dev/null 2>&1; then exec python3 -c "$1" "$2" "$3" "$4"; fi\n'
    'if command -v wakeonlan >/dev/null 2>&1; then exec wakeonlan -i "$3" -p "$4" "$2"; fi\n'
    'echo "neither python3 nor wakeonlan is installed" >&2; exit 127\n'
)
"""Send the packet from a POSIX machine: with python3, else the ``wakeonlan`` tool."""


def magic_packet(mac: str) -> bytes:
    """Return the Wake-on-LAN packet for ``mac`` (``aa:bb:cc:dd:ee:ff``)."""
    return b"\xff" * 6 + bytes.fromhex(mac.replace(":", "").replace("-", "")) * 16


def split_address(wake_to: str) -> tuple[str, int]:
    """Given ``ADDRESS:PORT`` (``[v6]:PORT`` for IPv6), return the address and the port."""
    host, _, port = wake_to.rpartition(":")
    return host.strip("[]"), int(port)


def send_from_controller(mac: str, wake_to: str) -> None:
    """Send the magic packet for ``mac`` to ``wake_to`` from the controller.

    Raise Unreachable if the packet cannot be sent (no route, a firewall).
    """
    host, port = split_address(wake_to)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.sendto(magic_packet(mac), (host, port))
    except OSError as exc:
        raise Unreachable(
            f"cannot send the Wake-on-LAN packet to {wake_to}: {exc.strerror or exc}"
        ) from None


def send_via(ctl: Controller, via: Machine, mac: str, wake_to: str) -> None:
    """Send the magic packet for ``mac`` to ``wake_to`` from the machine ``via``.

    Raise Unreachable if ``via`` cannot be reached, TransportError if it cannot send.
    """
    if via.transport == "winrm":
        raise UsageError(f"wake_via {via.name}: sending Wake-on-LAN from Windows is not supported")
    host, port = split_address(wake_to)
    argv = ["sh", "-c", SEND_VIA, "recoverd-wake", SEND_FROM_MACHINE, mac, host, str(port)]
    with ctl.transport(via) as transport:
        outcome = transport.run(CommandRequest(argv, timeout=60))
    if not outcome.ok:
        said = outcome.stderr.decode("utf-8", "replace").strip()[-300:]
        raise TransportError(
            f"{via.name} could not send the Wake-on-LAN packet to {wake_to}: "
            f"{said or f'exit {outcome.exit_status}'}"
        )


def wake_and_connect(ctl: Controller, machine: Machine, transport: Transport) -> dict[str, Any]:
    """Connect ``transport``; with ``wake``, send the machine's Wake-on-LAN packet first and
    try again until ``wake_wait`` has passed. Return what was done, for the run's record
    (empty without ``wake``).

    Raise Unreachable (saying that it was woken) if it does not answer in time, or what
    connecting raised otherwise.
    """
    if not machine.wake or not machine.mac:
        transport.open()
        return {}
    started = time.monotonic()
    via = None
    if machine.wake_via:
        via = ctl.policies.clients[machine.client].machines[machine.wake_via]
        send_via(ctl, via, machine.mac, machine.wake_to)
    else:
        send_from_controller(machine.mac, machine.wake_to)
    deadline = started + machine.wake_wait
    while True:
        try:
            transport.open()
        except Unreachable as exc:
            if time.monotonic() + WAKE_POLL_S > deadline:
                raise Unreachable(
                    f"{exc}; it did not answer within {machine.wake_wait:g}s of a Wake-on-LAN "
                    f"packet to {machine.mac}"
                ) from None
            time.sleep(WAKE_POLL_S)
            continue
        return {
            "sent_to": machine.wake_to,
            "via": via.name if via else "controller",
            "waited_s": round(time.monotonic() - started, 1),
        }
