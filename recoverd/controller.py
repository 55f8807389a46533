"""The controller's view of the world for one command: policies, plugins, secrets, the log.

Built once per CLI invocation (or daemon reload) and handed to the actions; everything is
loaded lazily so that ``recoverd plugins`` needs no policy and ``recoverd check`` no log.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from recoverd import witness
from recoverd.engine import Engine
from recoverd.errors import PluginError
from recoverd.healthchecks import RunPings
from recoverd.log import MaintenanceLog
from recoverd.plugins import PluginHost
from recoverd.policy import PolicySet, load_policies
from recoverd.policy.model import Machine
from recoverd.secrets import SecretResolver
from recoverd.transport import Transport


class Controller:
    """Policies, plugins, secrets and the maintenance log of one policy and state directory."""

    def __init__(
        self, policy_dir: Path, state_dir: Path, plugins: PluginHost | None = None
    ) -> None:
        self.policy_dir = policy_dir
        self.state_dir = state_dir
        self.plugins = plugins or PluginHost()

    @cached_property
    def secrets(self) -> SecretResolver:
        # A resolver registered as a class is built with the state directory (the vault).
        resolvers = {
            scheme: resolver(self.state_dir) if isinstance(resolver, type) else resolver
            for scheme, resolver in self.plugins["secret_resolvers"].entries.items()
        }
        return SecretResolver(resolvers)

    @cached_property
    def policies(self) -> PolicySet:
        """The validated policies. Raise PolicyError listing every problem."""
        return load_policies(self.policy_dir, secret_schemes=self.secrets.schemes)

    def reload_policies(self) -> PolicySet:
        """Read the policy files again (after a command changed one) and return them."""
        self.__dict__.pop("policies", None)
        return self.policies

    @cached_property
    def log(self) -> MaintenanceLog:
        log = MaintenanceLog(self.state_dir, self.plugins["log_sinks"], self.plugins["notifiers"])
        log.watchers.append(RunPings(self))  # levels with `healthchecks` ping their monitor
        log.watchers.append(witness.WitnessPush(self))  # the signed head to the witnesses
        return log

    def transport(self, machine: Machine) -> Transport:
        """Return an unconnected transport for ``machine``."""
        cls = self.plugins["transports"].get(machine.transport)
        return cls(machine, self.secrets)

    def engine(self, transport: Transport, kind: str) -> Engine:
        """Return the engine that runs levels of ``kind`` over ``transport``.

        Raise PluginError if no loaded plugin serves that kind on that kind of machine.
        """
        for cls in self.plugins["engines"].entries.values():
            if kind in cls.kinds and transport.os_family in cls.os_families:
                return cls(transport, self.secrets)
        raise PluginError(
            f"no engine plugin runs {kind!r} levels on {transport.os_family} machines "
            "(see `recoverd plugins`)"
        )
