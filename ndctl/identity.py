"""The operator's age identity (x25519 private key): OS keyring first, a 0600 file otherwise.

Order, first that applies:

1. ``NDCTL_AGE_IDENTITY_FILE``: that file (cron on a bastion, CI). It must be a
   regular file of mode 0600 (or stricter) owned by the user, else refused.
2. The OS keyring through ``keyring`` (macOS Keychain, Windows Credential
   Locker, Secret Service / KWallet), service ``ndctl``, user ``age-identity``.
3. No usable keyring backend (a headless machine: keyring's ``fail`` backend):
   ``~/.config/ndctl/age-identity.txt`` (``$XDG_CONFIG_HOME`` respected), mode 0600.

``NDCTL_KEYRING=0`` skips the keyring (straight to 3). :func:`describe` says which
one is in use; ``ndctl secrets whoami`` prints it. The identity file is never
under the inventory directory, which may be committed to git.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndctl.core.secret import Secret
from ndctl.core.secretstore import IdentityError

SERVICE = "ndctl"
USERNAME = "age-identity"
ENV_FILE = "NDCTL_AGE_IDENTITY_FILE"


@dataclass(frozen=True)
class Backend:
    kind: str  # "env-file", "keyring", "file"
    where: str  # the file path, or the keyring backend's name

    def describe(self) -> str:
        if self.kind == "keyring":
            return f"OS keyring ({self.where}), service {SERVICE!r}"
        if self.kind == "env-file":
            return f"identity file {self.where} (from ${ENV_FILE})"
        return f"identity file {self.where} (no OS keyring backend on this machine)"


def default_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "ndctl" / "age-identity.txt"


def _keyring() -> Any | None:
    """keyring's active backend, or None when it has no usable one (fail/null backends)."""
    if os.environ.get("NDCTL_KEYRING", "1") == "0":
        return None
    try:
        import keyring
        from keyring.backends import fail
    except Exception:  # noqa: BLE001 - no keyring module: the file fallback
        return None
    kr = keyring.get_keyring()
    if isinstance(kr, fail.Keyring):
        return None
    try:
        from keyring.backends import null

        if isinstance(kr, null.Keyring):
            return None
    except ImportError:  # pragma: no cover
        pass
    return kr


def _keyring_call(fn: Any, *args: str) -> Any:
    """A keyring backend that exists but fails (locked, no D-Bus session): say what to do."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - keyring.errors.KeyringError and backend-specific errors
        raise IdentityError(f"the OS keyring failed: {type(e).__name__}: {e}",
                            hint=f"unlock it, or use a file: NDCTL_KEYRING=0 (identity in {default_file()}) "
                                 f"or {ENV_FILE}=PATH") from None


def backend() -> Backend:
    env = os.environ.get(ENV_FILE)
    if env:
        return Backend("env-file", str(Path(env).expanduser()))
    kr = _keyring()
    if kr is not None:
        return Backend("keyring", f"{type(kr).__module__}.{type(kr).__name__}")
    return Backend("file", str(default_file()))


def _check_file(p: Path) -> None:
    st = p.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"identity file {p} is not a regular file")
    if st.st_mode & 0o077:
        raise IdentityError(f"identity file {p} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                            hint=f"chmod 600 {p}")
    if st.st_uid != os.getuid():
        raise IdentityError(f"identity file {p} belongs to another user (uid {st.st_uid})")


def _parse(text: str, where: str) -> Any:
    import pyrage

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                return pyrage.x25519.Identity.from_str(line)
            except Exception as e:  # noqa: BLE001 - pyrage.IdentityError
                raise IdentityError(f"{where}: not a valid age identity ({e})") from None
    raise IdentityError(f"{where}: no AGE-SECRET-KEY- line", hint="`ndctl secrets init` creates an identity")


def load() -> Any:
    """The operator's ``pyrage.x25519.Identity``; IdentityError says how to get one."""
    b = backend()
    if b.kind == "keyring":
        kr = _keyring()
        text = _keyring_call(kr.get_password, SERVICE, USERNAME)
        if not text:
            raise IdentityError(f"no operator identity in the {b.describe()}",
                                hint="`ndctl secrets init` creates one (or set NDCTL_AGE_IDENTITY_FILE)")
        return _parse(text, "keyring")
    p = Path(b.where)
    try:
        _check_file(p)
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IdentityError(f"no operator identity: {b.describe()} does not exist",
                            hint="`ndctl secrets init` creates one") from None
    return _parse(text, str(p))


def create(*, replace: bool = False) -> tuple[Any, bool]:
    """Load the identity, or make and store one; (identity, created)."""
    import pyrage

    if not replace:
        try:
            return load(), False
        except IdentityError as e:
            if "no operator identity" not in e.message:
                raise
    ident = pyrage.x25519.Identity.generate()
    text = Secret(str(ident))
    b = backend()
    if b.kind == "keyring":
        _keyring_call(_keyring().set_password, SERVICE, USERNAME, text.reveal())
    else:
        p = Path(b.where)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = p.with_name(f".{p.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"# ndctl operator identity (age); public key: {ident.to_public()}\n"
                         f"{text.reveal()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    return ident, True


def public_key(ident: Any) -> str:
    return str(ident.to_public())


__all__ = ["Backend", "ENV_FILE", "backend", "create", "default_file", "load", "public_key"]
