"""Files only the controller's user may read, written atomically (the state directory's keys,
the signed head, the vault)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` atomically with mode 0600; return False if it existed.

    With ``replace`` the file is swapped in with rename; without, it is linked into place so
    that of two processes creating it at once exactly one wins and the other reads its file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates the file 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def key_location(state_dir: Path, env: str, credential: str, default: str) -> Path:
    """Return where a key of the controller is read from, so that it may live apart from the
    state directory: the file named by the environment variable ``env`` if set, else the
    systemd credential ``credential`` (``$CREDENTIALS_DIRECTORY``, ``LoadCredential=`` or
    ``LoadCredentialEncrypted=``) when it is there, else ``default`` in the state directory.
    """
    if os.environ.get(env):
        return Path(os.environ[env])
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / credential).exists():
        return Path(credentials) / credential
    return state_dir / default
