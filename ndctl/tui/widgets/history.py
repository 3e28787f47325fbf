"""A labelled sparkline of a metric's recent samples (CPU %, memory %)."""
from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline


class MetricHistory(Vertical):
    DEFAULT_CSS = """
    MetricHistory { height: 3; }
    MetricHistory Sparkline { height: 2; }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title

    def compose(self) -> ComposeResult:
        yield Label(f"{self.title}: -", classes="metric-label")
        yield Sparkline([], summary_function=max)

    def show(self, values: Sequence[float]) -> None:
        label = self.query_one(Label)
        if values:
            label.update(f"{self.title}: {values[-1]:.1f}% (max {max(values):.1f}%, {len(values)} samples)")
        else:
            label.update(f"{self.title}: no samples")
        self.query_one(Sparkline).data = list(values)
