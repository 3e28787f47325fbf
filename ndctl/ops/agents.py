"""Agent registration, refresh and removal: the inventory side of the fleet."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ndctl.commands.helper import purge_argv
from ndctl.commands.shell import for_host
from ndctl.core import knownhosts
from ndctl.core.autotags import compute_auto_tags
from ndctl.core.cache import AgentCache, Cache
from ndctl.core.errors import HostKeyChanged, HostKeyError, RemoteError, UsageError
from ndctl.core.facts import Facts
from ndctl.core.inventory import Host, Inventory, locked, parse_tag_list, validate_name
from ndctl.core.results import GroupResult, HostResult
from ndctl.ops.helper import gather_facts
from ndctl.transport import sshconfig
from ndctl.transport.ssh import HostKeyPolicy, Runner, RunOptions, fingerprint, key_line

# confirm(host description, fingerprint) -> accept?
ConfirmHostKey = Callable[[str, str], bool]


def run_options(inv: Inventory, *, forks: int | None = None, connect_timeout: float | None = None,
                command_timeout: float | None = None, policy: HostKeyPolicy | None = None) -> RunOptions:
    s = inv.settings
    return RunOptions(
        forks=forks or s.forks,
        connect_timeout=connect_timeout or s.connect_timeout,
        command_timeout=command_timeout if command_timeout is not None else s.command_timeout,
        ssh_config=s.ssh_config,
        max_handshakes=s.max_handshakes,
        max_channels=s.max_channels,
        known_hosts_files=[inv.known_hosts_path, Path("~/.ssh/known_hosts").expanduser()],
        host_key_policy=policy or HostKeyPolicy(),
    )


@dataclass
class Registration:
    host: Host
    facts: Facts
    new: bool
    fingerprint: str
    key_was_pinned: bool
    warnings: list[str] = field(default_factory=list)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


async def register(
    inventory_path: Path | str | None,
    name: str,
    *,
    tags: str | None = None,
    address: str | None = None,
    port: int | None = None,
    user: str | None = None,
    identity: str | None = None,
    proxy_jump: str | None = None,
    sudo: bool | None = None,
    trust_host_key: bool = False,
    confirm: ConfirmHostKey | None = None,
) -> Registration:
    """Connect for real, pin the host key, upload the helper, gather facts, then (only then) save.

    Nothing is written unless every step succeeded, so a failed registration
    leaves the inventory and known_hosts exactly as they were.
    """
    validate_name(name)
    manual_tags = parse_tag_list(tags) if tags is not None else None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--port must be 1-65535, not {port}")
    inv = Inventory.load(inventory_path)
    existing = inv.hosts.get(name)
    resolved = sshconfig.resolve(name, sshconfig.config_paths(inv.settings.ssh_config))
    def pick(field: str, flag, from_config, builtin):
        """A flag wins, then ~/.ssh/config, then the existing entry, then inventory defaults."""
        if flag is not None:
            return flag
        if field in resolved.set_fields:
            return from_config
        if existing is not None:
            return getattr(existing, field)
        return inv.defaults.get(field, builtin)

    host = Host(
        name=name,
        address=pick("address", address, resolved.hostname, name),
        port=pick("port", port, resolved.port, 22),
        user=pick("user", user, resolved.user, resolved.user),
        identity=pick("identity", identity, resolved.identity_files[0] if resolved.identity_files else None, None),
        proxy_jump=pick("proxy_jump", proxy_jump, resolved.proxy_jump, None),
        sudo=pick("sudo", sudo, None, False),
        tags=manual_tags if manual_tags is not None else (list(existing.tags) if existing else []),
        registered_at=existing.registered_at if existing else _now_iso(),
        ssh_name=name if resolved.from_config else None,
    )
    if host.identity and not Path(host.identity).expanduser().is_file():
        raise UsageError(f"identity file {host.identity} does not exist")

    pins = knownhosts.read_pins(inv.known_hosts_path)
    was_pinned = bool(pins.get(knownhosts.pattern(host.address, host.port)))
    policy = HostKeyPolicy(trust_new=trust_host_key, accept_changed=trust_host_key)
    opts = run_options(inv, policy=policy)
    warnings: list[str] = []
    async with Runner(opts) as runner:
        try:
            await runner.connect(host)
        except HostKeyChanged:
            raise
        except HostKeyError as e:
            presented = runner.presented_keys.get(host.name)
            if presented is None:
                raise  # not the target's key (e.g. an untrusted bastion): the error says which
            if confirm is None:
                raise HostKeyError(
                    f"{e.message}; refusing an unknown host key without a terminal",
                    hint="check the fingerprint out of band, then pass --trust-host-key",
                ) from e
            desc = f"{host.user}@{host.address}:{host.port}"
            if not await asyncio.to_thread(confirm, desc, fingerprint(presented)):
                raise HostKeyError(f"host key of {desc} not accepted; nothing was registered") from e
            runner.pin(host, key_line(presented))
            await runner.connect(host)
        presented = runner.presented_keys[host.name]
        result = await gather_facts(runner, host, helper_dir=inv.settings.helper_dir)
        if not result.ok:
            detail = result.reason
            raise RemoteError(f"gathering facts on {name} failed: {detail}", result)
        ed25519 = key_line(presented) if presented.get_algorithm() == "ssh-ed25519" else None
        if ed25519 is None:
            r = await runner.run(host, for_host(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"], host))
            if r.ok and r.stdout.startswith("ssh-ed25519 "):
                ed25519 = " ".join(r.stdout.split()[:2])
            else:
                warnings.append(f"{name} has no ssh-ed25519 host key: secrets cannot be encrypted to it")
    facts: Facts = result.value
    host.host_key = ed25519
    host.auto_tags = compute_auto_tags(facts, inv.thresholds)

    with locked(inv.path) as fresh:
        new = fresh.upsert(host)
        fresh.save()
        knownhosts.set_pin(fresh.known_hosts_path, host.address, host.port, key_line(presented), f"ndctl:{name}")
        Cache(fresh.cache_dir).put(host.id, AgentCache(facts=facts.to_dict(), last_seen=time.time(),
                                                       last_attempt=time.time()))
    return Registration(host, facts, new, fingerprint(presented), was_pinned, warnings)


async def refresh(inv: Inventory, hosts: list[Host], opts: RunOptions, *,
                  runner: Runner | None = None) -> GroupResult:
    """Re-gather facts, recompute auto-tags (manual tags untouched), update last-seen.

    ``runner``: an open Runner to reuse (the dashboard's); by default one for this call.
    """
    cache = Cache(inv.cache_dir)
    if runner is not None:
        group = await runner.fan_out(hosts, lambda h: gather_facts(runner, h, helper_dir=inv.settings.helper_dir))
    else:
        async with Runner(opts) as own:
            group = await own.fan_out(hosts, lambda h: gather_facts(own, h, helper_dir=inv.settings.helper_dir))
    now = time.time()
    new_auto: dict[str, list[str]] = {}
    for h, r in zip(hosts, group):
        entry = cache.get(h.id)
        entry.last_attempt = now
        if r.ok:
            entry.facts, entry.last_seen, entry.last_error = r.value.to_dict(), now, None
            new_auto[h.name] = compute_auto_tags(r.value, inv.thresholds)
        else:
            entry.last_error = r.reason
        cache.put(h.id, entry)
    if new_auto:
        with locked(inv.path) as fresh:
            changed = False
            for name, tags in new_auto.items():
                h = fresh.hosts.get(name)
                if h is not None and h.auto_tags != tags:
                    h.auto_tags = tags
                    fresh.upsert(h)
                    changed = True
            if changed:
                fresh.save()
            inv.hosts.update({n: fresh.hosts[n] for n in new_auto if n in fresh.hosts})
    return group


async def purge(inv: Inventory, host: Host, opts: RunOptions) -> HostResult:
    async with Runner(opts) as runner:
        return await runner.run(host, for_host(purge_argv(inv.settings.helper_dir), host))


def remove(inv_path: Path | str | None, ref: str) -> Host:
    with locked(inv_path) as inv:
        host = inv.remove(ref)
        inv.save()
        if not any(h.address == host.address and h.port == host.port for h in inv):
            knownhosts.remove_pin(inv.known_hosts_path, host.address, host.port)
        Cache(inv.cache_dir).drop(host.id)
    return host


def retag(inv_path: Path | str | None, selector: str, add: list[str], remove_tags: list[str]) -> list[Host]:
    """Add or remove manual tags on every selected host (auto-tags are never edited)."""
    with locked(inv_path) as inv:
        chosen = inv.select(selector)
        for h in chosen:
            tags = [t for t in h.tags if t not in remove_tags]
            tags += [t for t in add if t not in tags]
            h.tags = tags
            inv.upsert(h)
        inv.save()
    return chosen

