"""Playbooks: YAML lists of named steps, each a templated action (pure; no SSH).

A playbook file is either a list of steps or a mapping::

    name: prepare                 # optional, default: the file name
    vars: {data_dir: /srv/data}   # optional defaults; ``--var K=V`` overrides them
    steps:
      - name: data directory
        action: directory         # templates/actions/directory.sh.j2
        params: {path: "{{ data_dir }}", mode: "0750"}
        when: {pkg_manager: [apt, dnf], arch: amd64}   # optional, over host facts
        timeout: 120              # optional, seconds per script

Every action renders two shell scripts from its template: CHECK (exit 0: the
host is already in the desired state; 1: it would change; anything else: an
error) and APPLY. Idempotence and ``--check`` rest on that contract: APPLY runs
only after CHECK said 1, and CHECK runs again afterwards to confirm.

Values reach the scripts only through :mod:`ndctl.core.templating`, which
shell-quotes every one. ``{{ var }}`` in a data parameter is replaced by a
variable's value *before* rendering, so it is quoted like any other value
(other ``{{...}}`` text, e.g. a ``docker --format``, stays as written; a file's
``content`` is always verbatim). It is refused inside shell code (``shell``
action ``check``/``apply``), which gets values as positional parameters
(``args``) instead.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ndctl.core.errors import UsageError
from ndctl.core.yamlio import YamlSyntaxError, load_roundtrip
from ndctl.resources import data_dir

PLAYBOOK_DIR = data_dir("playbooks")

#: Exit statuses of a CHECK script.
CHECK_OK = 0
CHECK_CHANGE = 1

#: Package managers the package action knows; ``pkg_manager`` fact values.
PACKAGE_MANAGERS = ("apt", "dnf", "apk")
_FAMILY_PM = {"debian": "apt", "rhel": "dnf", "alpine": "apk", "suse": "zypper", "arch": "pacman"}

# ---------------------------------------------------------------------------
# Value checks shared by the action parameters
# ---------------------------------------------------------------------------
_PKG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*\Z")  # never a leading '-': no option injection
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]*\$?\Z")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*\Z")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_VAR_REF_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")  # other {{...}} stays literal text


class _Invalid(Exception):
    """A parameter value problem; the loader adds file, line and step."""


def _str(v: Any, what: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise _Invalid(f"{what} must be a string, not {_type(v)}")
    return str(v)


def _str_list(v: Any, what: str, *, allow_scalar: bool = True) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [_str(x, f"{what}[{i}]") for i, x in enumerate(v)]
    if allow_scalar:
        return [_str(v, what)]
    raise _Invalid(f"{what} must be a list of strings, not {_type(v)}")


def _abs_path(v: Any, what: str) -> str:
    s = _str(v, what)
    if not s.startswith("/"):
        raise _Invalid(f"{what} must be an absolute path, not {s!r}")
    if "\0" in s:
        raise _Invalid(f"{what} must not contain NUL")
    return s


def _mode(v: Any, what: str) -> str:
    if not isinstance(v, str):
        # YAML reads 0755 as a number (493 in YAML 1.1, 755 in 1.2): never guess which.
        raise _Invalid(f"{what} must be a quoted octal string such as '0755', not {v!r}")
    if not re.fullmatch(r"0?[0-7]{3,4}", v):
        raise _Invalid(f"{what} must be an octal mode such as '0755', not {v!r}")
    return format(int(v, 8), "o")  # as `stat -c %a` prints it


def _account(v: Any, what: str) -> str:
    s = _str(v, what)
    if not _ACCOUNT_RE.match(s):
        raise _Invalid(f"{what} must be a user or group name, not {s!r}")
    return s


def _package_specs(v: Any, what: str) -> list[str]:
    """Package names; ``a|b`` installs the first available of a and b."""
    out = []
    for i, spec in enumerate(_str_list(v, what)):
        for name in spec.split("|"):
            if not _PKG_RE.match(name):
                inside = f" in {spec!r}" if "|" in spec else ""
                raise _Invalid(f"{what}[{i}]: invalid package name {name!r}{inside}")
        out.append(spec)
    return out


def _service(v: Any, what: str) -> str:
    s = _str(v, what)
    if not _SERVICE_RE.match(s):
        raise _Invalid(f"{what} must be a service name, not {s!r}")
    return s


def _argv(v: Any, what: str) -> list[str]:
    out = _str_list(v, what)
    if not out or not out[0]:
        raise _Invalid(f"{what} must name a command")
    return out


def _script(v: Any, what: str) -> str:
    s = _str(v, what)
    if not s.strip():
        raise _Invalid(f"{what} must not be empty")
    return s


def _positive(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise _Invalid(f"{what} must be a positive number of seconds, not {v!r}")
    return float(v)


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    check: Callable[[Any, str], Any]
    required: bool = False
    default: Any = None
    script: bool = False  # shell code: variables are never spliced into it
    verbatim: bool = False  # text used as is: ``{{ name }}`` in it is not a variable
    doc: str = ""


@dataclass(frozen=True)
class Action:
    """A template under ``templates/actions/`` and the parameters it takes."""

    name: str
    params: Mapping[str, Param]
    doc: str
    stdin: str | None = None  # the parameter sent on stdin instead of rendered
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # cross-parameter checks, derived values

    @property
    def template(self) -> str:
        return f"actions/{self.name}.sh.j2"


def _finish_package(p: dict[str, Any]) -> dict[str, Any]:
    if not (p.get("names") or p.get("apt") or p.get("dnf") or p.get("apk")):
        raise _Invalid("give the packages in names (every package manager) or in apt, dnf or apk")
    p["packages"] = {pm: list(p[pm] if p.get(pm) is not None else (p.get("names") or [])) for pm in PACKAGE_MANAGERS}
    return p


def _finish_owned(p: dict[str, Any]) -> dict[str, Any]:
    p["want"] = f"{p['mode']} {p['owner']} {p['group']}"  # `stat -c '%a %U %G'` of a conforming path
    return p


def _finish_service(p: dict[str, Any]) -> dict[str, Any]:
    p["process"] = p.get("process") or p["name"]
    p["log"] = f"/var/log/{p['name']}.log"
    return p


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "package",
            {
                "names": Param(_package_specs, doc="packages for every package manager"),
                "apt": Param(_package_specs, doc="packages on apt hosts (instead of names)"),
                "dnf": Param(_package_specs, doc="packages on dnf hosts (instead of names)"),
                "apk": Param(_package_specs, doc="packages on apk hosts (instead of names)"),
            },
            "install packages with apt-get, dnf or apk (detected on the host)",
            finish=_finish_package,
        ),
        Action(
            "directory",
            {
                "path": Param(lambda v, w: [_abs_path(x, f"{w}[{i}]") for i, x in enumerate(_str_list(v, w))]
                              if isinstance(v, list) else [_abs_path(v, w)], required=True,
                              doc="absolute path, or a list of them (parents first)"),
                "mode": Param(_mode, default="0755"),
                "owner": Param(_account, default="root"),
                "group": Param(_account, default="root"),
            },
            "directories with a mode and an owner",
            finish=_finish_owned,
        ),
        Action(
            "file",
            {
                "path": Param(_abs_path, required=True),
                "content": Param(_str, required=True, verbatim=True, doc="sent on stdin as is: no variables"),
                "mode": Param(_mode, default="0644"),
                "owner": Param(_account, default="root"),
                "group": Param(_account, default="root"),
            },
            "a file with exact content, mode and owner (replaced atomically)",
            stdin="content",
            finish=_finish_owned,
        ),
        Action(
            "service",
            {
                "name": Param(_service, required=True),
                "process": Param(_service, doc="process name when no init system runs (default: name)"),
                "start": Param(_argv, doc="command starting the daemon when no init system runs"),
                "ready": Param(_argv, doc="command that succeeds once the service is usable"),
                "wait": Param(_positive, default=30, doc="seconds to wait for ready"),
            },
            "a running (and enabled) service: systemd, OpenRC, or a daemon started directly",
            finish=_finish_service,
        ),
        Action(
            "shell",
            {
                "check": Param(_script, required=True, script=True,
                               doc="exit 0: nothing to do, 1: apply needed"),
                "apply": Param(_script, required=True, script=True),
                "args": Param(lambda v, w: _str_list(v, w), default=[], doc="positional parameters $1..."),
            },
            "your own check and apply scripts",
        ),
    )
}

# ---------------------------------------------------------------------------
# when: conditions over host facts
# ---------------------------------------------------------------------------
#: fact name -> allowed values (None: any string), or bool
WHEN_FACTS: dict[str, Any] = {
    "os_family": None,
    "os_id": None,
    "os_version": None,
    "arch": None,
    "pkg_manager": (*PACKAGE_MANAGERS, "zypper", "pacman", "unknown"),
    "docker_installed": bool,
    "docker_running": bool,
    "user": None,
}


@dataclass(frozen=True)
class When:
    """Every fact must equal one of its listed values; ``not`` inverts a nested condition."""

    facts: tuple[tuple[str, tuple[Any, ...]], ...]
    negated: When | None = None

    def matches(self, facts: Mapping[str, Any]) -> bool:
        ok = all(facts.get(k) in values for k, values in self.facts)
        return ok and not (self.negated is not None and self.negated.matches(facts))

    def describe(self) -> str:
        parts = [f"{k} {'=' if len(v) == 1 else 'in'} {v[0] if len(v) == 1 else list(v)}" for k, v in self.facts]
        if self.negated is not None:
            parts.append(f"not ({self.negated.describe()})")
        return " and ".join(parts)


def when_facts(facts: Any) -> dict[str, Any]:
    """The facts ``when`` can test, from :class:`ndctl.core.facts.Facts`."""
    raw = facts.raw
    family = facts.os_family
    docker = raw.get("docker") or {}
    return {
        "os_family": family,
        "os_id": facts.os_id,
        "os_version": facts.os_version_id or "",
        "arch": facts.arch,
        "pkg_manager": _FAMILY_PM.get(family, "unknown"),
        "docker_installed": bool(docker.get("installed")),
        "docker_running": bool(docker.get("running")),
        "user": raw.get("user", ""),
    }


# ---------------------------------------------------------------------------
# Playbook model
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    name: str
    action: str
    params: Mapping[str, Any]  # validated, with defaults and derived values
    when: When | None = None
    timeout: float | None = None
    line: int | None = None


@dataclass(frozen=True)
class Playbook:
    name: str
    steps: tuple[Step, ...]
    source: str = "<playbook>"
    vars: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Script:
    """One rendered script: an argv for the transport and what goes on its stdin."""

    argv: list[str]
    input: str | None = None


class StepStatus(str, Enum):
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    WOULD_CHANGE = "would_change"  # --check: CHECK said 1, APPLY not run
    FAILED = "failed"
    SKIPPED = "skipped"  # `when` did not match

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


@dataclass
class StepResult:
    step: str
    action: str
    status: StepStatus
    detail: str = ""  # what changed / would change, why skipped, why it failed
    phase: str | None = None  # failures: check, apply, verify or facts
    exit_code: int | None = None
    stderr: str = ""
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"step": self.step, "action": self.action, "status": self.status.value,
                             "detail": self.detail, "duration": round(self.duration, 4)}
        if self.status is StepStatus.FAILED:
            d.update(phase=self.phase, exit_code=self.exit_code, stderr=self.stderr)
        return d


STEP_KEYS = {"name", "action", "params", "when", "timeout"}
TOP_KEYS = {"name", "description", "vars", "steps"}


def _type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _line_of(node: Any, key: Any = None) -> int | None:
    lc = getattr(node, "lc", None)
    if lc is None:
        return None
    try:
        if isinstance(key, int) and isinstance(node, list):
            return lc.item(key)[0] + 1
        if key is not None:
            return lc.key(key)[0] + 1
        return lc.line + 1
    except Exception:  # noqa: BLE001 - positions are best effort
        return lc.line + 1


class _Loader:
    def __init__(self, source: str, variables: Mapping[str, Any]) -> None:
        self.source = source
        self.vars = dict(variables)

    def err(self, msg: str, node: Any = None, key: Any = None, step: str | None = None) -> UsageError:
        line = _line_of(node, key) if node is not None else None
        where = f"line {line}: " if line is not None else ""
        what = f"step {step!r}: " if step else ""
        return UsageError(f"{self.source}: {where}{what}{msg}")

    # ----- variables ---------------------------------------------------------
    def substitute(self, value: Any, what: str) -> Any:
        if isinstance(value, list):
            return [self.substitute(v, f"{what}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        whole = _VAR_REF_RE.fullmatch(value.strip())
        if whole and value.strip() == value:
            return self._var(whole.group(1), what)

        def repl(m: re.Match[str]) -> str:
            v = self._var(m.group(1), what)
            if isinstance(v, list):
                raise _Invalid(f"{what}: variable {m.group(1)!r} is a list and cannot be part of a string")
            return str(v)

        return _VAR_REF_RE.sub(repl, value)

    def _var(self, name: str, what: str) -> Any:
        if name not in self.vars:
            known = ", ".join(sorted(self.vars)) or "none"
            raise _Invalid(f"{what}: undefined variable {name!r} (defined: {known})")
        return self.vars[name]

    # ----- steps ----------------------------------------------------------------
    def params(self, action: Action, raw: Any, step_node: Any, step: str) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.err(f"params must be a mapping, not {_type(raw)}", step_node, "params", step)
        out: dict[str, Any] = {}
        for k in raw:
            if k not in action.params:
                known = ", ".join(action.params)
                raise self.err(f"unknown parameter {k!r} of action {action.name!r} (known: {known})", raw, k, step)
        for pname, spec in action.params.items():
            what = f"params.{pname}"
            if pname not in raw or raw[pname] is None:
                if spec.required:
                    raise self.err(f"missing parameter {pname!r} of action {action.name!r}", step_node, "params"
                                   if "params" in step_node else None, step)
                if spec.default is not None:
                    out[pname] = spec.check(spec.default, what)
                continue
            value = _plain(raw[pname])
            try:
                if spec.verbatim:
                    pass
                elif spec.script:
                    if isinstance(value, str) and _VAR_REF_RE.search(value):
                        raise _Invalid(f"{what} is shell code: variables are never spliced into it; "
                                       "pass them with args and use \"$1\", \"$2\" ...")
                else:
                    value = self.substitute(value, what)
                out[pname] = spec.check(value, what)
            except _Invalid as e:
                raise self.err(str(e), raw, pname, step) from None
        if action.finish is not None:
            try:
                out = action.finish(out)
            except _Invalid as e:
                raise self.err(str(e), step_node, "params" if "params" in step_node else None, step) from None
        return out

    def when(self, raw: Any, node: Any, key: Any, step: str) -> When:
        if not isinstance(raw, dict) or not raw:
            raise self.err(f"when must be a non-empty mapping of fact to value(s), not {_type(raw)}", node, key, step)
        facts = []
        negated = None
        for k, v in raw.items():
            if k == "not":
                negated = self.when(v, raw, k, step)
                continue
            if k not in WHEN_FACTS:
                known = ", ".join(sorted(WHEN_FACTS)) + ", not"
                raise self.err(f"when: unknown fact {k!r} (known: {known})", raw, k, step)
            values = _plain(v) if isinstance(v, list) else [_plain(v)]
            if not values:
                raise self.err(f"when.{k}: empty list of values", raw, k, step)
            allowed = WHEN_FACTS[k]
            for x in values:
                if allowed is bool:
                    if not isinstance(x, bool):
                        raise self.err(f"when.{k} must be true or false, not {x!r}", raw, k, step)
                elif isinstance(x, bool) or not isinstance(x, (str, int, float)):
                    raise self.err(f"when.{k} must be a string or a list of strings, not {_type(x)}", raw, k, step)
                elif allowed is not None and str(x) not in allowed:
                    raise self.err(f"when.{k}: unknown value {x!r} (known: {', '.join(allowed)})", raw, k, step)
            facts.append((k, tuple(x if isinstance(x, bool) else str(x) for x in values)))
        return When(tuple(facts), negated)

    def step(self, raw: Any, steps: Any, i: int, seen: set[str]) -> Step:
        if not isinstance(raw, dict):
            raise self.err(f"step {i + 1} must be a mapping with name and action, not {_type(raw)}", steps, i)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.err(f"step {i + 1} has no name (every step needs a unique name)", steps, i)
        name = str(name)
        if name in seen:
            raise self.err(f"duplicate step name {name!r}", raw, "name")
        seen.add(name)
        for k in raw:
            if k not in STEP_KEYS:
                raise self.err(f"unknown key {k!r} (known: {', '.join(sorted(STEP_KEYS))})", raw, k, name)
        action_name = raw.get("action")
        if action_name is None:
            raise self.err("missing action", raw, "name", name)
        if action_name not in ACTIONS:
            raise self.err(f"unknown action {action_name!r} (known: {', '.join(sorted(ACTIONS))})",
                           raw, "action", name)
        action = ACTIONS[action_name]
        params = self.params(action, raw.get("params"), raw, name)
        when = self.when(raw["when"], raw, "when", name) if raw.get("when") is not None else None
        timeout = None
        if raw.get("timeout") is not None:
            try:
                timeout = _positive(raw["timeout"], "timeout")
            except _Invalid as e:
                raise self.err(str(e), raw, "timeout", name) from None
        return Step(name, action_name, params, when, timeout, _line_of(steps, i))


def _plain(v: Any) -> Any:
    """ruamel's round-trip types -> plain Python (str, int, float, bool, list, dict)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def parse_vars(pairs: Iterable[str]) -> dict[str, str]:
    """``["K=V", ...]`` from ``--var`` -> a mapping; names are identifiers."""
    out: dict[str, str] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not _VAR_NAME_RE.match(k):
            raise UsageError(f"--var {p!r}: expected NAME=VALUE with NAME made of letters, digits and _")
        out[k] = v
    return out


def parse_playbook(text: str, source: str = "<playbook>", *, variables: Mapping[str, str] | None = None) -> Playbook:
    """Parse and validate a playbook; any problem is a UsageError naming the line and field."""
    try:
        doc = load_roundtrip(text)
    except YamlSyntaxError as e:
        where = f"line {e.line}, column {e.column}: " if e.line else ""
        raise UsageError(f"{source}: invalid YAML: {where}{e.problem}") from None
    default_name = Path(source).stem if source != "<playbook>" else "playbook"
    loader = _Loader(source, {})
    if isinstance(doc, list):
        top: Any = {}
        steps = doc
        steps_node, steps_key = None, None
    elif isinstance(doc, dict):
        top = doc
        for k in doc:
            if k not in TOP_KEYS:
                raise loader.err(f"unknown top-level key {k!r} (known: {', '.join(sorted(TOP_KEYS))})", doc, k)
        steps = doc.get("steps")
        steps_node, steps_key = doc, "steps"
        if not isinstance(steps, list):
            raise loader.err(f"steps must be a list of steps, not {_type(steps)}", doc,
                             "steps" if "steps" in doc else None)
    else:
        raise UsageError(f"{source}: a playbook is a list of steps (or a mapping with steps:), not {_type(doc)}")
    if not steps:
        raise loader.err("the playbook has no steps", steps_node, steps_key)
    declared = top.get("vars") or {}
    if not isinstance(declared, dict):
        raise loader.err(f"vars must be a mapping, not {_type(declared)}", top, "vars")
    values: dict[str, Any] = {}
    for k, v in declared.items():
        if not isinstance(k, str) or not _VAR_NAME_RE.match(k):
            raise loader.err(f"invalid variable name {k!r}", declared, k)
        v = _plain(v)
        if not (isinstance(v, (str, int, float)) and not isinstance(v, bool)) and not (
                isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise loader.err(f"vars.{k} must be a string, a number or a list of strings", declared, k)
        values[k] = v if isinstance(v, list) else str(v)
    for k, v in (variables or {}).items():
        if k not in values:
            known = ", ".join(sorted(values)) or "none"
            raise UsageError(f"--var {k}: {source} declares no variable {k!r} (declared: {known})")
        values[k] = v
    loader.vars = values
    seen: set[str] = set()
    parsed = tuple(loader.step(s, steps, i, seen) for i, s in enumerate(steps))
    name = top.get("name", default_name)
    return Playbook(str(name), parsed, source, values)


def load_playbook(path: str | Path, *, variables: Mapping[str, str] | None = None) -> Playbook:
    """A playbook file, or the name of a built-in one (``prepare`` -> ``playbooks/prepare.yaml``)."""
    p = Path(path).expanduser()
    if not p.exists() and re.fullmatch(r"[A-Za-z0-9_-]+", str(path)):
        builtin = PLAYBOOK_DIR / f"{path}.yaml"
        if builtin.exists():
            p = builtin
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"playbook {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read playbook {p}: {getattr(e, 'strerror', None) or e}") from None
    return parse_playbook(text, str(p), variables=variables)


def render_step(step: Step, phase: str, *, pkg_manager: str | None = None) -> Script:
    """The CHECK or APPLY script of a step (``phase``: ``check`` / ``apply``).

    ``pkg_manager`` pins the package manager when facts are known; without it
    the script detects apt-get, dnf or apk itself (so python3 can be installed
    on a host where the facts helper cannot run yet).
    """
    from ndctl.core.templating import environment

    if phase not in ("check", "apply"):
        raise ValueError(f"phase must be check or apply, not {phase!r}")
    if pkg_manager is not None and pkg_manager not in PACKAGE_MANAGERS:
        pkg_manager = None
    action = ACTIONS[step.action]
    values = {k: None for k in action.params}  # optional parameters left out are None, not undefined
    values.update(step.params)
    values.pop(action.stdin or "", None)
    values.update(phase=phase, pkg_manager=pkg_manager or "")
    script = environment().get_template(action.template).render(values)
    stdin = step.params.get(action.stdin) if action.stdin else None
    return Script(["sh", "-c", script, f"nd-{step.action}"], stdin)


def builtin_playbook(name: str) -> Path:
    return PLAYBOOK_DIR / f"{name}.yaml"


__all__ = [
    "ACTIONS",
    "CHECK_CHANGE",
    "CHECK_OK",
    "PACKAGE_MANAGERS",
    "WHEN_FACTS",
    "Action",
    "Param",
    "Playbook",
    "Script",
    "Step",
    "StepResult",
    "StepStatus",
    "When",
    "builtin_playbook",
    "load_playbook",
    "parse_playbook",
    "parse_vars",
    "render_step",
    "when_facts",
]
