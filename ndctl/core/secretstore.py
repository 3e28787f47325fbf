"""The local secret store: age ciphertext only, beside the inventory, safe to commit.

Layout (``<inventory dir>/secrets``)::

    secrets/<env>/<NAME>.json     one secret: metadata + ASCII-armored age ciphertext
    secrets/.lock                 flock for read-modify-write
    audit/secrets.jsonl           local audit log (who set/read/rekeyed/removed/used what)

One file per secret, written atomically (temporary file, fsync, rename): an
interrupted write leaves the old file or the new one, never a ciphertext
without its metadata. The JSON has no plaintext: the names of the secret and
its environment, who changed it and when, and the recipients (operators'
``age1...`` keys and hosts' ``ssh-ed25519`` keys, with their names).

Each secret is encrypted (pyrage) to every operator recipient and to the pinned
SSH host key of every host of its environment. Hosts decrypt with their own
host key; operators with their x25519 identity, which is what makes
:meth:`SecretStore.rekey` possible when hosts or operators change.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ndctl.core.atomicfile import atomic_write
from ndctl.core.errors import AuthError, HostKeyError, NotFoundError, UsageError
from ndctl.core.inventory import ENV_NAME_RE, OPERATOR_KEY_RE  # the inventory validates both as well
from ndctl.core.secret import Secret

SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")  # also an environment variable name
HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")  # what age encrypts to (not ECDSA)
MAX_VALUE_BYTES = 64 * 1024
FORMAT = 1


# --------------------------------------------------------------------------- errors
class SecretNotFound(NotFoundError):
    def __init__(self, env: str, name: str) -> None:
        super().__init__(f"no secret {name} in environment {env}",
                         hint=f"`ndctl secrets list --env {env}` shows them; "
                              f"`ndctl secrets set {name} --env {env}` creates it")
        self.env, self.name = env, name


class IdentityError(AuthError):
    """No operator identity, or one that cannot decrypt (exit status 7)."""


class NoHostKey(HostKeyError):
    """A host of the environment has no pinned key age can encrypt to (exit status 6)."""


# --------------------------------------------------------------------------- validation
def validate_secret_name(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
        raise UsageError(f"invalid secret name {name!r}: letters, digits and '_', not starting with a digit "
                         "(it becomes an environment variable and a file name)")
    return name


def validate_env_name(env: str) -> str:
    if not isinstance(env, str) or not ENV_NAME_RE.match(env):
        raise UsageError(f"invalid environment name {env!r}: 1-40 lowercase letters, digits, '_' or '-'")
    return env


def validate_operator_key(key: str) -> str:
    if not isinstance(key, str) or not OPERATOR_KEY_RE.match(key):
        raise UsageError(f"{key!r} is not an age x25519 recipient (age1...)")
    return key


def check_value(value: Secret) -> Secret:
    raw = value.reveal()
    if not raw:
        raise UsageError("a secret value cannot be empty")
    if len(raw.encode()) > MAX_VALUE_BYTES:
        raise UsageError(f"a secret value is at most {MAX_VALUE_BYTES // 1024} KiB")
    if "\0" in raw:
        raise UsageError("a secret value cannot contain NUL bytes (it is also an environment variable)")
    return value


# --------------------------------------------------------------------------- recipients
@dataclass(frozen=True, order=True)
class Recipient:
    kind: str  # "operator" or "host"
    name: str  # the operator's name, or the host's inventory name
    key: str  # "age1..." or "ssh-ed25519 AAAA..."

    def to_pyrage(self) -> Any:
        import pyrage

        try:
            if self.kind == "operator":
                return pyrage.x25519.Recipient.from_str(self.key)
            return pyrage.ssh.Recipient.from_str(self.key)
        except Exception as e:  # pyrage.RecipientError
            raise UsageError(f"{self.kind} {self.name}: unusable recipient {self.key[:24]}...: {e}") from None

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def host_recipient(name: str, host_key: str | None) -> Recipient:
    """The recipient for a host's pinned key; NoHostKey says what to do when there is none."""
    if not host_key or host_key.split()[0] not in HOST_KEY_TYPES:
        have = f"only a {host_key.split()[0]} key is pinned" if host_key else "no host key is pinned"
        raise NoHostKey(
            f"host {name} cannot receive secrets: {have} (age encrypts to ssh-ed25519 or ssh-rsa host keys)",
            hint=f"give the host an ed25519 host key (ssh-keygen -A), then re-register it: "
                 f"`ndctl agent register --name {name} --trust-host-key` and `ndctl secrets rekey`",
        )
    return Recipient("host", name, " ".join(host_key.split()[:2]))


# --------------------------------------------------------------------------- records
def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class SecretRecord:
    """One stored secret: metadata and ciphertext (never plaintext)."""

    name: str
    env: str
    recipients: list[Recipient]
    ciphertext: str  # ASCII-armored age
    created_at: str
    created_by: str
    updated_at: str
    updated_by: str
    rekeyed_at: str | None = None
    rekeyed_by: str | None = None
    format: int = FORMAT

    def meta(self) -> dict[str, Any]:
        """Everything but the ciphertext (``secrets list -o json``)."""
        return {"name": self.name, "env": self.env,
                "recipients": [r.to_dict() for r in self.recipients],
                "created_at": self.created_at, "created_by": self.created_by,
                "updated_at": self.updated_at, "updated_by": self.updated_by,
                "rekeyed_at": self.rekeyed_at, "rekeyed_by": self.rekeyed_by}

    def to_json(self) -> str:
        d = {"format": self.format, **self.meta(), "ciphertext": self.ciphertext}
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "SecretRecord":
        try:
            d = json.loads(text)
            return cls(name=d["name"], env=d["env"], recipients=[Recipient(**r) for r in d["recipients"]],
                       ciphertext=d["ciphertext"], created_at=d["created_at"], created_by=d["created_by"],
                       updated_at=d["updated_at"], updated_by=d["updated_by"], rekeyed_at=d.get("rekeyed_at"),
                       rekeyed_by=d.get("rekeyed_by"), format=d.get("format", FORMAT))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{where}: not a valid secret file ({e})") from None

    def has_recipient(self, key: str) -> bool:
        k = " ".join(key.split()[:2])
        return any(r.key == k for r in self.recipients)


@dataclass(frozen=True)
class AuditRecord:
    """Who did what with which secret, where and when. Never a value."""

    at: str
    who: str
    action: str  # set, get, remove, rekey, use, unseal
    env: str
    secret: str
    host: str = "local"
    app: str | None = None
    detail: str | None = None

    def to_line(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(d, separators=(",", ":"), ensure_ascii=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AuditRecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (str(v) if v is not None else None) for k, v in d.items() if k in known})


def parse_audit(text: str, *, host: str | None = None) -> list[AuditRecord]:
    """JSON lines -> records (broken lines are skipped: an audit reader never fails)."""
    out = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
            if isinstance(d, dict):
                if host is not None:  # read from that host: named as the inventory names it
                    d["host"] = host
                out.append(AuditRecord.from_dict(d))
        except (ValueError, TypeError):
            continue
    return out


# --------------------------------------------------------------------------- crypto
def encrypt(value: Secret, recipients: Sequence[Recipient]) -> str:
    import pyrage

    if not recipients:
        raise UsageError("a secret needs at least one recipient")
    data = check_value(value).reveal().encode()
    return pyrage.encrypt(data, [r.to_pyrage() for r in recipients], armored=True).decode("ascii")


def decrypt(ciphertext: str, identities: Sequence[Any], *, what: str) -> Secret:
    import pyrage

    try:
        data = pyrage.decrypt(ciphertext.encode("ascii"), list(identities))
    except pyrage.DecryptError as e:
        raise IdentityError(
            f"cannot decrypt {what} with your identity: {e}",
            hint="your operator key is not among its recipients: an operator who is must run "
                 "`ndctl secrets rekey` after `ndctl secrets init` added your key",
        ) from None
    return Secret(data.decode())


# --------------------------------------------------------------------------- the store
class SecretStore:
    """``<home>/secrets``: read, write, rekey and remove secrets; all writes under one lock."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.root = self.home / "secrets"
        self.audit_path = self.home / "audit" / "secrets.jsonl"

    def path(self, env: str, name: str) -> Path:
        return self.root / validate_env_name(env) / f"{validate_secret_name(name)}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator["SecretStore"]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / ".lock", "a") as lf:
            fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(lf.fileno(), fcntl.LOCK_UN)

    # ----- reading ----------------------------------------------------------------
    def exists(self, env: str, name: str) -> bool:
        return self.path(env, name).is_file()

    def load(self, env: str, name: str) -> SecretRecord:
        p = self.path(env, name)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretNotFound(env, name) from None
        return SecretRecord.from_json(text, str(p))

    def envs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and ENV_NAME_RE.match(d.name))

    def list(self, env: str | None = None, name: str | None = None) -> list[SecretRecord]:
        out = []
        for e in ([validate_env_name(env)] if env else self.envs()):
            d = self.root / e
            if not d.is_dir():
                continue
            for f in sorted(d.glob("*.json")):
                if name is not None and f.stem != name:
                    continue
                if SECRET_NAME_RE.match(f.stem):
                    out.append(SecretRecord.from_json(f.read_text(encoding="utf-8"), str(f)))
        return out

    def reveal(self, env: str, name: str, identities: Sequence[Any]) -> Secret:
        rec = self.load(env, name)
        return decrypt(rec.ciphertext, identities, what=f"{env}/{name}")

    # ----- writing (call under locked()) --------------------------------------------
    def put(self, env: str, name: str, value: Secret, recipients: Sequence[Recipient], *, who: str,
            at: str | None = None) -> SecretRecord:
        """Encrypt ``value`` to ``recipients`` and store it (create or replace)."""
        at = at or now_iso()
        recips = sorted(set(recipients))
        ct = encrypt(value, recips)
        try:
            old = self.load(env, name)
            created_at, created_by = old.created_at, old.created_by
        except SecretNotFound:
            created_at, created_by = at, who
        rec = SecretRecord(name=name, env=env, recipients=recips, ciphertext=ct, created_at=created_at,
                           created_by=created_by, updated_at=at, updated_by=who)
        atomic_write(self.path(env, name), rec.to_json(), 0o644)  # ciphertext: safe to share
        return rec

    def rekey(self, env: str, name: str, identities: Sequence[Any], recipients: Sequence[Recipient], *,
              who: str, at: str | None = None, force: bool = False) -> tuple[SecretRecord, bool]:
        """Re-encrypt to ``recipients``; (record, changed). Unchanged recipients: nothing written
        unless ``force``."""
        rec = self.load(env, name)
        recips = sorted(set(recipients))
        if recips == sorted(rec.recipients) and not force:
            return rec, False
        value = decrypt(rec.ciphertext, identities, what=f"{env}/{name}")
        rec.ciphertext = encrypt(value, recips)
        rec.recipients = recips
        rec.rekeyed_at, rec.rekeyed_by = at or now_iso(), who
        atomic_write(self.path(env, name), rec.to_json(), 0o644)  # ciphertext: safe to share
        return rec, True

    def remove(self, env: str, name: str) -> SecretRecord:
        rec = self.load(env, name)
        self.path(env, name).unlink()
        with contextlib.suppress(OSError):
            (self.root / env).rmdir()  # only when empty
        return rec

    # ----- audit ----------------------------------------------------------------------
    def audit(self, records: Iterable[AuditRecord]) -> None:
        """Append to the local audit log (one JSON object per line, mode 0600)."""
        lines = "".join(r.to_line() for r in records)
        if not lines:
            return
        self.audit_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)

    def read_audit(self) -> list[AuditRecord]:
        try:
            return parse_audit(self.audit_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []


__all__ = [
    "AuditRecord", "IdentityError", "NoHostKey", "Recipient", "SecretNotFound", "SecretRecord", "SecretStore",
    "check_value", "decrypt", "encrypt", "host_recipient", "now_iso", "parse_audit", "validate_env_name",
    "validate_operator_key", "validate_secret_name",
]
