"""Who may do what with a secret: the ONE permission check (``authorize``).

Roles grant a permission per secret: ``write`` (which includes read), ``read``
or ``none``. A role is a list of ``pattern: permission`` rules; a pattern is a
glob over ``NAME`` or ``ENV/NAME`` and the most specific matching rule wins
(the longest pattern; on a tie, the lesser permission). An operator's role comes
from ``access.members`` in the inventory, else ``access.default_role``.

Without an ``access:`` section every operator is ``admin`` (write on every
secret): a single operator (or a small trusted team) needs no configuration.
The team feature binds roles to people by replacing :meth:`AccessPolicy.role_of`;
every command goes through :func:`authorize`, so nothing else changes.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from ndctl.core.errors import AuthError


class Permission(str, Enum):
    NONE = "none"
    READ = "read"
    WRITE = "write"

    @property
    def rank(self) -> int:
        return {"none": 0, "read": 1, "write": 2}[self.value]


#: the permission each action needs. list/audit/status show names and metadata only.
ACTIONS: dict[str, Permission] = {
    "set": Permission.WRITE,
    "remove": Permission.WRITE,
    "rekey": Permission.WRITE,
    "get": Permission.READ,  # prints the value
    "use": Permission.READ,  # a deploy delivers it to hosts
    "list": Permission.NONE,
    "audit": Permission.NONE,
}

DEFAULT_ROLE = "admin"
BUILTIN_ROLES: dict[str, tuple[tuple[str, Permission], ...]] = {
    "admin": (("*", Permission.WRITE),),
    "deployer": (("*", Permission.READ),),
    "none": (("*", Permission.NONE),),
}


class AccessDenied(AuthError):
    """The operator's role does not allow this action on this secret (exit status 7)."""


@dataclass(frozen=True)
class AccessPolicy:
    roles: Mapping[str, tuple[tuple[str, Permission], ...]] = field(default_factory=lambda: dict(BUILTIN_ROLES))
    members: Mapping[str, str] = field(default_factory=dict)  # operator -> role
    default_role: str = DEFAULT_ROLE

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any] | None) -> "AccessPolicy":
        """The inventory's ``access:`` section; ValueError names the bad field."""
        if not doc:
            return cls()
        unknown = set(doc) - {"default_role", "roles", "members"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: default_role, members, roles)")
        roles: dict[str, tuple[tuple[str, Permission], ...]] = dict(BUILTIN_ROLES)
        raw_roles = doc.get("roles") or {}
        if not isinstance(raw_roles, Mapping):
            raise ValueError("roles must be a mapping of role name to {pattern: read|write|none}")
        for role, rules in raw_roles.items():
            if not isinstance(rules, Mapping) or not rules:
                raise ValueError(f"roles.{role} must be a mapping of secret pattern to read, write or none")
            parsed = []
            for pattern, perm in rules.items():
                try:
                    parsed.append((str(pattern), Permission(perm)))
                except ValueError:
                    raise ValueError(f"roles.{role}.{pattern}: {perm!r} is not read, write or none") from None
            roles[str(role)] = tuple(parsed)
        members = doc.get("members") or {}
        if not isinstance(members, Mapping):
            raise ValueError("members must be a mapping of operator to role")
        for who, role in members.items():
            if role not in roles:
                raise ValueError(f"members.{who}: unknown role {role!r} (known: {', '.join(sorted(roles))})")
        default = doc.get("default_role", DEFAULT_ROLE)
        if default not in roles:
            raise ValueError(f"default_role: unknown role {default!r} (known: {', '.join(sorted(roles))})")
        return cls(roles=roles, members={str(k): str(v) for k, v in members.items()}, default_role=default)

    def role_of(self, actor: str) -> str:
        """The hook the team feature replaces: operator -> role."""
        return self.members.get(actor, self.default_role)

    def permission(self, role: str, env: str, name: str) -> Permission:
        best: tuple[int, int] | None = None
        perm = Permission.NONE
        for pattern, p in self.roles.get(role, ()):
            if fnmatch.fnmatchcase(f"{env}/{name}", pattern) or fnmatch.fnmatchcase(name, pattern):
                key = (len(pattern), -p.rank)
                if best is None or key > best:
                    best, perm = key, p
        return perm


def authorize(policy: AccessPolicy, actor: str, action: str, env: str, name: str) -> Permission:
    """Raise :class:`AccessDenied` unless ``actor`` may do ``action`` on secret ``env/name``."""
    need = ACTIONS[action]
    role = policy.role_of(actor)
    have = policy.permission(role, env, name)
    if have.rank < need.rank:
        raise AccessDenied(
            f"{actor} (role {role}) may not {action} secret {name} in {env}: it needs {need.value}, "
            f"the role has {have.value}",
            hint="an operator with write access can change `access:` in the inventory",
        )
    return have


__all__ = ["ACTIONS", "AccessDenied", "AccessPolicy", "BUILTIN_ROLES", "DEFAULT_ROLE", "Permission", "authorize"]
