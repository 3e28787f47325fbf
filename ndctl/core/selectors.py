"""The host selector language used behind every ``--tags`` option.

Grammar (whitespace is ignored; lowest precedence first)::

    expr   := term ( '|' term )*          union
    term   := factor ( (',' | '&') factor )*   intersection
    factor := '!' factor | '(' expr ')' | atom
    atom   := 'name:' GLOB | 'id:' GLOB | 'tag:' GLOB | '*' | 'all' | GLOB

A bare word is a tag (shell-style globs allowed: ``us-*``); ``name:web-*``
matches host names and ``id:3fa9*`` ids. ``*`` or ``all`` selects every host.

Examples: ``production,web`` (both tags), ``web|db`` (either),
``production,!db`` (production but not db), ``name:prod-web-*``,
``(web|api),us-east``.

A hand-written recursive-descent parser: the grammar is ten lines and a
parser library (lark, pyparsing) would be a dependency for no gain.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, TypeVar

from ndctl.core.errors import NoHostsMatched, SelectorError

_TOKEN = re.compile(r"\s*(?:(?P<op>[,&|!()])|(?P<word>[^\s,&|!()]+))")
_KINDS = ("name", "id", "tag")


class Selectable(Protocol):
    name: str
    id: str

    @property
    def all_tags(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Atom:
    kind: str  # name | id | tag | all
    pattern: str

    def matches(self, host: Selectable) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "name":
            return fnmatch.fnmatchcase(host.name, self.pattern)
        if self.kind == "id":
            return fnmatch.fnmatchcase(host.id, self.pattern)
        return any(fnmatch.fnmatchcase(t, self.pattern) for t in host.all_tags)

    def __str__(self) -> str:
        return "*" if self.kind == "all" else (self.pattern if self.kind == "tag" else f"{self.kind}:{self.pattern}")


@dataclass(frozen=True)
class Not:
    inner: "Node"

    def matches(self, host: Selectable) -> bool:
        return not self.inner.matches(host)

    def __str__(self) -> str:
        return f"!{self.inner}"


@dataclass(frozen=True)
class And:
    parts: tuple["Node", ...]

    def matches(self, host: Selectable) -> bool:
        return all(p.matches(host) for p in self.parts)

    def __str__(self) -> str:
        return "(" + ",".join(map(str, self.parts)) + ")"


@dataclass(frozen=True)
class Or:
    parts: tuple["Node", ...]

    def matches(self, host: Selectable) -> bool:
        return any(p.matches(host) for p in self.parts)

    def __str__(self) -> str:
        return "(" + "|".join(map(str, self.parts)) + ")"


Node = Atom | Not | And | Or


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                raise SelectorError(f"selector {text!r}: unexpected character at position {pos + 1}")
            if m.group("op"):
                self.tokens.append(("op", m.group("op"), m.start("op")))
            elif m.group("word"):
                self.tokens.append(("word", m.group("word"), m.start("word")))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def error(self, what: str) -> SelectorError:
        tok = self.peek()
        where = f"at position {tok[2] + 1} ({tok[1]!r})" if tok else "at the end"
        return SelectorError(f"selector {self.text!r}: {what} {where}")

    def parse(self) -> Node:
        if not self.tokens:
            raise SelectorError("empty selector (use '*' to select every host)")
        node = self.expr()
        if self.peek() is not None:
            raise self.error("unexpected token")
        return node

    def expr(self) -> Node:
        parts = [self.term()]
        while (tok := self.peek()) and tok[:2] == ("op", "|"):
            self.i += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self) -> Node:
        parts = [self.factor()]
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in ",&":
            self.i += 1
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def factor(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a tag, name:GLOB, '!' or '('")
        kind, val, _ = tok
        if kind == "op" and val == "!":
            self.i += 1
            return Not(self.factor())
        if kind == "op" and val == "(":
            self.i += 1
            node = self.expr()
            close = self.peek()
            if close is None or close[:2] != ("op", ")"):
                raise self.error("expected ')'")
            self.i += 1
            return node
        if kind == "word":
            self.i += 1
            return _atom(val, self.text)
        raise self.error("expected a tag, name:GLOB, '!' or '('")


def _atom(word: str, text: str) -> Atom:
    if word in ("*", "all"):
        return Atom("all", "*")
    if ":" in word:
        kind, _, pattern = word.partition(":")
        if kind not in _KINDS:
            raise SelectorError(
                f"selector {text!r}: unknown prefix {kind + ':'!r} (use one of name:, id:, tag:)"
            )
        if not pattern:
            raise SelectorError(f"selector {text!r}: {kind}: needs a pattern")
        return Atom(kind, pattern)
    return Atom("tag", word)


def parse_selector(text: str) -> Node:
    """Parse a selector; raises SelectorError naming the position of the problem."""
    return _Parser(text).parse()


H = TypeVar("H", bound=Selectable)


def select(hosts: Iterable[H], selector: str | None) -> list[H]:
    """Hosts matching ``selector`` (None or '' means every host), in input order.

    Raises NoHostsMatched when nothing matches: a bulk action that silently
    does nothing is worse than an error.
    """
    hosts = list(hosts)
    if selector is None or selector.strip() == "":
        chosen = hosts
    else:
        node = parse_selector(selector)
        chosen = [h for h in hosts if node.matches(h)]
    if not chosen:
        raise NoHostsMatched(selector or "*")
    return chosen
