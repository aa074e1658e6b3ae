"""Runbooks: pick one (the one that fits a down node is highlighted), fill its parameters
(pre-filled), read the plan, start it.

Scenario 1 with a validator down: `r`, Enter (runbook), Enter (parameters), Enter (start),
then `y` at the first plain-confirm gate — five keys from launch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.events import Key
from textual.widget import Widget
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select, Static

from kconsole.drills import is_test_runbook
from kconsole.errors import KconsoleError
from kconsole.runbook.model import Runbook
from kconsole.runbook.params import resolve_params
from screens.base import ConsoleScreen
from screens.run_model import RunModel
from screens.runbook_library import RunbookEntry
from screens.suggest import (
    backup_choice,
    chosen_node,
    default_params,
    scenario_for,
    suggest_runbook,
)
from screens.widgets import TickBox, plain, short_duration


class RunbooksScreen(ConsoleScreen):
    """Every runbook with its scenario, RTO and RPO.

    | Key | Action |
    | :- | :- |
    | `enter` | choose the highlighted runbook: its parameters, then its plan |
    """

    NAME = "Runbooks"
    HELP = "Choose a runbook: parameters pre-filled, plan shown before it starts"
    CSS_PATH = "runbooks.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter",
            "choose",
            "Choose",
            id="runbooks-choose",
            priority=True,
            tooltip="Fill in the highlighted runbook's parameters, then review its plan.",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._touched = False
        """Whether the operator has moved the cursor (then suggestions stop moving it)."""

    def compose_body(self) -> Iterable[Widget]:
        """Suggestion line, the runbook table, the highlighted runbook's description."""
        yield Static("", id="suggestion")
        table: DataTable[str] = DataTable(id="runbooks", cursor_type="row")
        yield table
        yield Static("", id="description")

    def on_mount(self) -> None:
        """Columns, then rows as soon as the runbooks are loaded."""
        table = self.query_one("#runbooks", DataTable)
        for label, key, width in (
            ("Runbook", "id", 26),
            ("Scenario", "scenario", 17),
            ("RTO", "rto", 6),
            ("RPO", "rpo", 6),
            ("Est.", "estimate", 6),
            ("Title", "title", 40),
        ):
            table.add_column(label, key=key, width=width)
        self.console.runbooks_signal.subscribe(self, self._refill)
        self.watch(self.console, "fleet", self._suggest, init=False)
        self._refill(None)

    def on_screen_resume(self) -> None:
        """A node asked for from the dashboard moves the suggestion to it."""
        if self.console.requested_node:
            self._touched = False
        self._suggest(None)

    def on_key(self, event: Key) -> None:
        """Any key but Enter means the operator is choosing for themselves."""
        if event.key != "enter":
            self._touched = True

    def _refill(self, _data: object) -> None:
        table = self.query_one("#runbooks", DataTable)
        table.clear()
        for entry in self.console.runbooks:
            rb = entry.runbook
            if rb is None:
                table.add_row(
                    plain(entry.id), "✖ invalid", "", "", "", plain(entry.problem), key=entry.id
                )
            else:
                table.add_row(
                    plain(rb.id),
                    plain(rb.scenario or "-"),
                    short_duration(rb.rto),
                    short_duration(rb.rpo),
                    short_duration(rb.total_estimate()),
                    plain(rb.title),
                    key=rb.id,
                )
        if not self.console.runbooks_loaded:
            self.query_one("#suggestion", Static).update("loading runbooks…")
        elif not self.console.runbooks:
            self.query_one("#suggestion", Static).update(
                "no runbooks found (shipped or in the site's runbooks/)"
            )
        self._suggest(None)

    def _suggest(self, _data: object) -> None:
        app = self.console
        down = app.down_for_recovery()
        line = self.query_one("#suggestion", Static)
        if not app.runbooks_loaded:
            return
        if not down:
            line.update("All polled nodes are active." if app.fleet else "Fleet not polled yet.")
            line.remove_class("-down")
            return
        entry = suggest_runbook(app.runbooks, scenario_for(app.site, down))
        if entry is None:
            line.update(f"DOWN: {', '.join(down)} — no runbook for this scenario is installed.")
        else:
            line.update(
                f"DOWN: {', '.join(down)} — {entry.id} is highlighted; Enter to prepare it."
            )
            if not self._touched:
                table = self.query_one("#runbooks", DataTable)
                table.move_cursor(row=table.get_row_index(entry.id))
        line.add_class("-down")

    def highlighted(self) -> RunbookEntry | None:
        """The entry under the cursor."""
        table = self.query_one("#runbooks", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((e for e in self.console.runbooks if e.id == key), None)

    @on(DataTable.RowHighlighted, "#runbooks")
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        entry = self.highlighted()
        text = ""
        if entry is not None and entry.runbook is not None:
            rb = entry.runbook
            params = ", ".join(f"{n} ({p.type})" for n, p in rb.params.items()) or "none"
            text = f"{rb.description.strip() or rb.title}\nparameters: {params} · {len(rb.main_steps())} steps"
        elif entry is not None:
            text = f"{entry.path}: {entry.problem}"
        self.query_one("#description", Static).update(text)

    @on(DataTable.RowSelected, "#runbooks")
    def _clicked(self, _event: DataTable.RowSelected) -> None:
        self.action_choose()

    def action_choose(self) -> None:
        """Parameters of the highlighted runbook, pre-filled."""
        entry = self.highlighted()
        if entry is None:
            return
        if entry.runbook is None:
            self.notify(
                f"{entry.path}: {entry.problem}", title="Runbook is invalid", severity="error"
            )
            return
        values = default_params(entry.runbook, self.console.site, self.console.down_for_recovery())
        self.app.push_screen(ParamsScreen(entry.runbook, values))


class ParamsScreen(ConsoleScreen):
    """A runbook's parameters, each with its help and a pre-filled value.

    | Key | Action |
    | :- | :- |
    | `enter` | (on Review plan) check the parameters and show the plan |
    | `escape` | back to the runbooks |
    """

    NAME = "Parameters"
    CSS_PATH = "runbooks.tcss"
    AUTO_FOCUS = "#review"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="params-back", tooltip="Back to the runbook list."),
    ]

    def __init__(self, runbook: Runbook, values: dict[str, str]) -> None:
        super().__init__()
        self.runbook = runbook
        """The runbook being prepared."""
        self.values = values
        """Pre-filled values, by parameter name."""
        self.fields: dict[str, Select[str] | Input] = {}
        """Each parameter's field, by parameter name."""
        self.backup_notes: dict[str, Static] = {}
        """Under each backup parameter: the backup it will restore, as the catalog says."""
        self.node_notes: dict[str, Static] = {}
        """Under each node parameter of a recovery: a warning when a chosen node is healthy."""

    def compose_body(self) -> Iterable[Widget]:
        """One field per parameter, the drill switch, Back and Review plan."""
        rb = self.runbook
        app = self.console
        yield Static(
            f"{rb.title} · RTO {short_duration(rb.rto)} · RPO {short_duration(rb.rpo)}",
            id="rb-head",
        )
        with VerticalScroll(id="form"):
            for i, (name, param) in enumerate(rb.params.items()):
                hint = f" — {param.help}" if param.help else ""
                yield Label(f"{name} ({param.type}){hint}", classes="param-label")
                value = self.values.get(name, "")
                options: list[tuple[str, str]] = []
                if param.type == "node":
                    options = [
                        (f"{n} ({app.fleet[n].state})" if n in app.fleet else n, n)
                        for n in app.site.nodes
                    ]
                elif param.type == "group":
                    options = [(g, g) for g in app.site.groups()]
                elif param.choices:
                    options = [(c, c) for c in param.choices]
                if options:
                    known = {v for _, v in options}
                    field: Select[str] | Input = Select(
                        options,
                        value=value if value in known else Select.NULL,
                        prompt=f"choose {name}",
                        id=f"param-{i}",
                        compact=True,
                    )
                else:
                    field = Input(
                        value=value, placeholder=param.help or name, id=f"param-{i}", compact=True
                    )
                self.fields[name] = field  # ids by position: parameter names need not be valid ids
                yield field
                if rb.scenario and param.type in ("node", "nodes"):
                    node_note = Static("", id=f"node-note-{i}", classes="param-note -healthy")
                    self.node_notes[name] = node_note
                    yield node_note
                if param.type == "backup":
                    note = Static("", id=f"note-{i}", classes="param-note")
                    self.backup_notes[name] = note
                    yield note
            yield TickBox(
                "Drill: mark this run as a drill (journal, report, notifications)",
                # A test runbook is a rehearsal by nature: ticked unless the operator says not.
                value=is_test_runbook(rb),
                id="drill",
                compact=True,
            )
        yield Static("", id="params-error")
        with Horizontal(classes="buttons"):
            yield Button("Back", id="back", compact=True)
            yield Button("Review plan ▶", id="review", variant="primary", compact=True)

    def on_mount(self) -> None:
        """Say which backup each backup parameter means, and keep saying it as fields change."""
        self._describe_backups()
        self._warn_healthy()
        self.console.catalog_signal.subscribe(self, lambda _data: self._describe_backups())

    def healthy_choices(self) -> dict[str, list[str]]:
        """Node parameters of this recovery set to nodes that were active at the last poll."""
        raw = self.raw_values()
        fleet = self.console.fleet
        out: dict[str, list[str]] = {}
        for name in self.node_notes:
            chosen = [n.strip() for n in str(raw.get(name, "")).split(",") if n.strip()]
            active = [n for n in chosen if n in fleet and fleet[n].state == "active"]
            if active:
                out[name] = active
        return out

    @on(Input.Changed)
    @on(Select.Changed)
    def _warn_healthy(self) -> None:
        """A recovery of a healthy node restores over good state: say so, every time."""
        healthy = self.healthy_choices()
        for name, note in self.node_notes.items():
            nodes = healthy.get(name)
            note.update(
                f"⚠ {', '.join(nodes)} {'was' if len(nodes) == 1 else 'were'} active at the "
                "last poll: recovering restores over its current state"
                if nodes
                else ""
            )
            note.display = bool(nodes)

    @on(Input.Changed)
    @on(Select.Changed)
    def _describe_backups(self) -> None:
        if not self.backup_notes:
            return
        raw = self.raw_values()
        node = chosen_node(self.runbook, raw)
        reading = self.console.catalog_reading
        rows = reading.rows if reading is not None else None
        for name, note in self.backup_notes.items():
            value = str(raw.get(name) or self.runbook.params[name].default or "latest")
            if node is None:
                note.update("→ choose the node first")
            else:
                note.update(f"→ {backup_choice(value, node, rows, self.console.clock.now())}")

    def raw_values(self) -> dict[str, Any]:
        """What the operator set, as `--param` values; empty fields fall back to defaults."""
        out: dict[str, Any] = {}
        for name, widget in self.fields.items():
            if isinstance(widget, Select):
                value = "" if widget.is_blank() else str(widget.value)
            else:
                assert isinstance(widget, Input)
                value = widget.value.strip()
            if value:
                out[name] = value
        return out

    @on(Button.Pressed, "#review")
    @on(Input.Submitted)
    def action_plan(self) -> None:
        """Check the parameters as the engine will; show the plan if they resolve."""
        raw = self.raw_values()
        try:
            resolved = resolve_params(self.runbook, self.console.site, raw)
        except KconsoleError as exc:
            self.query_one("#params-error", Static).update(str(exc))
            self.app.bell()
            return
        drill = self.query_one("#drill", Checkbox).value
        plan = RunModel.planned(self.runbook, self.console.site, resolved)
        self.app.push_screen(PlanScreen(self.runbook, raw, plan, drill))

    @on(Button.Pressed, "#back")
    def action_back(self) -> None:
        """Back to the list."""
        self.dismiss()


class PlanScreen(ConsoleScreen):
    """Which steps run on which nodes, where the gates are, the estimate against the RTO.

    | Key | Action |
    | :- | :- |
    | `enter` | (on Start run) start the run |
    | `escape` | back to the parameters |
    """

    NAME = "Plan"
    CSS_PATH = "runbooks.tcss"
    AUTO_FOCUS = "#start"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="plan-back", tooltip="Back to the parameters."),
    ]

    def __init__(self, runbook: Runbook, raw: dict[str, Any], plan: RunModel, drill: bool) -> None:
        super().__init__()
        self.runbook = runbook
        """The runbook to start."""
        self.raw = raw
        """Parameters as the operator gave them (journaled as given)."""
        self.drill = drill
        """Whether the run is a drill."""
        self.model = plan
        """The plan: every step instance, waiting."""

    def compose_body(self) -> Iterable[Widget]:
        """Summary, the step table, a word on gates, Back and Start."""
        rb = self.runbook
        estimate = rb.total_estimate()
        fits = (
            ""
            if not rb.rto
            else (" — fits the RTO" if estimate <= rb.rto else " — EXCEEDS THE RTO")
        )
        params = " ".join(f"{k}={v}" for k, v in self.raw.items()) or "defaults"
        drill = " · DRILL" if self.drill else ""
        node = chosen_node(rb, self.raw)
        reading = self.console.catalog_reading
        backups = [
            f"\n{name}: {backup_choice(str(self.raw.get(name) or p.default or 'latest'), node, reading.rows if reading else None, self.console.clock.now())}"
            for name, p in rb.params.items()
            if p.type == "backup" and node is not None
        ]
        yield Static(
            f"{rb.title}{drill} · {params}{''.join(backups)}\n"
            f"estimate {short_duration(estimate)} of RTO {short_duration(rb.rto)}{fits}",
            id="plan-head",
        )
        table: DataTable[str] = DataTable(id="plan", cursor_type="row")
        yield table
        gates = sum(1 for s in rb.main_steps() if s.gate or s.action == "gate")
        note = f"{gates} gate(s) will stop for you. Start writes the journal and the audit log."
        if self.console.read_only:
            note = "You are an auditor: you can read this plan but not start it."
        yield Static(note, id="plan-note")
        with Horizontal(classes="buttons"):
            yield Button("Back", id="back", compact=True)
            yield Button("Start run ▶", id="start", variant="primary", compact=True)

    def on_mount(self) -> None:
        """A row per step: the nodes it runs on, its gate and estimate."""
        table = self.query_one("#plan", DataTable)
        for label, key, width in (
            ("Step", "step", 14),
            ("Nodes", "nodes", 16),
            ("Gate", "gate", 9),
            ("Est.", "est", 6),
            ("Title", "title", 40),
        ):
            table.add_column(label, key=key, width=width)
        by_step: dict[str, list[str]] = {}
        titles: dict[str, str] = {}
        for inst in self.model.steps.values():
            by_step.setdefault(inst.step.id, []).append(inst.node or "local")
            titles.setdefault(inst.step.id, inst.title)
        for step in self.runbook.main_steps():
            gate = (
                "typed"
                if (step.gate or "").startswith("type:")
                else ("confirm" if step.gate else ("checklist" if step.action == "gate" else ""))
            )
            table.add_row(
                plain(step.id),
                plain(",".join(by_step.get(step.id, []))),
                gate,
                short_duration(step.estimate),
                plain(titles.get(step.id, step.title)),
                key=step.id,
            )

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        """Start the run (refused, with the reason, for an auditor)."""
        if self.console.start_run(self.runbook, self.raw, self.drill):
            self.console.close_run_preparation()

    @on(Button.Pressed, "#back")
    def action_back(self) -> None:
        """Back to the parameters."""
        self.dismiss()
