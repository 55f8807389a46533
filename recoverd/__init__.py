"""recoverd: plugin-based backup and recovery orchestrator.

Plugins mark their hook implementations with :data:`hookimpl`; the contract they implement is
:mod:`recoverd.hookspecs`.
"""

import pluggy

__version__ = "0.1.0"

PROJECT = "recoverd"

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Decorator for plugin hook implementations: ``@recoverd.hookimpl``."""
