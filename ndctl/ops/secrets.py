"""Secrets: the operations behind ``ndctl secrets`` and ``deploy --secret`` (also the Python API).

Local operations (set, get, list, remove, rekey, audit) work on the store
beside the inventory and never touch a host. A deploy validates everything
first (:meth:`Secrets.plan_delivery`: each secret exists in each host's
environment, is encrypted to that host's pinned key, and the operator may use
it), then, per host and under the app's lock, ships only ciphertext and has
the host unseal it into tmpfs (:func:`deliver`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ndctl import identity
from ndctl.commands import secrets as host_cmds
from ndctl.commands.appstate import operator
from ndctl.commands.shell import for_host
from ndctl.core.access import AccessPolicy, authorize
from ndctl.core.errors import AuthError, HostKeyError, RemoteError, UsageError
from ndctl.core.inventory import Host, Inventory, locked
from ndctl.core.results import HostResult
from ndctl.core.secret import Secret
from ndctl.core.secretstore import (
    AuditRecord,
    IdentityError,
    Recipient,
    SecretRecord,
    SecretStore,
    host_recipient,
    now_iso,
    validate_env_name,
    validate_operator_key,
    validate_secret_name,
)


@dataclass
class HostDelivery:
    """What one host receives in a deploy: its environment and the ciphertexts."""

    host: Host
    env: str
    host_key: str
    ciphertexts: dict[str, str] = field(default_factory=dict)  # name -> armored age


class Secrets:
    """Secrets of one inventory (``Fleet.secrets``, or on its own)."""

    def __init__(self, inventory: Inventory | str | Path | None = None, *, who: str | None = None) -> None:
        self.inventory = inventory if isinstance(inventory, Inventory) else Inventory.load(inventory, readonly=True)
        self.store = SecretStore(self.inventory.home)
        self.who = who or operator()[0]
        self.policy = AccessPolicy.from_mapping(self.inventory.access_doc)

    # ----- identity and operators --------------------------------------------
    def status(self) -> dict[str, Any]:
        """Which identity backend is in use, the operator's key, and whether it is a recipient."""
        b = identity.backend()
        out: dict[str, Any] = {"operator": self.who, "backend": b.kind, "where": b.describe(),
                               "public_key": None, "registered": False, "role": self.policy.role_of(self.who)}
        try:
            pub = identity.public_key(identity.load())
        except IdentityError as e:
            out["error"] = e.message
            return out
        out["public_key"] = pub
        out["registered"] = pub in self.inventory.operators.values()
        return out

    def init(self) -> dict[str, Any]:
        """Create the operator's identity if needed and add its recipient to the inventory."""
        ident, created = identity.create()
        pub = identity.public_key(ident)
        validate_operator_key(pub)
        with locked(self.inventory.path) as inv:
            if inv.operators.get(self.who) != pub:
                inv.set_mapping_entry("operators", self.who, pub)
                inv.save()
            self.inventory = inv
        return {**self.status(), "created": created}

    def set_operator(self, name: str, key: str | None) -> None:
        """Add a teammate's public key (``age1...``), or remove one (None); then ``rekey``."""
        if key is not None:
            validate_operator_key(key)
        if not name or any(c.isspace() for c in name) or len(name) > 100:
            raise UsageError(f"invalid operator name {name!r}")
        with locked(self.inventory.path) as inv:
            if key is None and name not in inv.operators:
                from ndctl.core.errors import NotFoundError

                raise NotFoundError(f"no operator {name!r} in {inv.path}",
                                    hint="`ndctl secrets operator list` shows them")
            inv.set_mapping_entry("operators", name, key)
            inv.save()
            self.inventory = inv

    def set_environment(self, env: str, selector: str | None) -> None:
        """Map ``env`` to a host selector (None removes it)."""
        validate_env_name(env)
        with locked(self.inventory.path) as inv:
            inv.set_mapping_entry("environments", env, selector)
            inv.save()
            self.inventory = inv

    def recipients(self, env: str) -> list[Recipient]:
        """Every operator, and every host of the environment (each must have an age-able host key)."""
        validate_env_name(env)
        hosts = self.inventory.environment_hosts(env)
        if not self.inventory.operators:
            raise IdentityError("no operator recipient in the inventory: nobody could rekey these secrets",
                                hint="`ndctl secrets init` adds yours")
        out = [Recipient("operator", n, validate_operator_key(k)) for n, k in self.inventory.operators.items()]
        out += [host_recipient(h.name, h.host_key) for h in hosts]
        return out

    def _identities(self) -> list[Any]:
        return [identity.load()]

    def _audit(self, action: str, env: str, name: str, **kw: Any) -> None:
        self.store.audit([AuditRecord(at=now_iso(), who=self.who, action=action, env=env, secret=name, **kw)])

    # ----- local operations ------------------------------------------------------
    def set(self, name: str, value: Secret, *, env: str) -> SecretRecord:
        validate_secret_name(name)
        authorize(self.policy, self.who, "set", env, name)
        if not isinstance(value, Secret):
            raise TypeError("pass the value as ndctl.core.secret.Secret")
        ids = self._identities()  # a missing or broken identity is refused before anything is written
        recips = self.recipients(env)
        with self.store.locked():
            if self.store.exists(env, name):
                # only an operator who can read the old value may replace it
                self.store.reveal(env, name, ids)
            rec = self.store.put(env, name, value, recips, who=self.who)
        self._audit("set", env, name)
        return rec

    def get(self, name: str, *, env: str) -> Secret:
        try:
            authorize(self.policy, self.who, "get", env, name)
            value = self.store.reveal(env, name, self._identities())
        except AuthError as e:  # refused reads are audited too
            self._audit("get", env, name, detail=f"refused: {type(e).__name__}")
            raise
        self._audit("get", env, name)
        return value

    def list(self, env: str | None = None) -> list[SecretRecord]:
        return self.store.list(env)

    def remove(self, name: str, *, env: str) -> SecretRecord:
        authorize(self.policy, self.who, "remove", env, name)
        with self.store.locked():
            rec = self.store.remove(env, name)
        self._audit("remove", env, name)
        return rec

    def rekey(self, *, env: str | None = None, name: str | None = None,
              force: bool = False) -> list[tuple[SecretRecord, bool]]:
        """Re-encrypt to the current operators and hosts; checks every secret first (no partial rekey
        for want of permission or recipients)."""
        recs = self.store.list(env, name)
        if name and not recs:
            from ndctl.core.secretstore import SecretNotFound

            raise SecretNotFound(env or "any environment", name)
        for rec in recs:
            authorize(self.policy, self.who, "rekey", rec.env, rec.name)
        recips = {e: self.recipients(e) for e in {r.env for r in recs}}
        ids = self._identities()
        for rec in recs:  # every one decrypts before any is rewritten
            self.store.reveal(rec.env, rec.name, ids)
        out = []
        with self.store.locked():
            for rec in recs:
                new, changed = self.store.rekey(rec.env, rec.name, ids, recips[rec.env], who=self.who, force=force)
                out.append((new, changed))
                if changed:
                    self._audit("rekey", rec.env, rec.name)
        return out

    def audit(self, name: str | None = None, *, host_records: Iterable[AuditRecord] = ()) -> list[AuditRecord]:
        recs = [r for r in [*self.store.read_audit(), *host_records] if name is None or r.secret == name]
        return sorted(recs, key=lambda r: r.at)  # stable: same-second records keep their order

    # ----- deploys ---------------------------------------------------------------------
    def _members(self) -> dict[str, set[str]]:
        """environment -> names of its hosts (each selector evaluated once per deploy)."""
        if getattr(self, "_member_cache", None) is None:
            self._member_cache = {e: {h.name for h in self.inventory.environment_hosts(e)}
                                  for e in self.inventory.environments}
        return self._member_cache

    def host_env(self, host: Host, env: str | None) -> str:
        members = self._members()
        if env is not None:
            if env not in members:
                self.inventory.environment_hosts(env)  # raises: unknown environment (exit 5)
            if host.name not in members[env]:
                raise UsageError(f"host {host.name} is not in environment {env} "
                                 f"(selector {self.inventory.environments[env]!r})")
            return env
        envs = [e for e, names in members.items() if host.name in names]
        if len(envs) == 1:
            return envs[0]
        if not envs:
            raise UsageError(f"host {host.name} is in no secrets environment",
                             hint="`ndctl secrets env set NAME SELECTOR` maps an environment to hosts")
        raise UsageError(f"host {host.name} is in several environments ({', '.join(envs)}): pass --env")

    def plan_delivery(self, hosts: Sequence[Host], names: Sequence[str], *,
                      env: str | None = None) -> dict[str, HostDelivery]:
        """Validate a deploy's secrets for every host, touching none: each exists in the host's
        environment, the operator may use it, and it is encrypted to the host's pinned key."""
        out: dict[str, HostDelivery] = {}
        if not names:
            return out
        records: dict[tuple[str, str], SecretRecord] = {}
        for h in hosts:
            e = self.host_env(h, env)
            key = host_recipient(h.name, h.host_key).key
            d = HostDelivery(h, e, key)
            for n in names:
                authorize(self.policy, self.who, "use", e, n)
                rec = records.get((e, n)) or self.store.load(e, n)
                records[(e, n)] = rec
                if not rec.has_recipient(key):
                    raise HostKeyError(
                        f"secret {n} of {e} is not encrypted to the host key of {h.name} (the host joined the "
                        "environment, or was re-registered with a new key, after the secret was set)",
                        hint=f"`ndctl secrets rekey --env {e}`, then deploy again")
                d.ciphertexts[n] = rec.ciphertext
            out[h.name] = d
        return out

    def record_use(self, deliveries: Iterable[HostDelivery], app: str) -> None:
        at = now_iso()
        self.store.audit([AuditRecord(at=at, who=self.who, action="use", env=d.env, secret=n, host=d.host.name,
                                      app=app) for d in deliveries for n in d.ciphertexts])


# --------------------------------------------------------------------------- on the host
def unseal_error(host: str, r: HostResult) -> str:
    code = r.exit_code
    if code == host_cmds.NO_AGE:
        return f"`age` is not installed on {host}; prepare the host: `ndctl agent prepare --tags name:{host}`"
    if code == host_cmds.NO_HOST_KEY:
        return (f"{host} has no /etc/ssh/ssh_host_ed25519_key to decrypt secrets with; create one (ssh-keygen -A), "
                f"re-register the host and run `ndctl secrets rekey`")
    if code == host_cmds.KEY_CHANGED:
        return (f"the host key of {host} is not the one pinned at registration (reinstalled?); verify it, "
                f"re-register (`ndctl agent register --name {host} --trust-host-key`) and `ndctl secrets rekey`")
    if code == host_cmds.UNSEAL_FAILED:
        return f"{host} cannot decrypt its secrets with its host key; `ndctl secrets rekey`, then deploy again"
    return r.reason


async def deliver(runner: Any, d: HostDelivery, app: str, *, who: str) -> str:
    """Ship the ciphertexts, unseal into tmpfs, record the use on the host; returns the boot hook
    in use (systemd, cron or none). Raises RemoteError with a clear message."""
    h = d.host

    async def run(argv: list[str], input: str | bytes | None = None) -> HostResult:
        return await runner.run(h, for_host(argv, h), input=input, timeout=120)

    r = await run(host_cmds.install_support())
    if not r.ok:
        raise RemoteError(f"installing the secrets scripts on {h.name} failed: "
                          f"{r.reason}", r)
    boot = next((ln.split(": ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("boot: ")), "none")
    r = await run(host_cmds.unseal(app, who=who, expected_host_key=d.host_key, check=True))
    if not r.ok:  # nothing stored yet: no partial state
        raise RemoteError(unseal_error(h.name, r), r)
    for name, ct in d.ciphertexts.items():
        r = await run(host_cmds.store_ciphertext(app, name), input=ct)
        if not r.ok:
            raise RemoteError(f"storing secret {name} on {h.name} failed: {r.reason}", r)
    r = await run(host_cmds.unseal(app, who=who, expected_host_key=d.host_key))
    if not r.ok:
        raise RemoteError(unseal_error(h.name, r), r)
    # secrets this release no longer lists are not handed to it
    await run(host_cmds.prune(app, list(d.ciphertexts)))
    at = now_iso()
    lines = "".join(AuditRecord(at=at, who=who, action="use", env=d.env, secret=n, host=h.name, app=app).to_line()
                    for n in d.ciphertexts)
    await run(host_cmds.append_audit(), input=lines)
    return boot


async def host_audit(runner: Any, hosts: Sequence[Host]) -> tuple[list[AuditRecord], list[str]]:
    """Every host's audit records, and the names of hosts that could not be read."""
    from ndctl.core.secretstore import parse_audit

    res = await runner.fan_out(hosts, lambda h: runner.run(h, for_host(host_cmds.read_audit(), h)))
    recs, bad = [], []
    for r in res:
        if r.ok:
            recs += parse_audit(r.stdout, host=r.host)
        else:
            bad.append(r.host)
    return recs, bad


__all__ = ["HostDelivery", "Secrets", "deliver", "host_audit", "unseal_error"]
