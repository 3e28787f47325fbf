"""Round-trip YAML loading (ruamel keeps the line and column of every node) with one kind of
syntax error, which each file's loader words in its own terms."""
from __future__ import annotations

from typing import Any


class YamlSyntaxError(Exception):
    """Text that is not YAML: ``problem``, and where (1-based; None when the parser gave no mark).
    ``marked``: the parser's error was one that carries a position (even if it had none)."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None, *,
                 marked: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.line, self.column, self.marked = problem, line, column, marked


def load_roundtrip(text: str, yaml: Any = None) -> Any:
    """``text`` parsed by ``yaml`` (default: a fresh round-trip loader); YamlSyntaxError if it is not YAML."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return (yaml or YAML(typ="rt")).load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise YamlSyntaxError(str(e.problem or e.context), *((mark.line + 1, mark.column + 1) if mark else ()),
                              marked=True) from None
    except YAMLError as e:
        raise YamlSyntaxError(str(e)) from None
