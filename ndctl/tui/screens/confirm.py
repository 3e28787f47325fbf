"""Modal dialogs: confirm a plan (shows exactly what will run where), ask for a value, show results."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from ndctl.core.results import GroupResult
from ndctl.tui.backend import Plan, failure_reason


class ConfirmScreen(ModalScreen[bool]):
    """Shows the plan's lines verbatim; dismisses True only on an explicit confirm."""

    BINDINGS = [Binding("y", "confirm", "Confirm"), Binding("n,escape", "cancel", "Cancel")]

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(Text(self.plan.title, style="bold"), id="confirm-title")
            yield Label("This will run exactly:" if self.plan.commands else "This will do:")
            with VerticalScroll(id="confirm-lines"):
                for line in self.plan.lines:
                    yield Static(Text(line), classes="plan-line")
            with Horizontal(classes="buttons"):
                yield Button("Confirm (y)", variant="error", id="confirm")
                yield Button("Cancel (n)", variant="primary", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class PromptScreen(ModalScreen["str | None"]):
    """One line of input; None when cancelled or empty."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, placeholder: str = "") -> None:
        super().__init__()
        self.question, self.placeholder = question, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            yield Input(placeholder=self.placeholder, id="prompt-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ResultScreen(ModalScreen[None]):
    """Per-host outcome of an action."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, result: GroupResult) -> None:
        super().__init__()
        self.title_text, self.result = title, result

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(f"{self.title_text}: {self.result.summary_line()}", style="bold"))
            with VerticalScroll(id="result-lines"):
                for r in self.result:
                    if r.ok:
                        out = r.stdout.strip().splitlines()
                        yield Static(Text(f"{r.host}: ok" + (f"  {out[-1]}" if out else ""), style="green"))
                    else:
                        yield Static(Text(f"{r.host}: {r.status.value}: {failure_reason(r)}", style="red"))
            yield Button("Close", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
