"""Secret references (``env:NAME``, ``file:/path``, ``command:...``, ``vault:NAME``) and their
redaction.

A policy never holds a secret, only a reference; the resolver plugins turn references into
values at run time. Every resolved value is remembered so that :func:`redact` can mask it in
any text recoverd writes (messages, stderr excerpts, maintenance-log records).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from recoverd.errors import SecretError

REFERENCE = re.compile(r"^(?P<scheme>[a-z][a-z0-9_-]*):(?P<value>.+)$", re.S)
MASK = "[redacted]"
VAULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
"""What ``vault:NAME`` may name."""

Resolver = Callable[[str], str]
"""Given the part after ``scheme:``, return the secret. Raise SecretError if it cannot."""

_known: set[str] = set()
_known_lock = threading.Lock()


def remember(secret: str) -> None:
    """Mark ``secret`` (and each of its lines) for masking by :func:`redact`."""
    with _known_lock:
        for part in [secret, *secret.splitlines()]:
            if len(part) >= 4:
                _known.add(part)


def redact(text: str) -> str:
    """Return ``text`` with every secret resolved so far replaced by ``[redacted]``."""
    with _known_lock:
        secrets = sorted(_known, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretResolver:
    """Resolve references through the resolvers the plugins registered, by scheme."""

    def __init__(self, resolvers: dict[str, Resolver]) -> None:
        self._resolvers = resolvers
        self._cache: dict[str, str] = {}

    @property
    def schemes(self) -> list[str]:
        return sorted(self._resolvers)

    def resolve(self, reference: str, what: str = "secret") -> str:
        """Given a reference, return the secret. Raise SecretError naming ``what`` if not."""
        if reference in self._cache:
            return self._cache[reference]
        match = REFERENCE.match(reference)
        if not match or match["scheme"] not in self._resolvers:
            raise SecretError(
                f"{what}: {describe(reference)!r} is not a secret reference; use one of "
                + ", ".join(f"{s}:..." for s in self.schemes)
            )
        try:
            value = self._resolvers[match["scheme"]](match["value"])
        except SecretError as exc:
            raise SecretError(f"{what}: {exc}") from None
        if not value:
            raise SecretError(f"{what}: {describe(reference)} resolved to an empty secret")
        remember(value)
        self._cache[reference] = value
        return value


def describe(reference: str) -> str:
    """Return a reference safe to print: the scheme and its name or path, never a value."""
    match = REFERENCE.match(reference)
    if not match:
        return "(not a reference)"
    if match["scheme"] == "command":
        return "command:..."
    return reference
