"""The controller's vault: `vault:NAME` references encrypted at rest, used by a real backup."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from recoverd.cli import main
from recoverd.errors import SecretError, UsageError
from recoverd.vault import Vault

SECRET = "vault-kept horse battery staple"

POLICY = """\
[client]
name = "Acme Trading Co."
timezone = "Asia/Shanghai"
[repositories.nas]
url = "{root}/nas"
password = "vault:acme/nas"
[machines.ws-1]
transport = "local"
[[machines.ws-1.levels]]
name = "nightly"
kind = "files"
repository = "nas"
paths = ["{root}/data"]
every = "day at 01:30"
"""


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RECOVERD_VAULT_KEY_FILE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "policies").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ledger.txt").write_text("quarterly numbers\n")
    (tmp_path / "policies" / "acme.toml").write_text(POLICY.format(root=tmp_path))
    monkeypatch.setenv("RECOVERD_POLICIES", str(tmp_path / "policies"))
    monkeypatch.setenv("RECOVERD_STATE", str(tmp_path / "state"))
    return tmp_path


def vault_set(monkeypatch: pytest.MonkeyPatch, name: str, secret: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))
    return main(["vault", "set", name])


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_vault_secret_drives_a_real_backup_and_is_stored_only_encrypted(
    place: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vault_set(monkeypatch, "acme/nas", SECRET) == 0
    assert main(["backup", "ws-1"]) == 0
    # The repository was made with the vault's secret: restic opens it with that password.
    done = subprocess.run(
        ["restic", "-r", str(place / "nas"), "snapshots", "--json"],
        input=SECRET.encode(),  # restic reads a password from stdin when it is not a terminal
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # restic 0.14 says "reading repository password from stdin" on stdout before the JSON
    assert len(json.loads(done.stdout.splitlines()[-1])) == 1
    # Nothing in the state directory (vault, key, log), and nothing printed, holds the secret.
    for path in files_under(place / "state"):
        assert SECRET.encode() not in path.read_bytes(), path
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    vault = place / "state" / "vault.json"
    assert oct(vault.stat().st_mode & 0o777) == "0o600"
    assert oct((place / "state" / "vault.key").stat().st_mode & 0o777) == "0o600"


def test_vault_list_shows_names_never_values(
    place: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vault_set(monkeypatch, "acme/nas", SECRET) == 0
    assert vault_set(monkeypatch, "acme/nas", SECRET + "2") == 0
    capsys.readouterr()
    assert main(["vault", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "acme/nas" and len(listed["key_id"]) == 16
    assert Vault(place / "state").get("acme/nas") == SECRET + "2"
    assert main(["vault", "rm", "acme/nas"]) == 0
    assert main(["vault", "rm", "acme/nas"]) == 2
    assert "no secret named 'acme/nas'" in capsys.readouterr().err


def test_vault_backup_with_missing_secret_fails_saying_how_to_store_it(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "ws-1"]) == 1
    said = capsys.readouterr().out
    assert "failed" in said and "no secret named 'acme/nas'" in said
    assert "recoverd vault set acme/nas" in said
    assert main(["log", "--json"]) == 0
    (run,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run["state"] == "failed" and "recoverd vault set acme/nas" in run["error"]


def test_vault_edited_ciphertext_or_moved_entry_does_not_decrypt(place: Path) -> None:
    vault = Vault(place / "state")
    vault.set("acme/nas", SECRET)
    vault.set("acme/other", "another secret")
    content = json.loads(vault.path.read_text())
    # Copied under another name: the name is bound to the ciphertext.
    content["secrets"]["acme/other"] = content["secrets"]["acme/nas"]
    vault.path.write_text(json.dumps(content))
    with pytest.raises(SecretError, match="does not decrypt"):
        vault.get("acme/other")
    assert vault.get("acme/nas") == SECRET
    sealed = bytearray.fromhex(content["secrets"]["acme/nas"]["sealed"])
    sealed[0] ^= 1
    content["secrets"]["acme/nas"]["sealed"] = sealed.hex()
    vault.path.write_text(json.dumps(content))
    with pytest.raises(SecretError, match="does not decrypt"):
        vault.get("acme/nas")


def test_vault_key_kept_elsewhere_is_required_and_never_silently_replaced(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = place / "keys" / "vault.key"
    key.parent.mkdir()
    monkeypatch.setenv("RECOVERD_VAULT_KEY_FILE", str(key))
    vault = Vault(place / "state")
    vault.set("acme/nas", SECRET)
    assert key.exists() and not (place / "state" / "vault.key").exists()
    key.rename(place / "keys" / "moved.key")
    # Secrets exist: a missing key is an error, not a reason to make a new one.
    with pytest.raises(SecretError, match=r"vault key .* is missing"):
        Vault(place / "state").get("acme/nas")
    with pytest.raises(SecretError, match="is missing"):
        Vault(place / "state").set("acme/new", "x" * 8)
    assert not key.exists()
    key.write_text("ab" * 32 + "\n")  # some other key
    with pytest.raises(SecretError, match="stored with another vault key"):
        Vault(place / "state").get("acme/nas")


def test_vault_key_from_systemd_credentials_directory(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = place / "credentials"
    credentials.mkdir()
    (credentials / "recoverd-vault.key").write_text("cd" * 32 + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    vault = Vault(place / "state")
    assert vault.key_path == credentials / "recoverd-vault.key"
    vault.set("acme/nas", SECRET)
    assert Vault(place / "state").get("acme/nas") == SECRET


def test_vault_refuses_bad_names_and_empty_secrets(place: Path) -> None:
    vault = Vault(place / "state")
    with pytest.raises(UsageError, match="not a vault name"):
        vault.set("../escape", SECRET)
    with pytest.raises(UsageError, match="empty secret"):
        vault.set("acme/nas", "")
    assert not vault.path.exists()
