"""Ed25519 signatures over the maintenance log's hash chain, and the signed head.

Every entry's chain hash is signed when the entry is written; the signature is stored beside
it. Because the hash covers the entry and the previous hash, the signatures together prove
that the whole chain was written by the holder of the state directory's key: whoever edits,
inserts or reorders entries must recompute hashes, and cannot make new signatures without the
key. A signature over an entry does not show that nothing *followed* it, so after every write
the store also replaces a small signed *head* file naming the last entry (seq and hash):
removing entries from the end of the log leaves the head pointing past the end.

The private key is read from ``RECOVERD_LOG_KEY_FILE`` if set, else from the systemd credential
``recoverd-log.key`` (``$CREDENTIALS_DIRECTORY``) when it is there, else from ``log-signing.key``
in the state directory, where it is created on first use (PKCS#8 PEM, mode 0600). Auditors get
the public key with ``recoverd log pubkey``.

A key kept outside the state directory also keeps a *record* beside it where it can write
(``<key file>.head``: a copy of the signed head): a log that was wiped or rolled back with the
state directory alone is then shorter than its key's record says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recoverd.errors import RecoverdError
from recoverd.private_files import key_location, write_private

KEY_FILE = "log-signing.key"
KEY_ENV = "RECOVERD_LOG_KEY_FILE"
CREDENTIAL_NAME = "recoverd-log.key"
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


def parse_head(raw: object) -> Head:
    """Given a head as JSON data, return it. Raise ValueError if it is not one."""
    try:
        return Head(int(raw["seq"]), str(raw["hash"]), str(raw["signature"]))  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a signed head: {exc!r}") from None


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """Return a short fingerprint of a public key (SHA-256 of its raw bytes, 16 hex digits)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class LogKey:
    """The signing key of one state directory, created on first use."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = key_location(state_dir, KEY_ENV, CREDENTIAL_NAME, KEY_FILE)
        self.head_path = state_dir / HEAD_FILE
        self._private: Ed25519PrivateKey | None = None
        self._record_failed = False

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def outside(self) -> bool:
        """True if the key lives outside the state directory (its record is kept beside it)."""
        return self.path.parent.resolve() != self.state_dir.resolve()

    @property
    def record_path(self) -> Path | None:
        """The key's record of the signed head (None for a key in the state directory, where
        the record would share the fate of the log)."""
        return self.path.with_name(self.path.name + ".head") if self.outside else None

    def private(self) -> Ed25519PrivateKey:
        """Return the private key, creating it (0600, atomically) if there is none yet.

        Raise RecoverdError if the key file exists but cannot be read as an Ed25519 key.
        """
        if self._private is None:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
                f"no log signing key at {self.path}: either nothing has been written to this "
                f"maintenance log yet (check --state / RECOVERD_STATE), or the key was lost "
                f"(restore it, or point {KEY_ENV} at it)"
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
        record = self.record_path
        if record is not None and not self._record_failed:
            try:
                write_private(record, data, replace=True)
            except OSError:
                # A read-only credential directory keeps no record: anchors and witnesses
                # still do. Tried once per process, not before every entry.
                self._record_failed = True

    def read_head(self) -> Head | None:
        """Return the head file's content, or None if there is none.

        Raise RecoverdError if it exists but is not a head file.
        """
        return _read_head_file(self.head_path, "the log head")

    def read_record(self) -> Head | None:
        """Return the key's record of the head, or None if it keeps none.

        Raise RecoverdError if it exists but is not a head file.
        """
        record = self.record_path
        return _read_head_file(record, "the signing key's record") if record else None


def _read_head_file(path: Path, what: str) -> Head | None:
    try:
        return parse_head(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecoverdError(f"{what} {path} is unreadable: {exc}") from None
