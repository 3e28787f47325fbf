"""``?``: every key of the app, generated from the BINDINGS of the app and of every screen."""
from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc"}


def _bindings(items: Iterable[BindingType]) -> list[Binding]:
    out = []
    for b in items:
        if isinstance(b, Binding):
            out.append(b)
        else:
            key, action, *rest = b
            out.append(Binding(key, action, rest[0] if rest else ""))
    return out


def key_rows(sections: list[tuple[str, type, Iterable[BindingType]]], readonly: bool = False) -> list[tuple[str, str, str]]:
    """(where, keys, what) for every binding of every section; mutating ones marked in read-only mode."""
    rows = []
    for where, owner, bindings in sections:
        mutating = getattr(owner, "MUTATING", frozenset())
        for b in _bindings(bindings):
            what = b.description or b.action
            if readonly and b.action in mutating:
                what += " (disabled: read-only)"
            keys = b.key_display or ", ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in b.key.split(","))
            rows.append((where, keys, what))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close help")]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="help"):
            yield Label(Text("Keys", style="bold"))
            table: DataTable = DataTable(id="help-table", cursor_type="row", zebra_stripes=True)
            table.add_columns("WHERE", "KEY", "ACTION")
            for row in self.rows:
                table.add_row(*row)
            yield table

    def action_close(self) -> None:
        self.dismiss(None)
