"""The controller's secret vault: ``vault:NAME`` references, encrypted at rest.

Secrets are kept in ``vault.json`` in the state directory, each encrypted with AES-256-GCM under
the vault key. The secret's name is the GCM associated data, so a ciphertext copied under
another name does not decrypt, and any edited byte is detected. Names and dates are stored in
clear (``recoverd vault list`` shows them without the key); values never are.

The key is a separate file so that it can live apart from the vault and the maintenance log:
``RECOVERD_VAULT_KEY_FILE`` if set, else ``$CREDENTIALS_DIRECTORY/recoverd-vault.key`` when
systemd passes it as a credential (``LoadCredentialEncrypted=``, sealed to the TPM or the host
key), else ``vault.key`` in the state directory, created 0600 on the first ``vault set``. A copy
of the state directory without the key file then holds no readable secret.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recoverd.errors import SecretError, UsageError
from recoverd.private_files import key_location, write_private
from recoverd.secrets import VAULT_NAME

VAULT_FILE = "vault.json"
KEY_FILE = "vault.key"
CREDENTIAL_NAME = "recoverd-vault.key"
KEY_ENV = "RECOVERD_VAULT_KEY_FILE"
FORMAT = 1

_AAD_PREFIX = b"recoverd-vault-secret:"


def key_path(state_dir: Path) -> Path:
    """Return where the vault key is read from (see the module docstring for the order)."""
    return key_location(state_dir, KEY_ENV, CREDENTIAL_NAME, KEY_FILE)


def _key_id(key: bytes) -> str:
    """Return a short public fingerprint of ``key`` (it does not reveal the key)."""
    return hashlib.sha256(b"recoverd-vault-key-id:" + key).hexdigest()[:16]


@dataclass(frozen=True)
class StoredSecret:
    """What the vault shows of a secret without decrypting it."""

    name: str
    set_at: str
    key_id: str


class Vault:
    """The vault of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / VAULT_FILE
        self.key_path = key_path(state_dir)

    # -- the key ----------------------------------------------------------------------------

    def _read_key(self) -> bytes:
        """Return the key. Raise SecretError saying what to fix if it is missing or malformed."""
        try:
            text = self.key_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise SecretError(
                f"the vault key {self.key_path} is missing: restore it from where you keep it "
                f"(or point {KEY_ENV} at it); without it no vault secret can be read"
            ) from None
        except (OSError, UnicodeError) as exc:
            raise SecretError(f"cannot read the vault key {self.key_path}: {exc}") from None
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise SecretError(f"the vault key {self.key_path} is not 64 hex digits (256 bits)")
        return key

    def _key_for_writing(self) -> bytes:
        """Return the key, creating it (0600) if there is none and the vault is empty."""
        if self.key_path.exists() or self.names():
            return self._read_key()
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Of two first `vault set`s at once, one key wins and both use it.
        key = AESGCM.generate_key(bit_length=256).hex() + "\n"
        write_private(self.key_path, key.encode("ascii"), replace=False)
        return self._read_key()

    # -- the file ---------------------------------------------------------------------------

    def _load(self, *, check_entries: bool = True) -> dict[str, Any]:
        """Return the vault's content. Raise SecretError if it is unreadable, or (with
        ``check_entries``) if an entry is not what :meth:`set` writes."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "secrets": {}}
        except (OSError, ValueError) as exc:
            raise SecretError(f"the vault {self.path} is unreadable: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("secrets"), dict):
            raise SecretError(f"the vault {self.path} is not a recoverd vault")
        for name, item in raw["secrets"].items() if check_entries else ():
            # An edited file: each entry must be what set() writes, or nothing can trust it.
            if not (
                isinstance(item, dict)
                and all(isinstance(item.get(k), str) for k in ("nonce", "sealed", "key_id"))
            ):
                raise SecretError(
                    f"the vault {self.path} is damaged: entry {name!r} is not a sealed secret "
                    f"(remove it with `recoverd vault rm {name}` and store it again)"
                )
        if raw.get("format") != FORMAT:
            raise SecretError(
                f"the vault {self.path} has format {raw.get('format')!r}; this recoverd reads "
                f"format {FORMAT}"
            )
        return raw

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the vault's lock, yield its content, write it back when the block ends."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / ".vault.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            content = self._load(check_entries=False)  # a damaged entry can be replaced
            yield content
            text = json.dumps(content, indent=1, sort_keys=True) + "\n"
            write_private(self.path, text.encode(), replace=True)
        finally:
            os.close(fd)

    def names(self) -> list[StoredSecret]:
        """Return the stored secrets' names, dates and key ids, sorted by name."""
        return [
            StoredSecret(name, item.get("set_at", "?"), item.get("key_id", "?"))
            for name, item in sorted(self._load()["secrets"].items())
        ]

    # -- secrets ----------------------------------------------------------------------------

    def set(self, name: str, secret: str) -> bool:
        """Store ``secret`` under ``name``; return True if it replaced one.

        Raise RecoverdError if the name is not a vault name or the secret is empty.
        """
        if not VAULT_NAME.fullmatch(name):
            raise UsageError(
                f"{name!r} is not a vault name (letters, digits, '.', '_', '-', '/'; "
                "starting with a letter or digit)"
            )
        if not secret:
            raise UsageError("refusing to store an empty secret")
        key = self._key_for_writing()
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, secret.encode("utf-8"), _AAD_PREFIX + name.encode())
        with self._locked() as content:
            replaced = name in content["secrets"]
            content["secrets"][name] = {
                "nonce": nonce.hex(),
                "sealed": sealed.hex(),
                "key_id": _key_id(key),
                "set_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        return replaced

    def remove(self, name: str) -> None:
        """Remove the secret ``name``. Raise RecoverdError if there is none."""
        with self._locked() as content:
            if name not in content["secrets"]:
                raise UsageError(f"the vault has no secret named {name!r}")
            del content["secrets"][name]

    def get(self, name: str) -> str:
        """Return the secret ``name``. Raise SecretError saying what to fix if it cannot."""
        item = self._load()["secrets"].get(name)
        if item is None:
            raise SecretError(
                f"the vault {self.path} has no secret named {name!r}; store it with "
                f"`recoverd vault set {name}`"
            )
        key = self._read_key()
        if item.get("key_id") != _key_id(key):
            raise SecretError(
                f"vault secret {name!r} was stored with another vault key (key id "
                f"{item.get('key_id')}; {self.key_path} has {_key_id(key)}): use the key it was "
                "stored with, or store the secret again"
            )
        try:
            plain = AESGCM(key).decrypt(
                bytes.fromhex(item["nonce"]),
                bytes.fromhex(item["sealed"]),
                _AAD_PREFIX + name.encode(),
            )
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise SecretError(
                f"vault secret {name!r} does not decrypt: the vault file was edited or the "
                "entry was copied from another name; store the secret again"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:  # sealed with the key, but not by recoverd
            raise SecretError(f"vault secret {name!r} is not UTF-8 text; store it again") from None


class VaultResolver:
    """The ``vault:`` resolver plugin: built with the state directory, called with a name."""

    def __init__(self, state_dir: Path) -> None:
        self.vault = Vault(state_dir)

    def __call__(self, name: str) -> str:
        return self.vault.get(name)
