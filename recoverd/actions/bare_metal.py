"""Prepare a bare-metal restore of a Windows machine: it runs in WinRE, guided by exact steps.

Windows Server Backup restores a whole machine (``wbadmin start sysrecovery``) only from the
Windows Recovery Environment, where no WinRM runs. recoverd therefore does what can be done
from here: it picks the backup version, reads the machine's computer name, writes out every
command the engineer types in WinRE, and records the service in the maintenance log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recoverd.controller import Controller
from recoverd.engine import Outcome
from recoverd.errors import EngineError, UsageError
from recoverd.people import engineer_of_run, provider_engineers
from recoverd.policy.model import Level, Machine
from recoverd.runs import recorded_run


@dataclass
class BareMetalPlan:
    """A prepared bare-metal restore: the recorded run, the backup version, the WinRE steps."""

    run: dict[str, Any]
    version: str | None
    steps: list[str]


def image_level(machine: Machine, level_name: str | None) -> Level:
    """Return the image level to restore from: the one named, else the machine's first.

    Raise UsageError if there is no such image level.
    """
    images = [lv for lv in machine.levels if lv.kind == "image"]
    if level_name is not None:
        images = [lv for lv in images if lv.name == level_name]
    if not images:
        which = f"image level {level_name!r}" if level_name else "image level"
        raise UsageError(f"{machine.qualified_name} has no {which} to restore bare metal from")
    return images[0]


def prepare_bare_metal(
    ctl: Controller,
    machine: Machine,
    *,
    level_name: str | None = None,
    version: str | None = None,
    symptom: str | None = None,
    reported_by: str | None = None,
    engineer: str | None = None,
) -> BareMetalPlan:
    """Prepare the bare-metal restore of ``machine`` from ``version`` (default: the latest).

    The run is recorded (action ``restore``, kind ``image``) as ``succeeded`` with
    ``stats.bare_metal = "prepared"`` once the steps are written, or ``failed`` with the reason
    (machine unreachable, no backup at the target, unknown version); a failed plan has no
    version and no steps. Raise UsageError if the machine is not a Windows machine or has no
    image level.
    """
    level = image_level(machine, level_name)
    client = ctl.policies.clients[machine.client]
    start = {
        "client": client.id,
        "machine": machine.name,
        "level": level.name,
        "kind": "image",
        "action": "restore",
        "trigger": "manual",
        "engineer": engineer_of_run("manual", engineer, None, provider_engineers(ctl.policies)),
        "reported_by": reported_by,
        "symptom": symptom,
        "repository": level.target or level.repository,
    }
    transport = ctl.transport(machine)
    if transport.os_family != "windows":
        raise UsageError(
            f"{machine.qualified_name} is not a Windows machine; a bare-metal restore through "
            "WinRE is prepared for Windows image levels only"
        )
    with recorded_run(ctl.log, **start) as run:
        try:
            transport.open()
            engine = ctl.engine(transport, "image")
            if not hasattr(engine, "bare_metal_steps"):
                raise UsageError(f"the {engine.name} engine cannot prepare a bare-metal restore")
            repository = ctl.policies.repository_for(machine, level)
            known = [s.id for s in engine.snapshots(client.id, machine, repository, level.name)]
            if not known:
                raise EngineError(f"there is no backup at {repository.url} to restore from")
            if version is not None and version not in known:
                raise EngineError(
                    f"no backup version {version} at {repository.url}; latest versions: "
                    + ", ".join(known[-5:])
                )
            chosen = version or known[-1]
            computer = engine.computer_name()
            steps = engine.bare_metal_steps(machine, level, chosen, computer)
        finally:
            transport.close()
        run.outcome = Outcome(
            "succeeded",
            chosen,
            {"bare_metal": "prepared", "steps": len(steps), "computer_name": computer},
        )
    if run.view["state"] != "succeeded":
        return BareMetalPlan(run.view, None, [])
    return BareMetalPlan(run.view, chosen, steps)
