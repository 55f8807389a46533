"""Real parts for tests, the demo and third-party plugin authors: a throwaway OpenSSH server.

:class:`ThrowawaySSHD` runs the machine's own ``/usr/sbin/sshd`` on 127.0.0.1 with keys made
for it in a temporary directory, so transports and engines are tested against real SSH instead
of a mock::

    with ThrowawaySSHD() as sshd:
        machine = Machine(name="ws-test", client="acme", address="127.0.0.1", port=sshd.port,
                          user=sshd.user, identity=sshd.client_key, host_key=sshd.host_key_line)

It never listens on any address other than 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def make_key(path: Path) -> Path:
    """Given a path, create an unencrypted ed25519 key pair there and return ``path``.

    Raise subprocess.CalledProcessError if ssh-keygen fails.
    """
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "recoverd-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class ThrowawaySSHD:
    """An OpenSSH server on 127.0.0.1, a free port and throwaway keys, for tests.

    ``client_key`` is a private key authorised for ``user`` (the current user); ``host_key_line``
    is the server's public key as a policy's ``host_key`` pins it. ``rekey_limit`` is sshd's
    ``RekeyLimit`` (e.g. ``"32M"``: the server starts a key exchange every 32 MiB).
    ``path`` is the ``PATH`` of the commands it runs (sshd's ``SetEnv``); by default the PATH of
    the process that starts it, so the "machine" runs the same restic as the controller.
    """

    def __init__(
        self,
        sshd: str = "/usr/sbin/sshd",
        start_timeout: float = 10.0,
        rekey_limit: str | None = None,
        path: str | None = None,
    ) -> None:
        self.sshd = sshd
        self.path = path
        self.start_timeout = start_timeout
        self.rekey_limit = rekey_limit
        self.user = getpass.getuser()
        self.workdir = Path(tempfile.mkdtemp(prefix="recoverd-sshd-"))
        self.log_path = self.workdir / "sshd.log"
        self.config_path = self.workdir / "sshd_config"
        self.pid_path = self.workdir / "sshd.pid"
        self.host_key_path = self.workdir / "host_ed25519"
        self.client_key = str(self.workdir / "client_ed25519")
        self.tmp = self.workdir / "tmp"
        """The TMPDIR of the commands it runs: their temporary files are this server's own,
        so that two test suites at once never see each other's."""
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The listener's process id while it runs, else None."""
        return self._process.pid if self._process is not None else None

    @property
    def host_key_line(self) -> str:
        """The host key as ``type base64`` (the first two fields of its .pub file)."""
        fields = self.host_key_path.with_suffix(".pub").read_text().split()
        return " ".join(fields[:2])

    @property
    def policy_lines(self) -> str:
        """The keys of a policy's ``[machines.NAME]`` table that reach this server: address,
        port, user, identity and the pinned host key."""
        return (
            f'address = "127.0.0.1"\nport = {self.port}\nuser = "{self.user}"\n'
            f'identity = "{self.client_key}"\nhost_key = "{self.host_key_line}"'
        )

    def start(self) -> ThrowawaySSHD:
        """Create the keys (once), start sshd and return self once it accepts connections.

        Raise RuntimeError with the end of the sshd log if it does not come up in time.
        """
        if self._process is not None:
            return self
        self.tmp.mkdir(exist_ok=True)
        if not self.host_key_path.exists():
            make_key(self.host_key_path)
        if not Path(self.client_key).exists():
            make_key(Path(self.client_key))
            shutil.copy(f"{self.client_key}.pub", self.workdir / "authorized_keys")
        # sshd refuses to start without its privilege-separation directory.
        with contextlib.suppress(PermissionError):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        # Another process may take the free port before sshd binds it: try a fresh one.
        for _attempt in range(3):
            self.port = self.port or free_port()
            self._write_config()
            self.pid_path.unlink(missing_ok=True)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            # -D keeps sshd in the foreground as our child: we learn its pid at once, notice
            # an early exit and reap it ourselves. It stays in our process group, so a Ctrl-C
            # that stops the tests stops it too.
            self._process = subprocess.Popen(
                [self.sshd, "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_until_ready():
                return self
            self._process.wait()
            self._process = None
            if "Address already in use" not in self._log_since(log_offset):
                break
            self.port = 0
        raise RuntimeError(
            f"{self.sshd} did not start on {LOOPBACK}:{self.port} (waited up to "
            f"{self.start_timeout:g}s); its log ({self.log_path}):\n{self._log_since(0)[-4000:]}"
        )

    def stop(self, remove: bool = True) -> None:
        """Stop the listener and every session; with ``remove``, delete the keys and log too."""
        if self._process is not None:
            self.kill_sessions()
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_sessions(self) -> list[int]:
        """Cut every open connection and return the pids of the sshd processes killed.

        The listener stays up and the remote commands are left running, as after a cable cut.
        """
        if self._process is None:
            return []
        listed = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self._process.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        pids = [int(word) for word in listed.stdout.split()]
        for pid in pids:
            # SIGKILL: the session gets no chance to say goodbye, like a cut cable.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def regenerate_host_key(self) -> str:
        """Replace the host key as a reinstalled machine would and return the new line.

        sshd restarts on the same port; open connections are cut.
        """
        self.stop(remove=False)
        self.host_key_path.unlink(missing_ok=True)
        self.host_key_path.with_suffix(".pub").unlink(missing_ok=True)
        make_key(self.host_key_path)
        self.start()
        return self.host_key_line

    def __enter__(self) -> ThrowawaySSHD:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_config(self) -> None:
        # No AcceptEnv line: the default accepts no environment variables at all.
        # StrictModes no: the temporary directory would fail sshd's ownership checks.
        self.config_path.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {LOOPBACK}\n"
            f"HostKey {self.host_key_path}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            f"PidFile {self.pid_path}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "MaxSessions 50\n"
            "MaxStartups 50\n"
            "Subsystem sftp internal-sftp\n"
            f'SetEnv "PATH={self.path or os.environ.get("PATH", "/usr/bin:/bin")}" '
            f'"TMPDIR={self.tmp}"\n'
            + (f"RekeyLimit {self.rekey_limit}\n" if self.rekey_limit else "")
        )

    def _wait_until_ready(self) -> bool:
        """Return True once the pid file exists and the port accepts connections, False if
        sshd exits or the start timeout passes."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if self.pid_path.exists():
                with contextlib.suppress(OSError):
                    socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                    return True
            time.sleep(0.02)
        self._process.kill()
        return False

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
