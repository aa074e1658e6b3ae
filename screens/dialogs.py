"""The console's dialogs. Each is a ModalScreen, so nothing behind it reacts to keys, and
each starts with focus on Cancel: a reflexive Enter at 3 a.m. never confirms anything.

| Dialog | Result |
| :- | :- |
| `GateScreen` | True confirmed, False refused (the run aborts), None later (the run stops, resumable) |
| `ConfirmScreen` | True to go ahead (abort a run, quit during one) |
| `NoteScreen` | the operator's note, or None |
| `ChooseNodeScreen` | the down node to recover, `ALL_DOWN` for all of them, or None |
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Input, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from kconsole.gates import GateRequest
from screens.widgets import TickBox


class GateScreen(ModalScreen[bool | None]):
    """A run's gate: plain confirm, typed confirm, checklist with a note, or re-run.

    | Key | Action |
    | :- | :- |
    | `y` | confirm (not for typed gates: type the value, then Enter) |
    | `l` | later: stop the run here, resumable from Runs |
    | `s` | skip the step (a drill's gates only; recorded, later steps still run) |
    | `escape` | cancel: refuse the gate; the run aborts |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "y",
            "confirm",
            "Confirm",
            id="gate-confirm",
            tooltip="Confirm the gate: the step goes ahead.",
        ),
        Binding(
            "l",
            "later",
            "Later",
            id="gate-later",
            tooltip="Stop the run at this gate; re-attach from Runs to answer it.",
        ),
        Binding(
            "s",
            "skip",
            "Skip",
            id="gate-skip",
            tooltip="A drill's gate: skip this step (recorded in the journal and the report).",
        ),
        Binding(
            "escape",
            "cancel",
            "Cancel",
            id="gate-cancel",
            tooltip="Refuse the gate: the step does not run and the run aborts.",
        ),
    ]
    AUTO_FOCUS = "#cancel"
    CSS_PATH = "dialogs.tcss"

    def __init__(self, request: GateRequest) -> None:
        super().__init__(classes="-destructive" if request.destructive else "")
        self.request = request
        """What the executor asks."""

    def compose(self) -> ComposeResult:
        """Question, guide, the input the gate kind needs, and the three answers."""
        request = self.request
        kind = {
            "type": "typed confirm",
            "checklist": "checklist",
            "rerun": "re-run?",
            "confirm": "confirm",
        }
        badge = " · DESTRUCTIVE" if request.destructive else ""
        with Vertical(id="dialog"):
            yield Static(f"GATE ({kind[request.kind]}){badge} · {request.step_id}", id="gate-title")
            yield Static(request.question(), id="question")
            if request.approval_line():
                yield Static(f"Two-person gate: {request.approval_line()}.", id="approvals")
            if request.guide:
                with VerticalScroll(id="gate-guide"):
                    yield Markdown(request.guide)
            if request.kind == "type":
                yield Input(
                    placeholder=f"type {request.expected} to confirm",
                    id="typed",
                    select_on_focus=False,
                )
            if request.kind == "checklist":
                for i, item in enumerate(request.checklist):
                    yield TickBox(item, id=f"check-{i}")
                yield Input(placeholder="note for the journal (optional)", id="note")
            yield Static("", id="gate-error")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Later", id="later")
                if request.skippable:
                    yield Button("Skip", id="skip")
                yield Button(
                    "Confirm", id="confirm", variant="error" if request.destructive else "primary"
                )
        yield Footer(compact=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Letter keys are off for a typed gate: every letter goes into the typed value."""
        if action == "skip" and not self.request.skippable:
            return False
        return not (self.request.kind == "type" and action in ("confirm", "later", "skip"))

    def on_key(self, event: Key) -> None:
        """In a typed gate, typing anywhere types into the value (focus stays safe on Cancel)."""
        if (
            self.request.kind != "type"
            or not event.is_printable
            or not (event.character or "").strip()
        ):
            return  # space still presses the focused button
        typed = self.query_one("#typed", Input)
        if self.focused is not typed:
            typed.focus()
            typed.insert_text_at_cursor(event.character or "")
            event.stop()
            event.prevent_default()

    @on(Input.Changed, "#typed")
    def _typed_changed(self, event: Input.Changed) -> None:
        self.query_one("#gate-error", Static).update("")

    @on(Input.Submitted, "#typed")
    def _typed_submitted(self, event: Input.Submitted) -> None:
        self.action_confirm()

    @on(Input.Submitted, "#note")
    def _note_submitted(self, event: Input.Submitted) -> None:
        self.action_confirm()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        {
            "cancel": self.action_cancel,
            "later": self.action_later,
            "confirm": self.action_confirm,
            "skip": self.action_skip,
        }[event.button.id or "cancel"]()

    def action_confirm(self) -> None:
        """Confirm, if what the gate asks for is there: the typed value, every box ticked."""
        request = self.request
        if request.kind == "type":
            typed = self.query_one("#typed", Input).value
            if not request.accepts(typed):
                self._say(f"“{typed}” does not match: type {request.expected} exactly, or Cancel.")
                return
        if request.kind == "checklist":
            unticked = [c for c in self.query(Checkbox) if not c.value]
            if unticked:
                self._say(
                    f"{len(unticked)} item(s) not ticked: tick each with space once it is done."
                )
                return
            request.note = self.query_one("#note", Input).value.strip()
        self.dismiss(True)

    def action_skip(self) -> None:
        """A drill's gate: skip the step; the executor records it and carries on."""
        if self.request.skippable:
            self.request.skipped = True
            self.dismiss(True)

    def action_cancel(self) -> None:
        """Refuse the gate."""
        self.dismiss(False)

    def action_later(self) -> None:
        """Leave the gate unanswered: the run stops here, resumable."""
        self.dismiss(None)

    def _say(self, text: str) -> None:
        self.query_one("#gate-error", Static).update(text)
        self.app.bell()


class ConfirmScreen(ModalScreen[bool]):
    """Are you sure? For aborting a run and quitting during one.

    | Key | Action |
    | :- | :- |
    | `y` | go ahead |
    | `escape` | cancel |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Yes", id="confirm-yes"),
        Binding("escape", "cancel", "Cancel", id="confirm-cancel"),
    ]
    AUTO_FOCUS = "#cancel"
    CSS_PATH = "dialogs.tcss"

    def __init__(self, title: str, body: str, confirm_label: str = "Yes") -> None:
        super().__init__(classes="-destructive")
        self.title_text = title
        """The question."""
        self.body = body
        """What happens if the operator says yes."""
        self.confirm_label = confirm_label
        """The label of the go-ahead button."""

    def compose(self) -> ComposeResult:
        """Question, consequences, Cancel and go-ahead buttons."""
        with Vertical(id="dialog"):
            yield Static(self.title_text, id="gate-title")
            yield Static(self.body, id="question")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="error")
        yield Footer(compact=True)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        """Go ahead."""
        self.dismiss(True)

    def action_cancel(self) -> None:
        """Do nothing."""
        self.dismiss(False)


class NoteScreen(ModalScreen[str | None]):
    """An operator note for the run's journal.

    | Key | Action |
    | :- | :- |
    | `enter` | save the note |
    | `escape` | cancel |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="note-cancel"),
    ]
    CSS_PATH = "dialogs.tcss"

    def compose(self) -> ComposeResult:
        """A one-line input."""
        with Vertical(id="dialog"):
            yield Static(
                "Note for the run's journal (Enter saves, Escape cancels)", id="gate-title"
            )
            yield Input(placeholder="what you did, saw or decided", id="note")
        yield Footer(compact=True)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        """No note."""
        self.dismiss(None)


ALL_DOWN = "*"
"""ChooseNodeScreen's answer for "every down node" (no node can be called `*`)."""


class ChooseNodeScreen(ModalScreen[str | None]):
    """Several nodes are down: which one to recover (or all of them). No node is chosen
    until the operator picks one; the list starts on the first down node, never on a
    healthy one, and Escape chooses nothing.

    | Key | Action |
    | :- | :- |
    | `enter` | recover the highlighted choice |
    | `escape` | cancel |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="choose-node-cancel"),
    ]
    CSS_PATH = "dialogs.tcss"

    def __init__(self, down: list[str], states: dict[str, str] | None = None) -> None:
        super().__init__()
        self.down = down
        """The down nodes, in the order the console ranks them (validators first)."""
        self.states = states or {}
        """What the last poll said of each (inactive, unreachable...)."""

    def compose(self) -> ComposeResult:
        """The question and one line per down node, then all of them."""
        with Vertical(id="dialog"):
            yield Static(f"{len(self.down)} nodes are down: which to recover?", id="gate-title")
            yield OptionList(
                *(
                    Option(f"{name} ({self.states.get(name, 'down')})", id=name)
                    for name in self.down
                ),
                Option(f"all {len(self.down)} down nodes", id=ALL_DOWN),
                id="choose-node",
            )
        yield Footer(compact=True)

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        """Recover nothing."""
        self.dismiss(None)
