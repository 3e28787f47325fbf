"""Operator identity backends (never the real OS keyring) and `ndctl secrets` / `deploy --secret`
errors without any host."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

from ndctl import identity
from ndctl.core.errors import ExitStatus
from ndctl.core.secret import Secret
from ndctl.core.secretstore import IdentityError
from ndctl.ops.secrets import Secrets

ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdzjtq5P+K/kTdAfHsgvG972y08WVndoFAHgsWTWXpE"


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.data.get((service, username))

    def set_password(self, service, username, password):
        self.data[(service, username)] = password

    def delete_password(self, service, username):
        self.data.pop((service, username), None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("NDCTL_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("NDCTL_INVENTORY", str(tmp_path / "nd" / "inventory.yaml"))
    monkeypatch.setenv("NDCTL_OPERATOR", "alice@laptop")
    return tmp_path


@pytest.fixture
def memory_keyring():
    old = keyring.get_keyring()
    kr = MemoryKeyring()
    keyring.set_keyring(kr)
    try:
        yield kr
    finally:
        keyring.set_keyring(old)


def test_keyring_backend_is_used_when_there_is_one(home, memory_keyring) -> None:
    assert identity.backend().kind == "keyring"
    with pytest.raises(IdentityError, match="no operator identity in the OS keyring"):
        identity.load()
    ident, created = identity.create()
    assert created and memory_keyring.data[("ndctl", "age-identity")].startswith("AGE-SECRET-KEY-")
    assert identity.public_key(identity.load()) == identity.public_key(ident)
    assert identity.create()[1] is False  # kept, not replaced
    assert not identity.default_file().exists()


def test_a_failing_keyring_is_a_clear_error(home, memory_keyring) -> None:
    from keyring.errors import KeyringLocked

    def locked(*a):
        raise KeyringLocked("collection is locked")

    memory_keyring.get_password = locked
    with pytest.raises(IdentityError, match="the OS keyring failed: KeyringLocked") as e:
        identity.load()
    assert "NDCTL_KEYRING=0" in e.value.hint


def test_file_fallback_without_keyring_and_its_mode(home, monkeypatch) -> None:
    monkeypatch.setenv("NDCTL_KEYRING", "0")
    b = identity.backend()
    assert b.kind == "file" and "no OS keyring backend" in b.describe()
    identity.create()
    f = identity.default_file()
    assert f.stat().st_mode & 0o777 == 0o600 and str(f).startswith(str(home / "config"))
    f.chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others") as e:
        identity.load()
    assert e.value.exit_status is ExitStatus.AUTH and e.value.hint == f"chmod 600 {f}"


def test_env_file_wins_and_must_be_valid(home, monkeypatch, memory_keyring) -> None:
    f = home / "bastion.key"
    monkeypatch.setenv("NDCTL_AGE_IDENTITY_FILE", str(f))
    assert identity.backend().kind == "env-file"
    with pytest.raises(IdentityError, match="does not exist"):
        identity.load()
    f.write_text("garbage\n")
    f.chmod(0o600)
    with pytest.raises(IdentityError, match="no AGE-SECRET-KEY- line"):
        identity.load()
    identity.create(replace=True)
    assert identity.load() is not None and memory_keyring.data == {}


def _inventory(home: Path, hosts: str = "") -> None:
    inv = home / "nd" / "inventory.yaml"
    inv.parent.mkdir(parents=True, exist_ok=True)
    inv.write_text("version: 1\nenvironments:\n  production: production\n  staging: staging\nhosts:\n" + hosts)


def test_api_set_rekey_after_a_host_joins_and_deploy_validation(home, monkeypatch) -> None:
    monkeypatch.setenv("NDCTL_KEYRING", "0")
    _inventory(home)
    s = Secrets()
    s.init()
    s.set("DB_PASSWORD", Secret("v"), env="production")
    assert Secrets().get("DB_PASSWORD", env="production") == Secret("v")
    # a host joins production: deploy validation refuses until a rekey, touching nothing
    _inventory(home, f"  web-1:\n    address: 192.0.2.1\n    tags: [production]\n    host_key: {HOST_KEY}\n")
    s = Secrets()
    s.init()
    with pytest.raises(Exception) as e:
        s.plan_delivery(s.inventory.select("*"), ["DB_PASSWORD"])
    assert e.value.exit_status is ExitStatus.HOST_KEY and "secrets rekey --env production" in e.value.hint
    assert [changed for _, changed in s.rekey(env="production")] == [True]
    plan = s.plan_delivery(s.inventory.select("*"), ["DB_PASSWORD"])
    assert plan["web-1"].env == "production" and list(plan["web-1"].ciphertexts) == ["DB_PASSWORD"]
    with pytest.raises(Exception) as e:
        s.plan_delivery(s.inventory.select("*"), ["NOPE"])
    assert e.value.exit_status is ExitStatus.NOT_FOUND
    with pytest.raises(Exception) as e:
        s.plan_delivery(s.inventory.select("*"), ["DB_PASSWORD"], env="staging")
    assert e.value.exit_status is ExitStatus.USAGE and "not in environment staging" in e.value.message
    # a host without an ed25519 key cannot be a recipient: a clear error, nothing rewritten
    _inventory(home, "  web-1:\n    address: 192.0.2.1\n    tags: [production]\n")
    s = Secrets()
    s.init()
    before = s.store.path("production", "DB_PASSWORD").read_text()
    with pytest.raises(Exception) as e:
        s.rekey(env="production")
    assert e.value.exit_status is ExitStatus.HOST_KEY and "web-1" in e.value.message
    assert s.store.path("production", "DB_PASSWORD").read_text() == before


def ndctl(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NDCTL_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), NDCTL_KEYRING="0",
               NDCTL_INVENTORY=str(home / "nd" / "inventory.yaml"), NDCTL_OPERATOR="alice@laptop",
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ndctl", *args], env=env, input=input, capture_output=True,
                          text=True, timeout=60, stdin=None if input is not None else subprocess.DEVNULL)


def test_cli_errors_and_exit_statuses_without_hosts(home) -> None:
    _inventory(home, f"  web-1:\n    address: 192.0.2.1\n    tags: [production]\n    host_key: {HOST_KEY}\n")
    r = ndctl(home, "secrets", "set", "A", "v", "--env", "production")
    assert r.returncode == ExitStatus.AUTH and "no operator identity" in r.stderr and "secrets init" in r.stderr
    assert ndctl(home, "secrets", "init").returncode == 0
    r = ndctl(home, "secrets", "set", "A", "--env", "qa", input="v")
    assert r.returncode == ExitStatus.NOT_FOUND and "no environment 'qa'" in r.stderr
    r = ndctl(home, "secrets", "set", "1A", "v", "--env", "production")
    assert r.returncode == ExitStatus.USAGE
    r = ndctl(home, "secrets", "set", "A", "--env", "production", input="")
    assert r.returncode == ExitStatus.USAGE and "cannot be empty" in r.stderr
    assert ndctl(home, "secrets", "set", "A", "--env", "production", input="top-secret-value").returncode == 0
    assert ndctl(home, "secrets", "set", "C", "-", "--env", "production", input="two\nlines\n").returncode == 0
    assert ndctl(home, "secrets", "get", "C", "--env", "production").stdout == "two\nlines"  # echo's newline only
    (home / "v.pem").write_text("file\n")
    assert ndctl(home, "secrets", "set", "C", "--from-file", str(home / "v.pem"), "--env", "production").returncode == 0
    assert ndctl(home, "secrets", "get", "C", "--env", "production").stdout == "file\n"  # a file: exactly
    r = ndctl(home, "secrets", "remove", "A", "--env", "production")
    assert r.returncode == ExitStatus.USAGE and "--yes" in r.stderr
    r = ndctl(home, "secrets", "rekey")
    assert r.returncode == ExitStatus.USAGE and "--yes" in r.stderr
    r = ndctl(home, "secrets", "get", "B", "--env", "production")
    assert r.returncode == ExitStatus.NOT_FOUND
    who = json.loads(ndctl(home, "secrets", "whoami", "-o", "json").stdout)
    assert who["backend"] == "file" and who["registered"] and who["role"] == "admin"
    # the app needs a secret that does not exist: refused before any connection (192.0.2.1 is unroutable)
    spec = home / "nextdeploy.yaml"
    spec.write_text("app: web\nimage: acme/web:1\nport: 8080\ntags: production\nsecrets: [A]\n")
    r = ndctl(home, "deploy", "-f", str(spec), "--secret", "MISSING")
    assert r.returncode == ExitStatus.NOT_FOUND and "no secret MISSING in environment production" in r.stderr
    # a role without read access may not use it in a deploy
    inv = home / "nd" / "inventory.yaml"
    inv.write_text(inv.read_text().replace("hosts:", "access:\n  members: {alice@laptop: none}\nhosts:"))
    r = ndctl(home, "deploy", "-f", str(spec))
    assert r.returncode == ExitStatus.AUTH and "may not use secret A" in r.stderr
    r = ndctl(home, "secrets", "get", "A", "--env", "production")
    assert r.returncode == ExitStatus.AUTH
    audit = json.loads(ndctl(home, "secrets", "audit", "A", "-o", "json").stdout)
    assert [(a["action"], a.get("detail")) for a in audit] == [("set", None), ("get", "refused: AccessDenied")]
    assert ("get", "C", None) in {(a["action"], a["secret"], a.get("detail"))
                                  for a in json.loads(ndctl(home, "secrets", "audit", "-o", "json").stdout)}
    assert ndctl(home, "secrets", "set", "B", "--env", "production", input="line\n").returncode == ExitStatus.AUTH
    listed = ndctl(home, "secrets", "list")
    assert listed.returncode == 0 and "A" in listed.stdout and "top-secret-value" not in listed.stdout
    for p in (home / "nd").rglob("*"):
        if p.is_file():
            assert b"top-secret-value" not in p.read_bytes(), p


def test_operator_add_rekey_then_remove(home, monkeypatch) -> None:
    import pyrage

    monkeypatch.setenv("NDCTL_KEYRING", "0")
    _inventory(home)
    assert ndctl(home, "secrets", "init").returncode == 0
    assert ndctl(home, "secrets", "set", "K", "--env", "production", input="v").returncode == 0
    bob = pyrage.x25519.Identity.generate()
    assert ndctl(home, "secrets", "operator", "add", "bob", "not-a-key").returncode == ExitStatus.USAGE
    assert ndctl(home, "secrets", "operator", "add", "bob", str(bob.to_public())).returncode == 0
    ct = json.loads((home / "nd" / "secrets" / "production" / "K.json").read_text())["ciphertext"]
    with pytest.raises(pyrage.DecryptError):  # not before a rekey
        pyrage.decrypt(ct.encode(), [bob])
    assert ndctl(home, "secrets", "rekey", "--yes").returncode == 0
    ct = json.loads((home / "nd" / "secrets" / "production" / "K.json").read_text())["ciphertext"]
    assert pyrage.decrypt(ct.encode(), [bob]) == b"v"
    assert ndctl(home, "secrets", "operator", "remove", "bob", "--yes").returncode == 0
    assert ndctl(home, "secrets", "operator", "remove", "bob", "--yes").returncode == ExitStatus.NOT_FOUND
    assert ndctl(home, "secrets", "rekey", "--yes").returncode == 0
    ct = json.loads((home / "nd" / "secrets" / "production" / "K.json").read_text())["ciphertext"]
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(ct.encode(), [bob])
    ops = json.loads(ndctl(home, "secrets", "operator", "list", "-o", "json").stdout)
    assert [o["operator"] for o in ops] == ["alice@laptop"]


def test_python_api_fleet_secrets(home, monkeypatch) -> None:
    from ndctl import Fleet

    monkeypatch.setenv("NDCTL_KEYRING", "0")
    _inventory(home, f"  web-1:\n    address: 192.0.2.1\n    tags: [production]\n    host_key: {HOST_KEY}\n")
    fleet = Fleet()
    st = fleet.secrets.init()
    assert st["created"] and st["registered"] and st["backend"] == "file"
    rec = fleet.secrets.set("API_TOKEN", Secret("plain-token-value"), env="production")
    assert {r.name for r in rec.recipients} == {"alice@laptop", "web-1"}
    assert [r.name for r in Fleet().secrets.list("production")] == ["API_TOKEN"]
    assert Fleet().secrets.get("API_TOKEN", env="production").reveal() == "plain-token-value"
    plan = fleet.secrets.plan_delivery(fleet.hosts, ["API_TOKEN"])
    assert plan["web-1"].host_key == HOST_KEY and "plain-token-value" not in repr(plan["web-1"].ciphertexts)
    assert [a.action for a in fleet.secrets.audit("API_TOKEN")] == ["set", "get"]
    with pytest.raises(TypeError):
        fleet.secrets.set("X", "plain str", env="production")  # values are Secret, never bare strings
