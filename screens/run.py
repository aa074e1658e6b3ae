"""Run: every step on every node with its state, the selected step's guide and streaming
output, the RTO clock; pause, abort, notes. Gates pop up over it as dialogs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key
from textual.widget import Widget
from textual.widgets import DataTable, Log, Markdown, Static

from kconsole.incidents.announce import WHAT_NEXT_UNREACHABLE
from screens.base import ConsoleScreen
from screens.run_model import RunModel, StepRun
from screens.widgets import RtoClock, plain, state_label

_MOVE_KEYS = {"up", "down", "pageup", "pagedown", "home", "end"}


def row_key(inst: StepRun) -> str:
    """The table row key of a step instance."""
    return f"{inst.step.id}\x1f{inst.node or ''}"


class RunScreen(ConsoleScreen):
    """The active run (or a past one opened from Runs).

    | Key | Action |
    | :- | :- |
    | `p` | pause (no new step starts) / resume |
    | `x` | abort (asks first; running steps finish) |
    | `n` | add an operator note to the journal |
    | `E` | escalate the run's incident (offered when the node itself is unreachable) |
    | `f` | follow the active step again after moving the cursor |
    """

    NAME = "Run"
    HELP = "The run: step states, output, guide, RTO clock; pause, abort, notes"
    CSS_PATH = "run.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (160, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "p", "pause", "Pause", id="run-pause", tooltip="Hold new steps; running ones carry on."
        ),
        Binding("p", "unpause", "Resume", id="run-resume", tooltip="Let new steps start again."),
        Binding(
            "x",
            "abort",
            "Abort",
            id="run-abort",
            tooltip="Start no new step; running ones finish; the run ends aborted.",
        ),
        Binding(
            "n", "note", "Note", id="run-note", tooltip="Add an operator note to the run's journal."
        ),
        Binding(
            "E",
            "escalate",
            "Escalate",
            id="run-escalate",
            tooltip="Page the next level of the run's incident now (asks first).",
        ),
        Binding(
            "f",
            "follow",
            "Follow",
            id="run-follow",
            show=False,
            tooltip="Keep the cursor on the active step.",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.model: RunModel | None = None
        """The run shown."""
        self.follow = True
        """Whether the cursor jumps to the step that needs attention."""
        self._versions: dict[str, int] = {}
        self._shown_key: str | None = None
        self._shown_lines = 0

    def compose_body(self) -> Iterable[Widget]:
        """Run line, RTO clock, steps beside the selected step's detail."""
        yield Static("", id="run-head")
        yield RtoClock(id="rto")
        with Horizontal(id="run-body"):
            steps: DataTable[object] = DataTable(id="steps", cursor_type="row")
            yield steps
            with Vertical(id="detail"):
                yield Static("", id="step-title")
                with VerticalScroll(id="guide-box"):
                    yield Markdown("", id="guide")
                yield Log(id="output", max_lines=5000)

    def on_mount(self) -> None:
        """Columns; follow the app's run."""
        table = self.query_one("#steps", DataTable)
        for label, key, width in (
            ("State", "state", 11),
            ("Step", "step", 14),
            ("Node", "node", 12),
            ("Title", "title", 48),
        ):
            table.add_column(label, key=key, width=width)
        self.watch(self.console, "run_revision", self._run_changed, init=False)
        self.console.incidents_signal.subscribe(self, self._incidents_changed)
        self._run_changed(None)

    def on_screen_resume(self) -> None:
        """Show whichever run the app wants shown now."""
        if self.is_mounted:
            self._run_changed(None)

    def on_key(self, event: Key) -> None:
        """Moving the cursor by hand stops following the active step."""
        if event.key in _MOVE_KEYS:
            self.follow = False

    # -- drawing ----------------------------------------------------------------------

    def _run_changed(self, _data: object) -> None:
        model = self.console.shown_run
        table = self.query_one("#steps", DataTable)
        if model is not self.model:
            self.model = model
            table.clear()
            self._versions.clear()
            self._shown_key = None
            self.follow = True
        self.query_one(RtoClock).show(model)
        self._draw_head()
        if model is None:
            return
        for inst in model.steps.values():
            key = row_key(inst)
            seen = self._versions.get(key)
            if seen is None:
                table.add_row(
                    state_label(self.app, inst.state),
                    plain(inst.step.id),
                    plain(inst.node or "local"),
                    plain(inst.title),
                    key=key,
                )
            elif seen != inst.version:
                table.update_cell(key, "state", state_label(self.app, inst.state))
            self._versions[key] = inst.version
        if self.follow:
            current = model.current()
            if current is not None:
                row = table.get_row_index(row_key(current))
                if table.cursor_row != row:
                    table.move_cursor(row=row)
        self._draw_detail()

    def _draw_head(self) -> None:
        head = self.query_one("#run-head", Static)
        model = self.model
        if model is None:
            head.update("No run shown · r runbooks to start one · h runs to open or re-attach one")
            return
        counts = model.counts()
        done = counts.get("done", 0)
        paused = " · PAUSED" if self.console.run_paused(model) else ""
        drill = " · DRILL" if model.drill else ""
        live = "" if self.console.is_live(model) else " · (journal)"
        incident = f" · incident {model.incident}" if model.incident else ""
        lines = [
            f"{model.runbook.title}{drill} · run {model.run_id or '-'}{incident} · {model.status}"
            f"{paused}{live} · {done}/{len(model.steps)} done"
        ]
        # The failure and the last note get lines of their own, wrapped, so that a narrow
        # terminal cuts neither.
        if model.reason:
            lines.append(f"— {model.reason}")
        if model.notes:
            lines.append(f"✎ {len(model.notes)} note(s), last: {model.notes[-1]}")
        gone = model.unreachable_node()
        if gone:
            key = self.console.key_for("run-escalate")
            escalate = f"; {key} escalates {model.incident}" if self._escalatable() else ""
            lines.append(f"{gone} is unreachable: {WHAT_NEXT_UNREACHABLE}{escalate}.")
        head.update("\n".join(lines))
        head.set_class(model.status in ("failed", "aborted") or bool(model.gated()), "-alert")

    def selected(self) -> StepRun | None:
        """The step instance under the cursor."""
        table = self.query_one("#steps", DataTable)
        if self.model is None or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((s for s in self.model.steps.values() if row_key(s) == key), None)

    def _draw_detail(self) -> None:
        inst = self.selected()
        title = self.query_one("#step-title", Static)
        log = self.query_one("#output", Log)
        if inst is None:
            title.update("")
            self.query_one("#guide", Markdown).update("")
            log.clear()
            self._shown_key = None
            return
        where = f" on {inst.node}" if inst.node else ""
        attempt = f" · attempt {inst.attempt}" if inst.attempt > 1 else ""
        lines = [f"{inst.step.id}{where} · {inst.state}{attempt}", inst.title or inst.step.action]
        if inst.question:
            lines.append(f"? {inst.question}")
        if inst.reason:
            lines.append(f"! {inst.reason}")
        elif inst.summary:
            lines.append(inst.summary)
        if inst.confirmed_by:
            lines.append(f"confirmed by {inst.confirmed_by}")
        title.update("\n".join(lines))
        key = row_key(inst)
        if key != self._shown_key:
            self._shown_key = key
            self.query_one("#guide", Markdown).update(
                inst.step.guide.strip() or "_No guide for this step._"
            )
            log.clear()
            log.write_lines(list(inst.output))
            self._shown_lines = inst.output_total
        elif inst.output_total > self._shown_lines:
            new = min(inst.output_total - self._shown_lines, len(inst.output))
            log.write_lines(list(inst.output)[-new:])
            self._shown_lines = inst.output_total

    @on(DataTable.RowHighlighted, "#steps")
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._draw_detail()

    # -- actions ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Pause or Resume, whichever applies; run controls only while this console's run is going."""
        model = self.model
        live = model is not None and self.console.is_live(model) and model.active
        paused = model is not None and self.console.run_paused(model)
        if action == "pause":
            return live and not paused
        if action == "unpause":
            return live and paused
        if action in ("abort", "note"):
            return live
        if action == "escalate":
            return model is not None and bool(model.unreachable_node()) and self._escalatable()
        return True

    def _escalatable(self) -> bool:
        """Whether the shown run's incident is open and has a level left to page."""
        inc = self.console.incident_of_shown_run()
        matrix = self.console.site.escalation.get(inc.matrix) if inc else None
        return inc is not None and matrix is not None and inc.level < len(matrix.levels)

    def _incidents_changed(self, _data: object) -> None:
        self._draw_head()
        self.refresh_bindings()

    def action_escalate(self) -> None:
        """Escalate the run's incident, after asking."""
        inc = self.console.incident_of_shown_run()
        if inc is not None:
            self.console.escalate_incident(inc)

    def action_pause(self) -> None:
        """Hold new steps."""
        self.console.pause_run(True)
        self._draw_head()
        self.refresh_bindings()

    def action_unpause(self) -> None:
        """Let new steps start."""
        self.console.pause_run(False)
        self._draw_head()
        self.refresh_bindings()

    def action_abort(self) -> None:
        """Abort the run, after asking."""
        self.console.abort_run()

    def action_note(self) -> None:
        """Add a note to the journal."""
        self.console.add_note()

    def action_follow(self) -> None:
        """Follow the step that needs attention."""
        self.follow = True
        self._run_changed(None)
