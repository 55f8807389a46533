"""What ``recoverd check`` reports besides errors: warnings from the engines that would run."""

from __future__ import annotations

from recoverd.controller import Controller


def policy_warnings(ctl: Controller) -> list[str]:
    """Return one line per warning: ``FILE: machines.NAME: level LEVEL: what to consider``.

    Each level is shown to the engine that would run it (by kind and the machine's OS family);
    a level no loaded engine runs has no warnings here (``backup`` reports that).
    """
    transports = ctl.plugins["transports"]
    engines = list(ctl.plugins["engines"].entries.values())
    warnings = []
    for machine in ctl.policies.machines():
        if machine.transport not in transports:
            continue
        transport = transports.get(machine.transport)
        os_family = transport.os_family
        source = ctl.policies.clients[machine.client].source
        for warning in transport.policy_warnings(machine):
            warnings.append(f"{source}: machines.{machine.name}: {warning}")
        for level in machine.levels:
            engine = next(
                (e for e in engines if level.kind in e.kinds and os_family in e.os_families),
                None,
            )
            if engine is None:
                continue
            for warning in engine.policy_warnings(machine, level):
                warnings.append(f"{source}: machines.{machine.name}: level {level.name}: {warning}")
    return warnings
