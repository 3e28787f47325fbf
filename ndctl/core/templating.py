"""Jinja2 rendering of shell templates that never emits an unquoted value.

Every ``{{ expression }}`` is passed through ``shlex.quote`` by the
environment's ``finalize`` hook, so a value containing quotes, ``;``,
``$(...)`` or newlines is always one shell word. Template authors opt out only
for text they wrote themselves, with ``{{ x | trusted }}``.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import jinja2

from ndctl.resources import data_dir

TEMPLATE_DIRS = [data_dir("templates")]


class _Trusted(str):
    """Text the template author vouches for (constants, already-built command lines)."""


def _finalize(value: Any) -> str:
    if isinstance(value, _Trusted):
        return str(value)
    if value is None:
        raise jinja2.UndefinedError("a template value is None")
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def _trusted(value: Any) -> _Trusted:
    return _Trusted(str(value))


def environment(search_path: list[Path] | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in (search_path or TEMPLATE_DIRS)]),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["trusted"] = _trusted
    env.filters["q"] = lambda v: _Trusted(shlex.quote(str(v)))
    return env


def render_string(source: str, **values: Any) -> str:
    """Render template text; every expression value comes out shell-quoted."""
    return environment().from_string(source).render(**values)


def render(name: str, **values: Any) -> str:
    return environment().get_template(name).render(**values)


def script_argv(source: str, **values: Any) -> list[str]:
    """A rendered template as an argv for the transport: ``sh -c SCRIPT``."""
    return ["sh", "-c", render_string(source, **values)]


__all__ = ["render", "render_string", "script_argv", "environment"]
