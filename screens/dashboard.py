"""Dashboard: the fleet, each tier's RPO, the active run's RTO clock and who to call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, timedelta
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.widget import Widget
from textual.widgets import DataTable, Static

from kconsole.incidents.oncall import call_now
from kconsole.schedule import ScheduleStatus
from screens.base import ConsoleScreen
from screens.dialogs import ALL_DOWN, ChooseNodeScreen
from screens.run_model import RunModel
from screens.suggest import down_nodes, recovery_target
from screens.widgets import FleetTable, RtoClock, short_duration

TIER_WIDTH = 26
"""Columns one tier cell needs: `important RPO 1h RTO 4h` and a gutter."""


def tier_line(summary: Mapping[str, Any] | None) -> tuple[str, str]:
    """A tier's freshness (the engine's `tier_summary` line) in a few words, and its state."""
    if summary is None:
        return "– no backups", "none"
    status = str(summary.get("status", "none"))
    loss = summary.get("max_loss_s")
    worst = f" · worst {short_duration(loss)}" if isinstance(loss, int | float) else ""
    if status == "ok":
        return f"✔ ok{worst}", "ok"
    if status == "stale":
        return f"! STALE {summary.get('breached', 0)}/{summary.get('nodes', 0)}{worst}", "stale"
    return "– no backups", "none"


def schedule_line(entries: Sequence[ScheduleStatus]) -> tuple[str, str]:
    """When a tier's backup runbooks are next due, and whether one is overdue, in a few words."""
    if not entries:
        return "no schedule", "none"
    due = min(e.next_due for e in entries).astimezone(UTC)
    ahead = due - min(e.as_of for e in entries)
    fmt = (
        "%H:%M"
        if ahead < timedelta(hours=20)
        else "%a %H:%M"
        if ahead < timedelta(days=6)
        else "%b %d"
    )
    when = f"next {due:{fmt}}"
    missed = [e for e in entries if e.missed]
    if missed:
        return f"{when} · ! {len(missed)} OVERDUE", "overdue"
    if any(e.missed is None and e.available for e in entries):
        return f"{when} · no runs yet", "idle"
    return f"{when} · on time", "ok"


class DashboardScreen(ConsoleScreen):
    """Home. The fleet is re-polled in the background; keys never wait for it.

    | Key | Action |
    | :- | :- |
    | `enter` | recover the node that is down (the highlighted one if down; several down: ask) |
    | `p` | poll the fleet now |
    | `o` | open the incident the newest firing alert suggests (shown while one fires) |
    """

    NAME = "Dashboard"
    HELP = "Fleet state, RPO per tier, the active run's RTO clock, who to call"
    CSS_PATH = "dashboard.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        # priority: the fleet table would otherwise take Enter for itself and hide this key
        Binding(
            "enter",
            "recover",
            "Recover node",
            id="dashboard-recover",
            priority=True,
            tooltip="Recover the node that is down (asks which when several are).",
        ),
        Binding("p", "poll", "Poll now", id="dashboard-poll", tooltip="Poll every node again now."),
        Binding(
            "o",
            "open_incident",
            "Open incident",
            id="dashboard-open-incident",
            tooltip="Open the incident the newest firing alert suggests (asks first).",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.tier_cells: dict[str, Static] = {}
        """Each tier's cell of the RPO strip, by tier name."""

    def compose_body(self) -> Iterable[Widget]:
        """Run strip, on-call line, RPO strip, fleet, fleet summary."""
        yield Static("", id="run-title")
        yield RtoClock(id="rto")
        yield Static("", id="oncall")
        yield Static("", id="incidents-strip")
        # ids are by position: tier names come from the site file and need not be valid ids
        self.tier_cells = {
            tier: Static("", id=f"tier-{i}", classes="tier")
            for i, tier in enumerate(self.console.site.tiers)
        }
        with Container(id="rpo-strip"):
            yield from self.tier_cells.values()
            if not self.tier_cells:
                yield Static("no tiers in the site file", classes="tier")
        yield FleetTable(self.console.site, id="fleet")
        yield Static("", id="fleet-summary")

    def on_mount(self) -> None:
        """Draw from what the app knows and follow its changes."""
        self.watch(self.console, "fleet", self._fleet_changed, init=False)
        self.watch(self.console, "run_revision", self._run_changed, init=False)
        self.console.catalog_signal.subscribe(self, self._catalog_changed)
        self.console.schedule_signal.subscribe(self, self._catalog_changed)
        self.console.schedule_signal.subscribe(self, self._run_changed)
        self.console.incidents_signal.subscribe(self, self._incidents_changed)
        self.call_after_refresh(self._redraw)

    def on_resize(self) -> None:
        """As many tier cells per row as fit in the width."""
        tiers = max(1, len(self.console.site.tiers))
        self.query_one("#rpo-strip").styles.grid_size_columns = max(
            1, min(tiers, self.size.width // TIER_WIDTH)
        )

    def on_screen_resume(self) -> None:
        """Catch up with anything that changed while another screen was shown."""
        if self.is_mounted:
            self._redraw()

    def _redraw(self) -> None:
        self._fleet_changed(None)
        self._run_changed(None)
        self._catalog_changed(None)
        self._incidents_changed(None)

    def _incidents_changed(self, _data: object) -> None:
        """Open incidents and firing alerts, on one line shown only while there are some."""
        app = self.console
        strip = self.query_one("#incidents-strip", Static)
        parts = []
        if app.incidents:
            newest = app.incidents[0]
            more = f" (+{len(app.incidents) - 1} more)" if len(app.incidents) > 1 else ""
            ack = "ack " + newest.acknowledged_by if newest.acknowledged_by else "NOT acknowledged"
            where = app.desk.opened_elsewhere(newest)
            where = f" (opened {where})" if where else ""
            parts.append(
                f"! {newest.id} {newest.severity} {newest.type} L{newest.level} {ack}"
                f"{where}{more}"
                f" · {app.key_for('show-contacts')} escalation"
            )
        if app.alerts:
            names = ", ".join(a.line().split(":")[0] for a in app.alerts[:2])
            more = f" (+{len(app.alerts) - 2})" if len(app.alerts) > 2 else ""
            parts.append(
                f"{len(app.alerts)} firing: {names}{more}"
                f" · {app.key_for('dashboard-open-incident')} open incident"
            )
        elif app.alerts_error:
            parts.append(app.alerts_error)
        strip.update(" · ".join(parts))
        strip.display = bool(parts)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Open an incident only while an alert fires."""
        if action == "open_incident":
            return bool(self.console.alerts)
        return True

    def action_open_incident(self) -> None:
        """The newest firing alert's incident, with its runbook suggested (asks first)."""
        if self.console.alerts:
            self.console.open_incident_from_alert(self.console.alerts[0])

    def _fleet_changed(self, _data: object) -> None:
        if not self.is_current:
            return  # another screen is shown: on_screen_resume draws the fleet when it is back
        app = self.console
        table = self.query_one(FleetTable)
        table.show_statuses(app.fleet.values())
        summary = self.query_one("#fleet-summary", Static)
        if not app.fleet:
            summary.update(f"polling {len(app.site.nodes)} nodes…")
            return
        up = sum(1 for s in app.fleet.values() if s.state == "active")
        behind = [s.name for s in app.fleet.values() if s.state == "behind"]
        down = [s.name for s in app.fleet.values() if s.state not in ("active", "behind")]
        when = app.fleet_polled_at.strftime("%H:%M:%S") if app.fleet_polled_at else "?"
        text = f"{up}/{len(app.fleet)} active · polled {when} UTC"
        if behind:
            text += f" · BEHIND its peers: {', '.join(behind)}"
        if down:
            verb = "recover it" if len(down) == 1 else "choose which to recover"
            text += f" · DOWN: {', '.join(down)} — Enter to {verb}"
        summary.update(text)
        summary.set_class(bool(down), "-down")

    def _run_changed(self, _data: object) -> None:
        app = self.console
        model: RunModel | None = app.session.model if app.session else None
        title = self.query_one("#run-title", Static)
        if model is None:
            overdue = [e.entry.runbook for e in app.schedule or () if e.missed]
            if app.key_rotation is not None and app.key_rotation.overdue:
                overdue.append("backup key rotation")
            late = f" · ! OVERDUE: {', '.join(overdue)}" if overdue else ""
            title.update(f"No run active · r runbooks · h past runs{late}")
        else:
            gated = len(model.gated())
            extra = f" · {gated} GATE(S) WAITING — a to answer" if gated else ""
            drill = " (drill)" if model.drill else ""
            title.update(
                f"Run {model.run_id}: {model.runbook.title}{drill} · {model.status}{extra}"
            )
        self.query_one(RtoClock).show(model)
        now = app.clock.now()
        if model is not None and model.active and model.created_at is not None:
            who = call_now(
                app.site, now, model.runbook.scenario, (now - model.created_at).total_seconds()
            )
        else:
            who = call_now(app.site, now)
        self.query_one("#oncall", Static).update(f"Call: {who.line()}")

    def _catalog_changed(self, _data: object) -> None:
        """Each tier: its RPO against the catalog, then when its backups are next due."""
        app = self.console
        reading = app.catalog_reading
        for tier in app.site.tiers.values():
            cell = self.tier_cells[tier.name]
            head = f"{tier.name} RPO {short_duration(tier.rpo)} RTO {short_duration(tier.rto)}"
            if reading is None:
                line, state = (
                    ("no catalog" if app.catalog is None else "reading catalog…"),
                    "unknown",
                )
            else:
                line, state = tier_line(reading.tier(tier.name))
            if app.schedule_error:
                due, due_state = "schedule: see `kconsole schedule`", "overdue"
            elif app.schedule is None:
                due, due_state = "reading schedule…", "unknown"
            else:
                due, due_state = schedule_line(
                    [e for e in app.schedule if e.entry.kind in tier.kinds]
                )
            if due_state == "overdue" and state in ("ok", "unknown"):
                state = "stale"  # a missed backup run is a warning even while the data is fresh
            cell.update(f"{head}\n{line}\n{due}")
            cell.set_classes(f"tier -{state}")

    def action_recover(self) -> None:
        """The recovery runbook for the node that is down: the highlighted one if it is down,
        else the one down node; with several down, ask which. Never a healthy node."""
        app = self.console
        down = down_nodes(app.site, app.fleet.values())
        targets = recovery_target(down, self.query_one(FleetTable).selected_node)
        if not targets:
            self.notify(
                "Every polled node is active: nothing to recover. "
                "r opens the runbooks to choose one by hand.",
                title="Nothing down",
            )
        elif len(targets) == 1:
            app.open_runbooks(node=targets[0])
        else:
            states = {n: app.fleet[n].state for n in targets if n in app.fleet}
            app.push_screen(ChooseNodeScreen(targets, states), self._chosen)

    def _chosen(self, choice: str | None) -> None:
        if choice == ALL_DOWN:
            self.console.open_runbooks(node=None)
        elif choice is not None:
            self.console.open_runbooks(node=choice)

    def action_poll(self) -> None:
        """Poll the fleet now."""
        self.console.poll_fleet()
        self.notify("polling the fleet…", timeout=2)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """A click on the highlighted node row."""
        self.action_recover()
