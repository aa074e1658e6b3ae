"""Drills: rehearse one of the plan's recovery scenarios, walked through step by step, with the
drill history and the plan's testing schedule (next due, overdue)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import DataTable, Static

from kconsole.config import format_duration
from kconsole.drills import (
    PLAN_TESTS,
    SCENARIOS,
    DrillPlan,
    briefing,
    briefing_text,
    check_after,
    drills_status,
    gated_for_walkthrough,
    inject_and_detect,
    is_lab,
    is_staging,
    plan_drill,
    record_start,
    walkthrough,
)
from kconsole.errors import KconsoleError
from kconsole.gates import GateRequest
from screens.base import ConsoleScreen
from screens.widgets import plain


class DrillScreen(ConsoleScreen):
    """The plan's scenarios as drills: pick one, read its walkthrough, start it.

    | Key | Action |
    | :- | :- |
    | `enter` | start the highlighted drill (lab or `staging = true` site only) |
    | `t` | the plan's testing schedule instead of the walkthrough, and back |
    | `g` | read the drill history again |
    """

    NAME = "Drills"
    HELP = "Rehearse a recovery scenario; drill history and the plan's testing schedule"
    CSS_PATH = "drills.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter",
            "start",
            "Start drill",
            id="drills-start",
            priority=True,
            tooltip="Inject the scenario's failure and walk through its recovery as a drill.",
        ),
        Binding(
            "t",
            "toggle_schedule",
            "Schedule",
            id="drills-schedule",
            tooltip="The plan's testing schedule: last, next due, overdue.",
        ),
        Binding(
            "g", "reload", "Reload", id="drills-reload", show=False, tooltip="Read history again."
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, Any] = {"history": {}, "schedule": []}
        """`kconsole drills --json` as data: history per scenario and the schedule."""
        self.showing_schedule = False
        """Whether the lower pane shows the schedule (else the walkthrough)."""
        self.last_drill: str | None = None
        """The run id of the drill this screen last started."""

    def compose_body(self) -> Iterable[Widget]:
        """Scenarios on top, what the highlighted one will do below."""
        yield DataTable(id="drill-scenarios", cursor_type="row")
        yield Static("", id="drill-info")
        with VerticalScroll(id="drill-pane"):
            yield Static("", id="drill-walkthrough")

    def on_mount(self) -> None:
        """Columns, then history and the walkthrough."""
        table = self.query_one("#drill-scenarios", DataTable)
        for label, key, width in (
            ("Scenario", "scenario", 18),
            ("Drills", "drills", 6),
            ("Last drill", "last", 21),
            ("Next due", "due", 16),
        ):
            table.add_column(label, key=key, width=width)
        self.action_reload()

    def action_reload(self) -> None:
        """Read history and schedule again, and redraw."""
        self.status = drills_status(self.console.site, self.console.clock.now())
        table = self.query_one("#drill-scenarios", DataTable)
        row = table.cursor_row
        table.clear()
        for sc in SCENARIOS.values():
            runs = self.status["history"].get(sc.id, [])
            last = runs[0] if runs else None
            planned = next(
                (
                    r
                    for t, r in zip(PLAN_TESTS, self.status["schedule"], strict=True)
                    if sc.id in t.counts
                ),
                None,
            )
            due = (
                "-"
                if planned is None
                else ("overdue" if planned["overdue"] else str(planned["next_due"])[:16])
            )
            table.add_row(
                plain(sc.id),
                str(len(runs)),
                plain(f"{last['status']} {str(last['started'])[:10]}" if last else "never"),
                plain(due),
                key=sc.id,
            )
        if row:
            table.move_cursor(row=min(row, table.row_count - 1))
        self._show()

    @on(DataTable.RowHighlighted, "#drill-scenarios")
    def _highlighted(self) -> None:
        self._show()

    def highlighted(self) -> str | None:
        """The highlighted scenario's id."""
        table = self.query_one("#drill-scenarios", DataTable)
        if not table.row_count:
            return None
        keys = list(SCENARIOS)
        return keys[max(0, min(table.cursor_row, len(keys) - 1))]

    def action_toggle_schedule(self) -> None:
        """Walkthrough or schedule in the lower pane."""
        self.showing_schedule = not self.showing_schedule
        self._show()

    def _where(self) -> str:
        site = self.console.site
        if is_lab(site):
            return "the lab"
        if is_staging(site):
            return "this staging site"
        return ""

    def _show(self) -> None:
        name = self.highlighted()
        info = self.query_one("#drill-info", Static)
        pane = self.query_one("#drill-walkthrough", Static)
        if self.showing_schedule:
            info.update("The plan's testing schedule (automated ones: `kconsole drills --crontab`)")
            pane.update(self._schedule_text())
            return
        if name is None:
            return
        try:
            plan = plan_drill(self.console.site, name, user=self.console.user, check_site=False)
        except KconsoleError as exc:
            info.update(Text(f"{SCENARIOS[name].title}: cannot plan this drill: {exc}"))
            pane.update("")
            return
        where = self._where()
        inject = ", ".join(plan.injects)
        if where:
            info.update(
                Text(
                    f"{plan.scenario.title} on {where}: injects {inject}, then runs "
                    f"{plan.runbook.id} as a drill; every step asks first (y proceed, s skip, esc stop)."
                )
            )
        else:
            info.update(
                Text(
                    f"Preview only: {self.console.site.name} is neither the lab nor a "
                    "`staging = true` site, so no failure is injected here."
                )
            )
        pane.update(self._walkthrough_text(plan))

    def _walkthrough_text(self, plan: DrillPlan) -> Text:
        out = Text()
        params = ", ".join(f"{k}={v}" for k, v in plan.raw_params.items()) or "no parameters"
        out.append(f"{plan.runbook.title} ({params})\n", style="bold")
        for i, b in enumerate(walkthrough(self.console.site, plan, self.console.services), 1):
            out.append(f"{i}. {b['title']}", style="bold")
            out.append(f"  [{b['step']}]\n", style="dim")
            if b["guide"]:
                out.append(" ".join(b["guide"].split()) + "\n")
            for c in b["commands"]:
                out.append(f"   {c['node'] or 'console'}$ ", style="dim")
                out.append(f"{c['command']}\n")
            out.append(f"   expected: {b['expected']}\n", style="dim")
        return out

    def _schedule_text(self) -> Text:
        out = Text()
        for row in self.status["schedule"]:
            due = row["next_due"][:16] if row["next_due"] else "now (never run)"
            out.append(f"{row['cadence']:<12}{row['mode']:<10}{row['test']:<40}")
            out.append(
                f"{'OVERDUE ' if row['overdue'] else ''}next {due}\n",
                style="bold" if row["overdue"] else "",
            )
        out.append("\nDrill history (recovery time, RTO, issues):\n", style="bold")
        for name, runs in self.status["history"].items():
            for r in runs[:3]:
                rec = format_duration(r["recovery_s"]) if r["recovery_s"] is not None else "-"
                met = {True: "met", False: "missed", None: "-"}[r["rto_met"]]
                out.append(f"{name:<18}{r['run']}  {r['status']:<10} {rec:<7} RTO {met:<6} ")
                out.append(f"issues {r['issues']}\n")
        return out

    def action_start(self) -> None:
        """Start the highlighted drill where failures may be injected."""
        name = self.highlighted()
        if name is None:
            return
        if not self._where():
            self.notify(
                "A drill injects real failures: only on the lab or a site marked "
                "`staging = true`. This one is neither.",
                title="Drill not started",
                severity="warning",
            )
            return
        if self.console.run_active:
            self.notify("A run is active; one run at a time per console.", severity="warning")
            return
        self._run_drill(name)

    @work(group="drill", exclusive=True, exit_on_error=False, description="run a drill")
    async def _run_drill(self, name: str) -> None:
        app = self.console
        site = app.site
        try:
            plan = await asyncio.to_thread(plan_drill, site, name, lab=is_lab(site), user=app.user)
        except KconsoleError as exc:
            self.notify(str(exc), title="Drill not started", severity="error")
            return
        self.notify(f"Injecting {', '.join(plan.injects)}; waiting to see the failure.")
        injected, detected = await inject_and_detect(site, plan, app.services)
        before = app.session

        async def confirm(request: GateRequest) -> bool | None:
            session = app.session
            step = session.executor.runbook.steps.get(request.step_id) if session else None
            if (
                session is not None
                and step is not None
                and request.kind != "rerun"
                and not request.prompt.startswith("You refused")  # the abort question
            ):
                request.guide = briefing_text(briefing(session.executor, step))
            return await app.confirm_gate(request)

        if not app.start_run(
            gated_for_walkthrough(plan.runbook), plan.raw_params, drill=True, confirm=confirm
        ):
            return
        while app.session is before and app.run_active:
            await asyncio.sleep(0.05)
        session = app.session
        if session is None or session is before:
            return
        self.last_drill = session.run_id
        await asyncio.to_thread(record_start, site, session.run_id, plan, injected, detected)
        while app.run_active:
            await asyncio.sleep(0.2)
        if session.model.status == "succeeded":
            await check_after(site, session.run_id, plan, app.services)
        self.action_reload()
