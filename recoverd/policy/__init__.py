"""Policies: TOML files (one per client) loaded and validated into plain dataclasses.

``load_policies(directory)`` is the way in; everything downstream reads the model.
"""

from recoverd.policy.every import Every, parse_every
from recoverd.policy.load import SECRET_SCHEMES, load_policies, load_policy_file
from recoverd.policy.model import (
    Client,
    Level,
    Machine,
    NotifyRoute,
    PolicySet,
    Provider,
    Repository,
)

__all__ = [
    "SECRET_SCHEMES",
    "Client",
    "Every",
    "Level",
    "Machine",
    "NotifyRoute",
    "PolicySet",
    "Provider",
    "Repository",
    "load_policies",
    "load_policy_file",
    "parse_every",
]
