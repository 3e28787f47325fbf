"""``ndctl agent ...``: register, list, remove, tag, refresh, facts."""
from __future__ import annotations

import asyncio
import sys
from typing import List, Optional

import typer

from ndctl.cli import output
from ndctl.cli.output import Output
from ndctl.core.cache import Cache
from ndctl.core.errors import ExitStatus, UsageError
from ndctl.core.facts import Facts
from ndctl.core.inventory import Host, Inventory, parse_tag_list

app = typer.Typer(help="Register, list, tag and remove hosts (agents).", no_args_is_help=True)


class _LazyOps:
    """``agents`` ops, imported on first use: `agent list` should not pay for asyncssh."""

    def __getattr__(self, name: str):
        from ndctl.ops import agents as mod

        return getattr(mod, name)


agents = _LazyOps()

OUTPUT = typer.Option(Output.table, "--output", "-o", help="table, wide, json or yaml.")
SELECTOR = typer.Option(None, "--tags", "-t", help="Host selector: 'production,web', 'web|db', '!db', 'name:web-*'.")


def _inv_path():
    from ndctl.cli.main import state

    return state.inventory


def _load() -> Inventory:
    return Inventory.load(_inv_path(), readonly=True)


def _confirm_host_key(desc: str, fp: str) -> bool:
    sys.stderr.write(f"The authenticity of host {desc} can't be established.\nHost key fingerprint is {fp}.\n")
    return typer.confirm("Trust this host key and continue?", default=False, err=True)


@app.command("register")
def register_agent(
    name: str = typer.Option(..., "--name", "-n", help="Agent name; resolved like `ssh NAME` (~/.ssh/config)."),
    tags: Optional[str] = typer.Option(None, "--tags", "-t", help="Comma-separated manual tags."),
    address: Optional[str] = typer.Option(None, "--address", help="Override the address (HostName)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Override the SSH port."),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="Override the login user."),
    identity: Optional[str] = typer.Option(None, "--identity", help="Private key file."),
    proxy_jump: Optional[str] = typer.Option(None, "--proxy-jump", "-J", help="Bastion: [user@]host[:port]."),
    sudo: Optional[bool] = typer.Option(None, "--sudo/--no-sudo", help="Escalate with passwordless sudo."),
    trust_host_key: bool = typer.Option(False, "--trust-host-key", help="Accept the presented host key."),
    fmt: Output = OUTPUT,
) -> None:
    """Connect to a host, pin its key, gather facts and add (or update) it."""
    confirm = _confirm_host_key if sys.stdin.isatty() and not trust_host_key else None
    # No spinner here: it would redraw over the host-key prompt.
    reg = asyncio.run(agents.register(
        _inv_path(), name, tags=tags, address=address, port=port, user=user, identity=identity,
        proxy_jump=proxy_jump, sudo=sudo, trust_host_key=trust_host_key, confirm=confirm))
    for w in reg.warnings:
        sys.stderr.write(f"warning: {w}\n")
    if fmt in (Output.json, Output.yaml):
        output.emit_data({**_host_dict(reg.host, reg.facts, None), "new": reg.new,
                          "host_key_fingerprint": reg.fingerprint}, fmt)
        return
    verb = "registered" if reg.new else "updated"
    output.stdout.print(f"{verb} {reg.host.name} (id {reg.host.id}) at {reg.host.user}@{reg.host.address}:{reg.host.port}")
    output.stdout.print(f"  host key  {reg.fingerprint}")
    output.stdout.print(f"  tags      {', '.join(reg.host.tags) or '-'}")
    output.stdout.print(f"  auto-tags {', '.join(reg.host.auto_tags) or '-'}")


def _host_dict(h: Host, facts: Facts | None, cache_entry) -> dict:
    d = {"id": h.id, "name": h.name, "address": h.address, "port": h.port, "user": h.user,
         "tags": h.tags, "auto_tags": h.auto_tags, "proxy_jump": h.proxy_jump, "sudo": h.sudo,
         "host_key": h.host_key}
    if facts is not None:
        d["facts"] = facts.summary()
    if cache_entry is not None:
        d["last_seen"] = cache_entry.last_seen
        d["last_error"] = cache_entry.last_error
    return d


@app.command("list")
def list_agents(selector: Optional[str] = SELECTOR, fmt: Output = OUTPUT) -> None:
    """List agents with their tags and cached facts."""
    inv = _load()
    hosts = inv.select(selector) if selector else list(inv)
    cache = Cache(inv.cache_dir)
    rows = []
    for h in hosts:
        entry = cache.get(h.id)
        facts = Facts(entry.facts) if entry.facts else None
        rows.append((h, facts, entry))
    if fmt in (Output.json, Output.yaml):
        output.emit_data([_host_dict(h, f, e) for h, f, e in rows], fmt)
        return
    if not rows:
        sys.stderr.write(f"no agents in {inv.path} (add one with `ndctl agent register --name NAME`)\n")
        return
    cols = ["ID", "NAME", "ADDRESS", "TAGS", "ARCH", "CPUS", "MEMORY", "DISK", "DOCKER", "LAST SEEN"]
    if fmt is Output.wide:
        cols += ["AUTO-TAGS", "OS", "KERNEL", "LAST ERROR"]
    out = []
    for h, f, e in rows:
        s = f.summary() if f else {}
        addr = f"{h.user}@{h.address}" + (f":{h.port}" if h.port != 22 else "")
        tags = ",".join(h.tags) if fmt is Output.wide else ",".join(h.all_tags)
        row = [h.id, h.name, addr, tags, s.get("arch"), s.get("cpus"),
               f"{s['memory_gib']}G" if s.get("memory_gib") is not None else None, s.get("disk"),
               s.get("docker") or ("-" if f else None), output.ago(e.last_seen)]
        if fmt is Output.wide:
            row += [",".join(h.auto_tags), f.os_pretty if f else None, f.kernel if f else None, e.last_error]
        out.append(row)
    output.table(cols, out)


@app.command("remove")
def remove(
    agent: str = typer.Argument(..., help="Agent id (or unique prefix) or name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    purge: bool = typer.Option(False, "--purge", help="Also remove ndctl's files from the host."),
    fmt: Output = OUTPUT,
) -> None:
    """Remove an agent from the inventory (and with --purge, ndctl's files from the host)."""
    inv = _load()
    host = inv.get(agent)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to remove {host.name} without --yes (no terminal to confirm on)")
        what = f"{host.name} ({host.id})" + (" and purge ndctl's files from it" if purge else "")
        if not typer.confirm(f"Remove {what}?", default=False, err=True):
            raise typer.Exit(int(ExitStatus.USAGE))
    purged = None
    if purge:
        r = asyncio.run(agents.purge(inv, host, agents.run_options(inv)))
        if not r.ok:
            sys.stderr.write(f"error: purge on {host.name} failed: {r.error or r.stderr.strip()}; agent kept\n")
            raise typer.Exit(int(r.exit_status or ExitStatus.HOST_FAILED)
                             if r.exit_status else int(ExitStatus.HOST_FAILED))
        purged = True
    agents.remove(inv.path, host.name)
    if fmt in (Output.json, Output.yaml):
        output.emit_data({"removed": host.name, "id": host.id, "purged": bool(purged)}, fmt)
    else:
        output.stdout.print(f"removed {host.name} ({host.id})" + (", host purged" if purged else ""))


tag_app = typer.Typer(help="Add or remove manual tags on selected agents.", no_args_is_help=True)
app.add_typer(tag_app, name="tag")


def _retag(tags: List[str], selector: str, add: bool, fmt: Output) -> None:
    wanted: list[str] = []
    for t in tags:
        wanted += parse_tag_list(t)
    if not wanted:
        raise UsageError("no tags given")
    hosts = agents.retag(_inv_path(), selector, wanted if add else [], [] if add else wanted)
    if fmt in (Output.json, Output.yaml):
        output.emit_data([{"name": h.name, "id": h.id, "tags": h.tags} for h in hosts], fmt)
    else:
        verb = "added" if add else "removed"
        output.stdout.print(f"{verb} {', '.join(wanted)} on {len(hosts)} agent(s): {', '.join(h.name for h in hosts)}")


@tag_app.command("add")
def tag_add(tags: List[str] = typer.Argument(..., help="Tags to add."),
            selector: str = typer.Option(..., "--tags", "-t", help="Which agents (selector)."),
            fmt: Output = OUTPUT) -> None:
    """Add manual tags to every selected agent."""
    _retag(tags, selector, True, fmt)


@tag_app.command("remove")
def tag_remove(tags: List[str] = typer.Argument(..., help="Tags to remove."),
               selector: str = typer.Option(..., "--tags", "-t", help="Which agents (selector)."),
               fmt: Output = OUTPUT) -> None:
    """Remove manual tags from every selected agent (auto-tags are recomputed by refresh)."""
    _retag(tags, selector, False, fmt)


@app.command("refresh")
def refresh(selector: Optional[str] = SELECTOR, fmt: Output = OUTPUT,
            forks: Optional[int] = typer.Option(None, "--forks", "-f", min=1, help="Hosts at once.")) -> None:
    """Re-gather facts and auto-tags; exits non-zero when a host went away (for cron)."""
    inv = _load()
    hosts = inv.select(selector) if selector else inv.select("*")
    with output.status(f"refreshing {len(hosts)} agent(s)"):
        result = asyncio.run(agents.refresh(inv, hosts, agents.run_options(inv, forks=forks)))
    if fmt in (Output.json, Output.yaml):
        data = result.to_dict()
        for h in data["hosts"]:
            h.pop("stdout", None)
            if "value" in h:
                h["auto_tags"] = inv.hosts[h["host"]].auto_tags
                h.pop("value")
        output.emit_data(data, fmt)
    else:
        rows = []
        for r in result:
            h = inv.hosts[r.host]
            rows.append([h.id, h.name, r.status.value, ",".join(h.auto_tags) if r.ok else "",
                         f"{r.duration:.2f}s", "" if r.ok else (r.error or r.stderr.strip())])
        output.table(["ID", "NAME", "STATUS", "AUTO-TAGS", "TIME", "ERROR"], rows)
        output.summary(result)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


@app.command("facts")
def facts(agent: str = typer.Argument(..., help="Agent id or name."), fmt: Output = OUTPUT,
          cached: bool = typer.Option(False, "--cached", help="Show the cached facts without connecting.")) -> None:
    """Show every fact of one agent (gathered now unless --cached)."""
    inv = _load()
    host = inv.get(agent)
    if cached:
        entry = Cache(inv.cache_dir).get(host.id)
        if not entry.facts:
            raise UsageError(f"no cached facts for {host.name}; run without --cached")
        data = entry.facts
    else:
        result = asyncio.run(agents.refresh(inv, [host], agents.run_options(inv)))
        r = result[host.name]
        if not r.ok:
            output.summary(result)
            raise typer.Exit(int(result.exit_status()))
        data = r.value.to_dict()
    if fmt in (Output.json, Output.yaml):
        output.emit_data(data, fmt)
        return
    _print_facts(host, Facts(data))


def _print_facts(host: Host, f: Facts) -> None:
    d = f.to_dict()
    rows = [
        ("name", host.name), ("id", host.id), ("hostname", d.get("hostname")), ("arch", f.arch),
        ("cpus", f"{f.cpu_count} x {(d.get('cpus') or {}).get('model') or '?'}"),
        ("memory", output.gib(f.memory_total_bytes)), ("os", f.os_pretty), ("kernel", f.kernel),
        ("docker", f.docker_version or "not running"), ("python", d.get("python")),
        ("gpus", ", ".join(f"{g.get('vendor')} {g.get('model') or g.get('device_id')}" for g in f.gpus) or "none"),
        ("tags", ", ".join(host.tags)), ("auto-tags", ", ".join(host.auto_tags)),
    ]
    output.table(["FACT", "VALUE"], rows)
    disks = [(x["mount"], x.get("device"), x.get("fstype"), output.gib(x.get("total_bytes")),
              output.gib(x.get("free_bytes")), f"{x.get('used_percent', 0):.0f}%") for x in d.get("disks") or []]
    if disks:
        output.table(["MOUNT", "DEVICE", "FS", "SIZE", "FREE", "USED"], disks)
    cons = [(c.get("id"), c.get("name"), c.get("image"), c.get("state"), c.get("status")) for c in f.containers]
    if cons:
        output.table(["CONTAINER", "NAME", "IMAGE", "STATE", "STATUS"], cons)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="agent")
