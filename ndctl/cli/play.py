"""``ndctl play PLAYBOOK`` and ``ndctl agent prepare``: idempotent host preparation."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from ndctl.cli import output
from ndctl.cli.output import Output

SELECTOR = typer.Option(None, "--tags", "-t", help="Host selector (default: every host).")
CHECK = typer.Option(False, "--check", help="Only report what would change; change nothing.")
OUTPUT = typer.Option(Output.table, "--output", "-o", help="table, json or yaml.")
FORKS = typer.Option(None, "--forks", "-f", min=1, help="Hosts at once (default: settings.forks, 100).")


def _play(playbook_ref: str, *, selector: Optional[str], check: bool, fmt: Output, forks: Optional[int],
          variables: List[str]) -> None:
    import asyncio

    from ndctl.api import Fleet
    from ndctl.cli.main import state
    from ndctl.core.errors import NoHostsMatched
    from ndctl.core.playbook import load_playbook, parse_vars
    from ndctl.ops.play import run_playbook

    # Every usage problem (bad playbook, bad --var, bad selector) before any connection.
    pb = load_playbook(playbook_ref, variables=parse_vars(variables))
    fleet = Fleet(state.inventory, selector=selector, forks=forks)
    if len(fleet) == 0:
        raise NoHostsMatched(selector or "*")

    async def main():
        async with fleet.session() as s:
            return await run_playbook(s.runner, fleet.hosts, pb, check=check, forks=forks,
                                      helper_dir=fleet.inventory.settings.helper_dir)

    verb = "checking" if check else "running"
    with output.status(f"{verb} {pb.name} ({len(pb.steps)} steps) on {len(fleet)} host(s)"):
        result = asyncio.run(main())
    render(result, pb.name, check=check, fmt=fmt)
    if not result.ok:
        raise typer.Exit(int(result.exit_status()))


def render(result, name: str, *, check: bool, fmt: Output) -> None:
    """The step table (or JSON/YAML) on stdout, then one recap line."""
    from ndctl.core.playbook import StepStatus
    from ndctl.ops.play import step_counts

    counts = step_counts(result)
    changes = counts["changed"] + counts["would_change"]
    if fmt in (Output.json, Output.yaml):
        hosts = []
        for r in result:
            d = {"host": r.host, "status": r.status.value, "steps": [s.to_dict() for s in r.value or []]}
            if r.error:
                d["error"] = r.error
            hosts.append(d)
        output.emit_data({"playbook": name, "check": check, "changed": changes > 0,
                          "summary": {**result.counts(), "steps": counts}, "hosts": hosts}, fmt)
    else:
        rows = []
        for r in result:
            for s in r.value or []:
                detail = s.detail
                rows.append([r.host, s.step, s.status.label, detail])
            if r.status.value == "unreachable" and not r.value:
                rows.append([r.host, "", "unreachable", r.error or ""])
        output.table(["HOST", "STEP", "RESULT", "DETAIL"], rows)
        for r in result:
            for s in r.value or []:
                if s.status is StepStatus.FAILED and s.stderr.strip():
                    sys.stderr.write(f"--- {r.host}: step {s.step!r} failed ({s.phase}, exit {s.exit_code}); "
                                     f"last lines of stderr:\n{s.stderr.rstrip()}\n")
        parts = [f"{counts['would_change']} would change" if check else f"{counts['changed']} changed",
                 f"{counts['unchanged']} unchanged", f"{counts['skipped']} skipped", f"{counts['failed']} failed"]
        recap = f"{name}: {len(result)} host(s), steps: " + ", ".join(parts)
        if result.ok and changes == 0:
            recap += " - no changes"
        sys.stdout.write(recap + "\n")
        sys.stdout.flush()
        output.summary(result)


def register(app: typer.Typer) -> None:
    from ndctl.cli.agent import app as agent_app

    @app.command("play")
    def play(
        playbook: str = typer.Argument(..., help="Playbook file, or the name of a built-in one (prepare)."),
        selector: Optional[str] = SELECTOR,
        check: bool = CHECK,
        fmt: Output = OUTPUT,
        forks: Optional[int] = FORKS,
        var: List[str] = typer.Option([], "--var", "-e", help="Set a playbook variable: NAME=VALUE (repeatable)."),
    ) -> None:
        """Run a playbook's steps on the selected hosts; each step changes a host only when its check says so.

        Exit statuses: 0 every host ok, 2 invalid playbook or arguments, 3 a step
        failed on some host (that host stopped there), 4 some host unreachable,
        5 the selector matched no host.
        """
        _play(playbook, selector=selector, check=check, fmt=fmt, forks=forks, variables=var)

    @agent_app.command("prepare")
    def prepare(
        selector: Optional[str] = SELECTOR,
        check: bool = CHECK,
        fmt: Output = OUTPUT,
        forks: Optional[int] = FORKS,
    ) -> None:
        """Install what hosts need (Docker engine, age, ndctl's directories); idempotent.

        Runs playbooks/prepare.yaml (same as `ndctl play prepare`).
        """
        from ndctl.core.playbook import builtin_playbook

        _play(str(builtin_playbook("prepare")), selector=selector, check=check, fmt=fmt, forks=forks, variables=[])
