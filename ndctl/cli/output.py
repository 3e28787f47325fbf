"""Rendering (table / wide / json / yaml) and the one place errors become exit statuses."""
from __future__ import annotations

import json
import sys
import time
from enum import Enum
from typing import Any, Iterable, Sequence


from ndctl.core.errors import ExitStatus, NdctlError
from ndctl.core.results import GroupResult, Status

_consoles: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``output.stdout`` / ``output.stderr``: rich Consoles, created on first use so that
    commands printing plain text or JSON never pay for importing rich."""
    if name not in ("stdout", "stderr"):
        raise AttributeError(name)
    if name not in _consoles:
        from rich.console import Console

        if name == "stdout":
            # Piped output is for scripts and grep: never truncate or wrap table cells there.
            _consoles[name] = Console(highlight=False, soft_wrap=True,
                                      width=None if sys.stdout.isatty() else 100_000)
        else:
            _consoles[name] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _consoles[name]


class Output(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


def emit_data(data: Any, fmt: Output) -> None:
    if fmt is Output.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich.table import Table

    t = Table(*columns, title=title, box=None, pad_edge=False, header_style="bold", expand=False)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    __getattr__("stdout").print(t)


def progress_enabled() -> bool:
    """Progress goes to stderr, and only to a terminal: scripts and cron get clean output."""
    return sys.stderr.isatty()


def status(message: str):
    """A spinner on stderr when it is a terminal, otherwise nothing."""
    import contextlib

    if progress_enabled():
        return __getattr__("stderr").status(message)
    return contextlib.nullcontext()


def error(e: NdctlError) -> None:
    sys.stderr.write(f"error: {e.message}\n")
    if e.hint:
        sys.stderr.write(f"hint: {e.hint}\n")


def summary(result: GroupResult) -> None:
    c = result.counts()
    parts = [f"{c['ok']} ok", f"{c['failed']} failed", f"{c['unreachable']} unreachable"]
    sys.stderr.write(f"{len(result)} hosts: " + ", ".join(parts) + "\n")
    for r in result:
        if r.status is Status.UNREACHABLE:
            sys.stderr.write(f"  {r.host}: unreachable: {r.error}\n")
        elif r.status is Status.FAILED:
            why = r.error or f"exit status {r.exit_code}"
            sys.stderr.write(f"  {r.host}: failed: {why}\n")


def exit_status_for(result: GroupResult) -> ExitStatus:
    return result.exit_status()


def ago(epoch: float | None) -> str:
    if not epoch:
        return "never"
    d = max(0, time.time() - epoch)
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= secs:
            return f"{int(d // secs)}{unit} ago"
    return f"{int(d)}s ago"


def gib(n: int | float | None) -> str:
    return "" if n is None else f"{n / 2**30:.1f}G"
