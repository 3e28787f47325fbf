"""``ndctl secrets``: set, get, list, remove, rekey, audit; environments; the operator identity.

Values never appear in output, logs or the audit log, except on ``secrets get``'s stdout.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ndctl.cli import output
from ndctl.cli.output import Output
from ndctl.core.errors import UsageError
from ndctl.core.secret import Secret

app = typer.Typer(help="Secrets encrypted with age: to operators and to the hosts' SSH host keys.",
                  no_args_is_help=True)
env_app = typer.Typer(help="Secrets environments: a name mapped to a host selector.", no_args_is_help=True)
app.add_typer(env_app, name="env")
operator_app = typer.Typer(help="Operators: the age keys every secret is also encrypted to.", no_args_is_help=True)
app.add_typer(operator_app, name="operator")

OUTPUT = typer.Option(Output.table, "--output", "-o", help="table, json or yaml.")
ENV = typer.Option(..., "--env", "-e", help="Environment (see `ndctl secrets env list`).")


def _secrets():
    from ndctl.cli.main import state
    from ndctl.ops.secrets import Secrets

    return Secrets(state.inventory)


def _confirm(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without --yes (no terminal to confirm on)")
    if not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        raise typer.Abort()


def _emit(data, fmt: Output) -> bool:
    if fmt in (Output.json, Output.yaml):
        output.emit_data(data, fmt)
        return True
    return False


# --------------------------------------------------------------------------- identity
@app.command("init")
def init(fmt: Output = OUTPUT) -> None:
    """Create your operator identity (if you have none) and add your key to the inventory's operators."""
    st = _secrets().init()
    if _emit(st, fmt):
        return
    verb = "created" if st["created"] else "found"
    output.stdout.print(f"operator {st['operator']}: identity {verb} in the {st['where']}", markup=False)
    output.stdout.print(f"public key {st['public_key']} is in the inventory's operators", markup=False)
    sys.stderr.write("existing secrets are not yet encrypted to it: an operator who can read them runs "
                     "`ndctl secrets rekey`\n")


@app.command("whoami")
def whoami(fmt: Output = OUTPUT) -> None:
    """Which identity backend is in use (keyring or file), your key, and your role."""
    st = _secrets().status()
    if _emit(st, fmt):
        return
    rows = [("operator", st["operator"]), ("identity", st["where"]),
            ("public key", st["public_key"] or f"none ({st.get('error')})"),
            ("in inventory", "yes" if st["registered"] else "no (`ndctl secrets init`)"), ("role", st["role"])]
    output.table(["", ""], rows)


# --------------------------------------------------------------------------- values
def _read_value(value: Optional[str], from_file: Optional[Path]) -> Secret:
    if value is not None and from_file is not None:
        raise UsageError("give the value, --from-file or stdin, not several")
    if from_file is not None:
        try:
            data = from_file.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {from_file}: {e.strerror}") from None
        try:
            return Secret(data.decode())
        except UnicodeDecodeError:
            raise UsageError(f"{from_file} is not UTF-8 text") from None
    if value is not None and value != "-":
        return Secret(value)
    if sys.stdin.isatty():
        return Secret(typer.prompt("Value", hide_input=True, confirmation_prompt=True, err=True))
    data = sys.stdin.read()
    # `echo VALUE | ndctl secrets set NAME`: the newline echo adds is not part of the value
    # (--from-file keeps a file's content exactly)
    return Secret(data[:-1] if data.endswith("\n") else data)


@app.command("set")
def set_(
    name: str = typer.Argument(..., help="NAME: letters, digits and '_' (the env var and file name)."),
    value: Optional[str] = typer.Argument(None, help="The value; omit (or '-') to read stdin or be prompted."),
    env: str = ENV,
    from_file: Optional[Path] = typer.Option(None, "--from-file", help="Read the value from this file."),
    fmt: Output = OUTPUT,
) -> None:
    """Encrypt a value to the operators and the environment's hosts, and store it (ciphertext only)."""
    rec = _secrets().set(name, _read_value(value, from_file), env=env)
    if _emit(rec.meta(), fmt):
        return
    hosts = [r.name for r in rec.recipients if r.kind == "host"]
    output.stdout.print(f"{env}/{name}: set, encrypted to {len(rec.recipients) - len(hosts)} operator(s) and "
                        f"{len(hosts)} host(s){': ' + ', '.join(hosts) if hosts else ''}", markup=False)


@app.command("get")
def get(name: str = typer.Argument(...), env: str = ENV) -> None:
    """Print the value (audited). The only command that shows one."""
    value = _secrets().get(name, env=env)
    sys.stdout.write(value.reveal())
    sys.stdout.flush()


@app.command("list")
def list_(env: Optional[str] = typer.Option(None, "--env", "-e", help="Only this environment."),
          fmt: Output = OUTPUT) -> None:
    """Names, environments, recipients and last change; never values."""
    recs = _secrets().list(env)
    if _emit([r.meta() for r in recs], fmt):
        return
    rows = []
    for r in recs:
        ops = [x.name for x in r.recipients if x.kind == "operator"]
        hosts = [x.name for x in r.recipients if x.kind == "host"]
        rows.append((r.name, r.env, ", ".join(ops), ", ".join(hosts) or "-",
                     r.rekeyed_at if r.rekeyed_at and r.rekeyed_at > r.updated_at else r.updated_at,
                     r.updated_by))
    output.table(["NAME", "ENV", "OPERATORS", "HOSTS", "CHANGED", "BY"], rows)


@app.command("remove")
def remove(name: str = typer.Argument(...), env: str = ENV,
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a secret from the local store (hosts keep their copy until the next deploy without it)."""
    s = _secrets()
    s.store.load(env, name)  # unknown: exit 5 before asking
    _confirm(yes, f"remove secret {name} of {env}")
    s.remove(name, env=env)
    output.stdout.print(f"{env}/{name}: removed", markup=False)


@app.command("rekey")
def rekey(
    name: Optional[str] = typer.Argument(None, help="Only this secret (default: all)."),
    env: Optional[str] = typer.Option(None, "--env", "-e", help="Only this environment."),
    force: bool = typer.Option(False, "--force", help="Re-encrypt even when the recipients did not change."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    fmt: Output = OUTPUT,
) -> None:
    """Re-encrypt to the current operators and environment hosts (after hosts or operators change)."""
    _confirm(yes, f"re-encrypt {name or 'every secret'}{' of ' + env if env else ''}")
    done = _secrets().rekey(env=env, name=name, force=force)
    if _emit([{**rec.meta(), "changed": changed} for rec, changed in done], fmt):
        return
    for rec, changed in done:
        output.stdout.print(f"{rec.env}/{rec.name}: {'re-encrypted' if changed else 'unchanged'} "
                            f"({len(rec.recipients)} recipients)", markup=False)
    if not done:
        output.stdout.print("no secrets", markup=False)


@app.command("audit")
def audit(
    name: Optional[str] = typer.Argument(None, help="Only this secret."),
    selector: Optional[str] = typer.Option(None, "--tags", "-t", help="Also read the audit logs of these hosts."),
    fmt: Output = OUTPUT,
) -> None:
    """Who set, read, rekeyed, removed or used which secret, on which host, when (local log + hosts)."""
    s = _secrets()
    host_recs, bad = [], []
    if selector:
        import asyncio

        from ndctl.api import Fleet
        from ndctl.ops.secrets import host_audit
        from ndctl.transport.ssh import Runner

        fleet = Fleet(s.inventory, selector=selector)

        async def main():
            async with Runner(fleet.run_options()) as runner:
                return await host_audit(runner, fleet.hosts)

        host_recs, bad = asyncio.run(main())
    recs = s.audit(name, host_records=host_recs)
    for h in bad:
        sys.stderr.write(f"warning: could not read the audit log of {h}\n")
    if not _emit([{k: v for k, v in r.__dict__.items() if v is not None} for r in recs], fmt):
        output.table(["AT", "WHO", "ACTION", "ENV", "SECRET", "HOST", "APP"],
                     [(r.at, r.who, r.action, r.env, r.secret, r.host, r.app or "") for r in recs])
    if bad:
        raise typer.Exit(4)


# --------------------------------------------------------------------------- environments
@env_app.command("set")
def env_set(name: str = typer.Argument(...), selector: str = typer.Argument(..., help="A --tags selector.")) -> None:
    """Map an environment to a host selector (then `ndctl secrets rekey --env NAME`)."""
    s = _secrets()
    s.set_environment(name, selector)
    hosts = [h.name for h in s.inventory.environment_hosts(name)]
    output.stdout.print(f"environment {name}: {selector!r} ({', '.join(hosts) or 'no host yet'})", markup=False)


@env_app.command("list")
def env_list(fmt: Output = OUTPUT) -> None:
    s = _secrets()
    data = [{"env": e, "selector": sel, "hosts": [h.name for h in s.inventory.environment_hosts(e)]}
            for e, sel in s.inventory.environments.items()]
    if not _emit(data, fmt):
        output.table(["ENV", "SELECTOR", "HOSTS"], [(d["env"], d["selector"], ", ".join(d["hosts"])) for d in data])


@env_app.command("remove")
def env_remove(name: str = typer.Argument(...)) -> None:
    s = _secrets()
    s.inventory.environment_hosts(name)  # unknown: exit 5
    if s.store.list(name):
        raise UsageError(f"environment {name} still has secrets: remove them first")
    s.set_environment(name, None)
    output.stdout.print(f"environment {name}: removed", markup=False)


# --------------------------------------------------------------------------- operators
@operator_app.command("list")
def operator_list(fmt: Output = OUTPUT) -> None:
    ops = _secrets().inventory.operators
    if not _emit([{"operator": k, "public_key": v} for k, v in ops.items()], fmt):
        output.table(["OPERATOR", "PUBLIC KEY"], ops.items())


@operator_app.command("add")
def operator_add(name: str = typer.Argument(...), key: str = typer.Argument(..., help="Their age1... key "
                                                                                     "(`ndctl secrets whoami`).")) -> None:
    """Add a teammate's public key; then `ndctl secrets rekey` encrypts existing secrets to it."""
    _secrets().set_operator(name, key)
    output.stdout.print(f"operator {name} added; run `ndctl secrets rekey` to give them the existing secrets",
                        markup=False)


@operator_app.command("remove")
def operator_remove(name: str = typer.Argument(...),
                    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Remove an operator's key; then `ndctl secrets rekey` (and rotate values they could read)."""
    _confirm(yes, f"remove operator {name}")
    _secrets().set_operator(name, None)
    output.stdout.print(f"operator {name} removed; run `ndctl secrets rekey`, and rotate the values they could "
                        "read (old ciphertext, e.g. in git history, stays readable with their key)", markup=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="secrets")
