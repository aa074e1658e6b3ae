"""Contacts, the escalation panel: who to call now for the selected open incident, its level
and the time until the next page, acknowledge and escalate keys (each asks first), every
contact with whether they answer at this hour, and the escalation matrices with the level
reached."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Static

from kconsole.incidents import CallNow, Incident, call_now
from kconsole.incidents.oncall import is_on_call
from screens.base import ConsoleScreen
from screens.widgets import plain, short_duration, toned


class ContactsScreen(ConsoleScreen):
    """The site's `[[contacts]]` and `[escalation.*]` against the clock and the open incidents.

    | Key | Action |
    | :- | :- |
    | `k` | acknowledge the selected incident (asks first): its escalation clock stops |
    | `e` | escalate the selected incident: page its next level now (asks first) |
    """

    NAME = "Contacts"
    HELP = "Escalation: who to call now, acknowledge or escalate an incident, the matrices"
    CSS_PATH = "contacts.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "k",
            "acknowledge",
            "Acknowledge",
            id="incident-ack",
            tooltip="Acknowledge the selected incident: no further level is paged (asks first).",
        ),
        Binding(
            "e",
            "escalate",
            "Escalate",
            id="incident-escalate",
            tooltip="Page the selected incident's next level now (asks first).",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.matrix_lines: dict[str, Static] = {}
        """Each escalation matrix's line, by matrix name."""

    def compose_body(self) -> Iterable[Widget]:
        """Call-now line, the incident line and table, contacts table, one panel per matrix."""
        yield Static("", id="call-now")
        yield Static("", id="incident-line")
        incidents: DataTable[object] = DataTable(id="incidents", cursor_type="row")
        yield incidents
        table: DataTable[object] = DataTable(id="contacts", cursor_type="row")
        yield table
        self.matrix_lines = {
            name: Static("", id=f"matrix-{i}", classes="matrix")
            for i, name in enumerate(self.console.site.escalation)
        }
        with Vertical(id="matrices"):
            yield from self.matrix_lines.values()
            if not self.matrix_lines:
                yield Static("no [escalation.*] tables in the site file", classes="matrix")

    def on_mount(self) -> None:
        """Columns, then everything drawn from the site, the incidents and the clock."""
        incidents = self.query_one("#incidents", DataTable)
        for label, key, width in (
            ("Incident", "id", 26),
            ("Type", "type", 9),
            ("Severity", "severity", 9),
            ("Status", "status", 13),
            ("Level", "level", 5),
            ("Summary", "summary", 40),
        ):
            incidents.add_column(label, key=key, width=width)
        table = self.query_one("#contacts", DataTable)
        for label, key, width in (
            ("Name", "name", 16),
            ("Role", "role", 20),
            ("Phone", "phone", 13),
            ("Hours", "hours", 14),
            ("Now", "now", 7),
            ("Email", "email", 28),
        ):
            table.add_column(label, key=key, width=width)
        self.watch(self.console, "run_revision", self._redraw, init=False)
        self.console.incidents_signal.subscribe(self, self._incidents_changed)
        self.set_interval(1.0, self._draw_incident_line)
        self._incidents_changed(None)

    def on_screen_resume(self) -> None:
        """The hour or the incident may have moved on."""
        if self.is_mounted:
            self._incidents_changed(None)

    # -- the incident under the cursor ----------------------------------------------------

    def selected(self) -> Incident | None:
        """The open incident under the cursor (the newest when the table has not moved)."""
        table = self.query_one("#incidents", DataTable)
        incidents = self.console.incidents
        if not incidents or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((i for i in incidents if i.id == key), incidents[0])

    def _incidents_changed(self, _data: object) -> None:
        table = self.query_one("#incidents", DataTable)
        keep = self.selected()
        table.clear()
        for inc in self.console.incidents:
            table.add_row(
                plain(inc.id),
                plain(inc.type),
                toned(self.app, inc.severity, "error" if inc.severity == "critical" else "warning"),
                plain(inc.status + (" (drill)" if inc.drill else "")),
                plain(f"L{inc.level}"),
                plain(inc.summary),
                key=inc.id,
            )
        table.display = bool(self.console.incidents)
        if keep is not None and keep in self.console.incidents:
            table.move_cursor(row=self.console.incidents.index(keep))
        self._redraw(None)

    @on(DataTable.RowHighlighted, "#incidents")
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._redraw(None)

    def _call(self) -> CallNow:
        app = self.console
        now = app.clock.now()
        inc = self.selected()
        if inc is not None:
            return call_now(app.site, now, inc.type, level_no=max(inc.level, 1))
        model = app.session.model if app.session else None
        if model is not None and model.active and model.created_at is not None:
            return call_now(
                app.site, now, model.runbook.scenario, (now - model.created_at).total_seconds()
            )
        return call_now(app.site, now)

    def _draw_incident_line(self) -> None:
        line = self.query_one("#incident-line", Static)
        inc = self.selected()
        if inc is None:
            line.update("No open incident · a recovery started here opens one and pages level 1")
            line.set_class(False, "-alert")
            return
        desk = self.console.desk
        ack, esc = self.console.key_for("incident-ack"), self.console.key_for("incident-escalate")
        if inc.acknowledged_by:
            clock = f"acknowledged by {inc.acknowledged_by} at {inc.acknowledged_at[11:19]}"
        else:
            nxt = desk.next_page_at(inc)
            if nxt is None:
                clock = "top level paged; nobody has acknowledged"
            else:
                left = max(0.0, (nxt - self.console.clock.now()).total_seconds())
                when = f"in {short_duration(left)}" if left >= 1 else "now"
                clock = f"next page: level {inc.level + 1} {when}"
        keys = f" · {ack} acknowledge" if not inc.acknowledged_by else ""
        line.update(
            f"{inc.id} · {inc.severity} {inc.type} · level {inc.level} · {clock}{keys} · {esc} escalate"
            + (f" · opened {o}" if (o := desk.opened_elsewhere(inc)) else "")
        )
        line.set_class(not inc.acknowledged_by, "-alert")

    def _redraw(self, _data: object) -> None:
        app = self.console
        now = app.clock.now()
        who = self._call()
        self.query_one("#call-now", Static).update(f"Call now: {who.line()}")
        self._draw_incident_line()
        table = self.query_one("#contacts", DataTable)
        table.clear()
        for i, c in enumerate(app.site.contacts):
            answers = is_on_call(c, now)
            now_cell = toned(app, "yes" if answers else "off", "success" if answers else "muted")
            table.add_row(
                plain(c.name),
                plain(c.role),
                plain(c.phone),
                plain(c.on_call),
                now_cell,
                plain(c.email),
                key=str(i),
            )
        for matrix in app.site.escalation.values():
            line = Text(f"{matrix.title}: ", style="bold")
            for level in matrix.levels:
                here = who.matrix is matrix and who.level is level
                step = Text(f"{'▶ ' if here else ''}L{level.level} {level.role}")
                if here:
                    step = toned(app, step.plain, "accent")
                    step.stylize("bold reverse")
                line.append_text(step)
                if level.wait:
                    line.append(f" —{short_duration(level.wait)}→ ", style="dim")
            self.matrix_lines[matrix.name].update(line)
        self.refresh_bindings()

    # -- actions ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Acknowledge while nobody has; escalate while a level is left."""
        inc = self.selected() if self.is_mounted else None
        if action == "acknowledge":
            return inc is not None and not inc.acknowledged_by
        if action == "escalate":
            matrix = self.console.site.escalation.get(inc.matrix) if inc else None
            return inc is not None and matrix is not None and inc.level < len(matrix.levels)
        return True

    def action_acknowledge(self) -> None:
        """Acknowledge the selected incident, after asking."""
        inc = self.selected()
        if inc is not None:
            self.console.acknowledge_incident(inc)

    def action_escalate(self) -> None:
        """Escalate the selected incident, after asking."""
        inc = self.selected()
        if inc is not None:
            self.console.escalate_incident(inc)
