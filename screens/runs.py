"""Runs: past runs with their timelines, opened read-only, re-attached when interrupted or
waiting at a gate, and their reports (once the engine writes them). With a shared store
the list holds every console's runs, and `e` takes another console's run over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import DataTable, Log, Markdown, Static

from kconsole.errors import KconsoleError
from kconsole.headless import human_line
from kconsole.journal import RunSummary, list_runs
from kconsole.shared.runs import merged_runs
from kconsole.shared.store import console_name
from screens.base import ConsoleScreen
from screens.widgets import plain, state_label

RESUMABLE = ("interrupted", "waiting")
"""Run statuses the console can re-attach to."""


def timeline_line(record: dict[str, Any]) -> str | None:
    """A journal record as one timeline line (operator notes included)."""
    if record.get("type") == "note":
        return f"{str(record.get('time', ''))[11:19]} ✎ note by {record.get('user', '')}: {record.get('text', '')}"
    if record.get("type") not in ("run", "step"):
        return None
    return human_line(record)


class RunsScreen(ConsoleScreen):
    """Every run in the journal, newest first.

    | Key | Action |
    | :- | :- |
    | `enter` | open the run in the Run screen (read-only unless it is this console's) |
    | `e` | re-attach to an interrupted or waiting run and carry it on (another console's too: take it over) |
    | `p` | the run's report |
    | `g` | read the journal again |
    """

    NAME = "Runs"
    HELP = "Past runs and their timelines; re-attach to an interrupted or waiting run"
    CSS_PATH = "runs.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter", "open", "Open", id="runs-open", priority=True, tooltip="Show the run's steps."
        ),
        Binding(
            "e",
            "reattach",
            "Re-attach",
            id="runs-reattach",
            tooltip="Carry on an interrupted or waiting run from where its journal stops.",
        ),
        Binding(
            "p", "report", "Report", id="runs-report", tooltip="The run's incident or drill report."
        ),
        Binding(
            "g", "reload", "Reload", id="runs-reload", show=False, tooltip="Read the journal again."
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunSummary] = []
        """What the journal holds, newest first."""
        self._seen_status: tuple[str, str] | None = None

    def compose_body(self) -> Iterable[Widget]:
        """Run table, the highlighted run's line and timeline."""
        table: DataTable[object] = DataTable(id="runs", cursor_type="row")
        yield table
        yield Static("", id="run-info")
        yield Log(id="timeline", max_lines=5000)

    def on_mount(self) -> None:
        """Columns, then the journal read in a worker."""
        table = self.query_one("#runs", DataTable)
        for label, key, width in (
            # When it started comes second, so that 80 columns never cut it off.
            ("Run", "id", 20),
            ("Started", "started", 16),
            ("Status", "status", 14),
            ("Runbook", "runbook", 22),
            ("Drill", "drill", 5),
            ("User", "user", 10),
        ):
            table.add_column(label, key=key, width=width)
        if self.console.site.shared:
            table.add_column("Console", key="console", width=28)
        self.watch(self.console, "run_revision", self._run_changed, init=False)
        self.action_reload()

    def _run_changed(self, _data: object) -> None:
        """Re-read the journal when this console's run changes status, not on every line of output."""
        session = self.console.session
        status = (session.run_id, session.model.status) if session else None
        if status != self._seen_status:
            self._seen_status = status
            self.action_reload()

    def on_screen_resume(self) -> None:
        """Statuses move on while the screen is away."""
        if self.is_mounted:
            self.action_reload()

    @work(group="runs", exclusive=True, exit_on_error=False, description="read the run journal")
    async def action_reload(self) -> None:
        """Read every run's journal (in a thread) and list them."""
        runs, problem = await asyncio.to_thread(self._read_runs)
        if problem:
            self.notify(
                f"{problem} Showing this console's runs only.",
                title="Shared store",
                severity="warning",
            )
        self.runs = runs
        table = self.query_one("#runs", DataTable)
        keep = self.highlighted()
        table.clear()
        for r in runs:
            cells: list[Any] = [
                plain(r.id),
                plain(r.started[:16].replace("T", " ")),
                state_label(self.app, r.status),
                plain(r.runbook),
                "yes" if r.drill else "",
                plain(r.user),
            ]
            if self.console.site.shared:
                cells.append(plain(self._console_of(r)))
            table.add_row(*cells, key=r.id)
        if keep is not None and any(r.id == keep.id for r in runs):
            table.move_cursor(row=table.get_row_index(keep.id))
        self._show_highlighted()
        if not runs:
            self.query_one("#run-info", Static).update(
                "No runs in the journal yet · r to start one"
            )

    def _read_runs(self) -> tuple[list[RunSummary], str]:
        """This console's runs, and with a shared store every console's (blocking I/O)."""
        site = self.console.site
        local = list_runs(site.state_dir)
        if not site.shared:
            return local, ""
        return merged_runs(site, local, self.console.user)

    def _console_of(self, run: RunSummary) -> str:
        """Which console a run belongs to, as the table shows it."""
        if not run.console or run.console == console_name(self.console.site):
            return "this console"
        return run.console

    def highlighted(self) -> RunSummary | None:
        """The run under the cursor."""
        table = self.query_one("#runs", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.runs if r.id == key), None)

    @on(DataTable.RowHighlighted, "#runs")
    def _show_highlighted(self) -> None:
        run = self.highlighted()
        log = self.query_one("#timeline", Log)
        log.clear()
        if run is None:
            return
        reason = f" — {run.reason}" if run.reason else ""
        elsewhere = self._console_of(run) != "this console"
        hint = ""
        if run.status in RESUMABLE:
            hint = " · e to take it over" if elsewhere else " · e to re-attach"
        where = ""
        if elsewhere:
            where = f" · on {run.console}"
        if run.holder:
            where += f" · driven by {run.holder}"
        self.query_one("#run-info", Static).update(
            f"{run.title or run.runbook} · {run.status}{reason}{where}{hint}"
        )
        log.write_lines([line for r in run.records if (line := timeline_line(r)) is not None])

    @on(DataTable.RowSelected, "#runs")
    def _clicked(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        """The run's steps in the Run screen."""
        run = self.highlighted()
        if run is not None:
            self.console.open_run(run.id)

    def action_reattach(self) -> None:
        """Carry on an interrupted or waiting run."""
        run = self.highlighted()
        if run is None:
            return
        if run.status not in RESUMABLE:
            self.notify(
                f"run {run.id} is {run.status}; only an interrupted or waiting run can be re-attached.",
                severity="warning",
            )
            return
        self.console.reattach_run(run.id)

    def action_report(self) -> None:
        """The run's report, if the engine can write it."""
        run = self.highlighted()
        if run is not None:
            self.console.open_report(run.id)


class ReportScreen(ConsoleScreen):
    """A run's report, as `kconsole report RUN_ID` writes it.

    | Key | Action |
    | :- | :- |
    | `s` | save it as Markdown and self-contained HTML under the site's `reports/` |
    | `escape` | back to the runs |
    """

    NAME = "Report"
    CSS_PATH = "runs.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "s",
            "save",
            "Save",
            id="report-save",
            tooltip="Write the report as Markdown and HTML under the state directory's reports/.",
        ),
        Binding("escape", "back", "Back", id="report-back", tooltip="Back to the runs."),
    ]

    def __init__(self, run_id: str, markdown: str) -> None:
        super().__init__()
        self.run_id = run_id
        """The run reported on."""
        self.markdown = markdown
        """The report text."""
        self.saved: list[Path] = []
        """Where `s` last wrote the report."""

    def compose_body(self) -> Iterable[Widget]:
        """The report."""
        yield Markdown(self.markdown, id="report")

    def action_back(self) -> None:
        """Back to the runs."""
        self.dismiss()

    @work(group="report-save", exclusive=True, exit_on_error=False, description="save a report")
    async def action_save(self) -> None:
        """Write the report (`kconsole report RUN_ID -o`), Markdown and HTML, and say where."""
        from kconsole.reports import save_report

        site = self.console.site
        try:
            paths = [
                await asyncio.to_thread(save_report, site, self.run_id, fmt)
                for fmt in ("md", "html")
            ]
        except (KconsoleError, OSError) as exc:
            self.notify(f"could not save the report: {exc}", title="Not saved", severity="error")
            return
        self.saved = paths
        self.notify(f"Saved {paths[0]} and {paths[1].name}", title="Report saved", timeout=8)
