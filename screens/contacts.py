"""Contacts: who to call now, every contact with whether they answer at this hour, and the
escalation matrices with the level an active incident has reached."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Static

from screens.base import ConsoleScreen
from screens.oncall import CallNow, call_now, is_on_call
from screens.widgets import plain, short_duration, toned


class ContactsScreen(ConsoleScreen):
    """Read-only: the site's `[[contacts]]` and `[escalation.*]` against the clock."""

    NAME = "Contacts"
    HELP = "Who to call now, contacts and the escalation matrices"
    CSS_PATH = "contacts.tcss"

    def __init__(self) -> None:
        super().__init__()
        self.matrix_lines: dict[str, Static] = {}
        """Each escalation matrix's line, by matrix name."""

    def compose_body(self) -> Iterable[Widget]:
        """Call-now line, contacts table, one panel per matrix."""
        yield Static("", id="call-now")
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
        """Columns, then everything drawn from the site and the clock."""
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
        self._redraw(None)

    def on_screen_resume(self) -> None:
        """The hour or the incident may have moved on."""
        if self.is_mounted:
            self._redraw(None)

    def _call(self) -> CallNow:
        app = self.console
        now = app.clock.now()
        model = app.session.model if app.session else None
        if model is not None and model.active and model.created_at is not None:
            return call_now(
                app.site, now, model.runbook.scenario, (now - model.created_at).total_seconds()
            )
        return call_now(app.site, now)

    def _redraw(self, _data: object) -> None:
        app = self.console
        now = app.clock.now()
        who = self._call()
        self.query_one("#call-now", Static).update(f"Call now: {who.line()}")
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
