"""``ndctl sandbox ...``: a local fleet of isolated test hosts, and the guided demo on it."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from ndctl.cli import output
from ndctl.cli.output import Output

app = typer.Typer(help="A local sandbox fleet (containers with their own sshd and Docker engine).",
                  no_args_is_help=True)

DEFAULT_DIR = Path("~/.nextdeploy/sandbox")
WORKDIR = typer.Option(None, "--dir", help="Sandbox directory (default ~/.nextdeploy/sandbox).")


def _workdir(d: Optional[Path]) -> Path:
    return (d or DEFAULT_DIR).expanduser()


def _group() -> dict[str, str]:
    """A second sandbox beside the usual one (the tests' and CI's): NDCTL_SANDBOX_GROUP, and
    NDCTL_SANDBOX_PREFIX for its host names."""
    from ndctl import sandbox

    return {"group": os.environ.get("NDCTL_SANDBOX_GROUP") or sandbox.SANDBOX_GROUP}


def _prefix() -> dict[str, str]:
    return {"prefix": os.environ.get("NDCTL_SANDBOX_PREFIX") or "sbx-"}


@app.command("up")
def up(hosts: int = typer.Option(3, "--hosts", "-n", min=1, max=20, help="How many hosts."),
       workdir: Optional[Path] = WORKDIR, fmt: Output = typer.Option(Output.table, "--output", "-o")) -> None:
    """Start (or reuse) the sandbox hosts; prints how to reach them."""
    from ndctl import sandbox

    with output.status(f"starting {hosts} sandbox host(s) (the first run builds the host image, ~2 min)"):
        started = sandbox.up(hosts, workdir=_workdir(workdir), **_group(), **_prefix())
    if fmt in (Output.json, Output.yaml):
        output.emit_data([{"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                           "identity": str(h.identity), "host_key": h.host_key} for h in started], fmt)
        return
    output.table(["NAME", "ADDRESS", "PORT", "USER", "CONTAINER"],
                 [(h.name, h.address, h.port, h.user, h.container) for h in started])
    cfg = _workdir(workdir) / "ssh_config"
    sys.stderr.write(f"ssh config: {cfg}  (try: ssh -F {cfg} {started[0].name})\n")


@app.command("down")
def down(workdir: Optional[Path] = WORKDIR,
         yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Remove the sandbox hosts and their Docker volumes."""
    from ndctl import sandbox
    from ndctl.core.errors import UsageError

    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to remove the sandbox without --yes (no terminal to confirm on)")
        if not typer.confirm("Remove every sandbox host and its volumes?", default=False, err=True):
            raise typer.Exit(2)
    removed = sandbox.down(workdir=_workdir(workdir), **_group())
    shutil.rmtree(_workdir(workdir) / "demo", ignore_errors=True)
    output.stdout.print(f"removed {len(removed)} sandbox host(s)")


@app.command("status")
def status(workdir: Optional[Path] = WORKDIR, fmt: Output = typer.Option(Output.table, "--output", "-o")) -> None:
    """Show the sandbox hosts."""
    from ndctl import sandbox

    rows = [h.to_dict() for h in sandbox.status(workdir=_workdir(workdir), **_group())]
    if fmt in (Output.json, Output.yaml):
        output.emit_data(rows, fmt)
        return
    if not rows:
        sys.stderr.write("no sandbox hosts (start them with `ndctl sandbox up`)\n")
        return
    output.table(list(rows[0].keys()), [list(r.values()) for r in rows])


def _ndctl(args: list[str], env: dict[str, str], check: bool = True) -> int:
    shown = "ndctl " + " ".join(shlex.quote(a) for a in args)
    output.stdout.print(f"\n[bold]$ {shown}[/]", markup=True)
    rc = subprocess.call([sys.executable, "-m", "ndctl", *args], env=env)
    if check and rc != 0:
        output.stderr.print(f"[red]`{shown}` exited {rc}[/]", markup=True)
        raise typer.Exit(rc)
    return rc


def _deploy_demo(started, wd: Path, env: dict[str, str]) -> None:
    """Blue-green deploys of a sample app through the proxy, twice."""
    from ndctl import sandbox
    from ndctl.sandbox import caddyimage

    output.stdout.print("\n[bold]Preparing the hosts, then deploying a sample app blue-green behind Caddy[/]",
                        markup=True)
    _ndctl(["agent", "prepare", "--tags", "web"], env)
    # No registry is reachable from the sandbox: the proxy and app images are built
    # here and shipped to the hosts over SSH (docker save | docker load).
    proxy = caddyimage.build_caddy_image()
    for h in started:
        caddyimage.load_into(h, proxy)
    for v in ("v1", "v2"):
        sandbox.build_web_image(f"demo-web:{v}", f"hello from demo-web {v}")
    spec = wd / "demo" / "nextdeploy.yaml"
    spec.write_text(f"""# the sandbox demo's app; see `ndctl deploy init` for every field
app: demo-web
image: demo-web:v1
port: 8080
tags: web
health_check: {{path: /health, interval: 0.5s, deadline: 30s}}
proxy: {{kind: caddy, hosts: [], image: {proxy}}}
drain: 2s
grace: 10s
""")
    probe = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/').read().decode().strip())\""
    _ndctl(["deploy", "-f", str(spec)], env)
    _ndctl(["exec", "--tags", "web", "--", probe], env)
    _ndctl(["deploy", "-f", str(spec), "--image", "demo-web:v2"], env)
    _ndctl(["exec", "--tags", "web", "--", probe], env)
    _ndctl(["deploy", "history", "demo-web", "-f", str(spec)], env)
    _ndctl(["deploy", "status", "demo-web", "-f", str(spec)], env)


@app.command("demo")
def demo(hosts: int = typer.Option(3, "--hosts", "-n", min=2, max=20),
         workdir: Optional[Path] = WORKDIR,
         keep: bool = typer.Option(True, "--keep/--down", help="Leave the sandbox running afterwards.")) -> None:
    """The main job on the embedded default: start the sandbox, register and tag it, list facts, run commands."""
    from ndctl import sandbox

    wd = _workdir(workdir)
    output.stdout.print(f"[bold]Starting a sandbox fleet of {hosts} hosts[/] "
                        "(containers with their own sshd, filesystem and Docker engine)", markup=True)
    started = sandbox.up(hosts, workdir=wd, **_group(), **_prefix())
    # The demo's own inventory starts empty each time, so every step below really happens.
    shutil.rmtree(wd / "demo", ignore_errors=True)
    env = dict(os.environ)
    env["NDCTL_INVENTORY"] = str(wd / "demo" / "inventory.yaml")
    env["NDCTL_SSH_CONFIG"] = str(wd / "ssh_config")
    output.stdout.print(f"inventory: {env['NDCTL_INVENTORY']}   ssh config: {env['NDCTL_SSH_CONFIG']}")
    layout = [("production,web,us-east"), ("production,web,eu-west"), ("production,db,us-east")]
    for i, h in enumerate(started):
        tags = layout[i] if i < len(layout) else "staging,web"
        # The sandbox was created seconds ago by this very command, so its host keys are trusted explicitly;
        # against real hosts, register from a terminal and compare the fingerprint.
        _ndctl(["agent", "register", "--name", h.name, "--tags", tags, "--trust-host-key"], env)
    _ndctl(["agent", "list"], env)
    _ndctl(["agent", "facts", started[0].name], env)
    _ndctl(["exec", "--tags", "web", "--", "uptime"], env)
    _ndctl(["exec", "--tags", "production,!db", "--group", "--", "docker info --format '{{.ServerVersion}}'"], env)
    _ndctl(["agent", "tag", "add", "canary", "--tags", f"name:{started[0].name}"], env)
    _ndctl(["agent", "list", "--tags", "canary|db", "-o", "wide"], env)
    _ndctl(["agent", "refresh"], env)
    rc = _ndctl(["exec", "--", f"test $(hostname) != {started[-1].name}"], env, check=False)
    output.stdout.print(f"(a command that fails on one host exits {rc}: see `ndctl exec --help`)")
    _deploy_demo(started, wd, env)
    if not keep:
        sandbox.down(workdir=wd, **_group())
        output.stdout.print("sandbox removed")
    else:
        output.stdout.print(f"\nThe sandbox keeps running. Try: NDCTL_INVENTORY={env['NDCTL_INVENTORY']} "
                            f"NDCTL_SSH_CONFIG={env['NDCTL_SSH_CONFIG']} ndctl agent list\n"
                            "Remove it with: ndctl sandbox down --yes")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sandbox")
