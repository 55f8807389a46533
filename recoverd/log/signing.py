"""Ed25519 signatures over the maintenance log's hash chain, and the signed head.

Every entry's chain hash is signed when the entry is written; the signature is stored beside
it. Because the hash covers the entry and the previous hash, the signatures together prove
that the whole chain was written by the holder of the state directory's key: whoever edits,
inserts or reorders entries must recompute hashes, and cannot make new signatures without the
key. A signature over an entry does not show that nothing *followed* it, so after every write
the store also replaces a small signed *head* file naming the last entry (seq and hash):
removing entries from the end of the log leaves the head pointing past the end.

The private key is created on first use in the state directory (``log-signing.key``, PKCS#8
PEM, mode 0600); auditors get the public key with ``recoverd log pubkey``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recoverd.errors import RecoverdError
from recoverd.private_files import write_private

KEY_FILE = "log-signing.key"
HEAD_FILE = "log-head.json"

# Distinct prefixes so that no entry signature can pass for a head signature or vice versa.
_ENTRY_DOMAIN = b"recoverd-log-entry:"
_HEAD_DOMAIN = b"recoverd-log-head:"


def entry_message(digest: str) -> bytes:
    """Return the bytes an entry's signature covers: its chain hash."""
    return _ENTRY_DOMAIN + digest.encode("ascii")


def head_message(seq: int, digest: str) -> bytes:
    """Return the bytes the head's signature covers: the last entry's seq and hash."""
    return _HEAD_DOMAIN + f"{seq}:{digest}".encode("ascii")


def load_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    """Given PEM bytes of a public key, return it. Raise RecoverdError if it is not Ed25519."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise RecoverdError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RecoverdError(f"{source} is not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    """Return ``key`` as PEM text (SubjectPublicKeyInfo), as auditors import it."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def verify_signature(key: Ed25519PublicKey, signature: str | None, message: bytes) -> bool:
    """Return True if ``signature`` (hex) is ``key``'s signature of ``message``."""
    if not signature:
        return False
    try:
        key.verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Head:
    """The signed head: the seq and hash of the last entry when it was written."""

    seq: int
    hash: str
    signature: str

    def valid(self, key: Ed25519PublicKey) -> bool:
        return verify_signature(key, self.signature, head_message(self.seq, self.hash))


class LogKey:
    """The signing key of one state directory, created on first use."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / KEY_FILE
        self.head_path = state_dir / HEAD_FILE
        self._private: Ed25519PrivateKey | None = None

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def private(self) -> Ed25519PrivateKey:
        """Return the private key, creating it (0600, atomically) if there is none yet.

        Raise RecoverdError if the key file exists but cannot be read as an Ed25519 key.
        """
        if self._private is None:
            if not self.path.exists():
                pem = Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                write_private(self.path, pem, replace=False)
            try:
                key = serialization.load_pem_private_key(self.path.read_bytes(), None)
            except (OSError, ValueError) as exc:
                raise RecoverdError(f"cannot read the log signing key {self.path}: {exc}") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise RecoverdError(f"{self.path} is not an Ed25519 private key")
            self._private = key
        return self._private

    def public(self) -> Ed25519PublicKey:
        """Return the public key of an existing key file.

        Raise RecoverdError if the state directory has no key (nothing was signed there).
        """
        if not self.path.exists():
            raise RecoverdError(
                f"no log signing key in {self.state_dir}: nothing has been written to this "
                "maintenance log yet (check --state / RECOVERD_STATE)"
            )
        return self.private().public_key()

    def sign_entry(self, digest: str) -> str:
        """Return the hex signature of an entry's chain hash."""
        return self.private().sign(entry_message(digest)).hex()

    def write_head(self, seq: int, digest: str) -> None:
        """Replace the signed head file with one naming entry ``seq`` with hash ``digest``."""
        signature = self.private().sign(head_message(seq, digest)).hex()
        data = json.dumps({"seq": seq, "hash": digest, "signature": signature}).encode()
        write_private(self.head_path, data, replace=True)

    def read_head(self) -> Head | None:
        """Return the head file's content, or None if there is none.

        Raise RecoverdError if it exists but is not a head file.
        """
        try:
            raw = json.loads(self.head_path.read_text(encoding="utf-8"))
            return Head(int(raw["seq"]), str(raw["hash"]), str(raw["signature"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecoverdError(f"the log head {self.head_path} is unreadable: {exc}") from None
