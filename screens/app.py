"""The console app: one factory (`build_app`) for the CLI and the tests, one mode per screen.

The app holds what several screens show — the last fleet poll, the runbooks, the active
run — and does every engine call in a worker: the fleet poll and the run in async workers
(so a gate can wait for the operator with `push_screen_wait`), file reads in threads.
Nothing here decides anything the CLI could not: starting, resuming, pausing and aborting
are the executor's own controls, and the engine refuses an auditor as the console does.

    python -m screens.app --site SITE          the console (until `kconsole` opens it)
    python -m screens.app --site SITE --web    served to a browser on 127.0.0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import var
from textual.signal import Signal
from textual.worker import Worker, WorkerState

from kconsole.actions.base import Confirm
from kconsole.audit import AuditLog
from kconsole.backups.rotation import KeyRotation, key_rotation
from kconsole.errors import EXIT_INTERRUPTED, EXIT_OK, AccessDenied, KconsoleError, UsageError
from kconsole.fleet import NodeStatus, poll_fleet
from kconsole.gates import GateRequest
from kconsole.incidents import Incident, IncidentDesk
from kconsole.incidents.alerts import Alert, firing_alerts, suggest
from kconsole.journal import new_run_id
from kconsole.reports import render_report
from kconsole.runbook.load import shipped_runbooks_dir
from kconsole.runbook.model import Runbook
from kconsole.schedule import ScheduleStatus, schedule_status
from kconsole.services import Clock, Services
from kconsole.site import Site, current_user, load_site
from screens.audit import AuditScreen
from screens.base import ConsoleScreen
from screens.catalog import CatalogScreen
from screens.catalog_source import CatalogReading, CatalogSource, EngineCatalog
from screens.commands import ConsoleCommands
from screens.contacts import ContactsScreen
from screens.dashboard import DashboardScreen
from screens.dialogs import ChooseNodeScreen, ConfirmScreen, GateScreen, NoteScreen
from screens.drills import DrillScreen
from screens.keys import check_keymap, default_keymap_path, load_keymap
from screens.run import RunScreen
from screens.run_model import RunModel
from screens.run_session import RunSession, load_run_model
from screens.runbook_library import RunbookEntry, find_runbooks
from screens.runbooks import ParamsScreen, PlanScreen, RunbooksScreen
from screens.runs import ReportScreen, RunsScreen
from screens.suggest import down_nodes

DEFAULT_POLL_INTERVAL = 15.0
"""Seconds between fleet polls."""

SCREENS: dict[str, type[ConsoleScreen]] = {
    "dashboard": DashboardScreen,
    "runbooks": RunbooksScreen,
    "run": RunScreen,
    "contacts": ContactsScreen,
    "runs": RunsScreen,
    "audit": AuditScreen,
    "catalog": CatalogScreen,
    "drills": DrillScreen,
}
"""The console's top-level screens by mode name; `show-<mode>` is each one's binding id."""


class KconsoleApp(App[int]):
    """The kconsole TUI. Build it with `build_app`.

    | Key | Action |
    | :- | :- |
    | `d` `r` `a` `c` `h` `u` `b` `i` | Dashboard, Runbooks, Run, Contacts, Runs (history), Audit, Backups catalog, Drills |
    | `ctrl+p` | command palette: every screen by name, and what this screen can do |
    | `f1` | keys of the focused widget and screen |
    | `ctrl+q` | quit (asks first while a run is active or a gate is open) |
    """

    CSS_PATH = "app.tcss"
    TITLE = "kconsole"
    DEFAULT_MODE = "dashboard"
    MODES: ClassVar[dict[str, Any]] = dict(SCREENS)
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "d",
            "show('dashboard')",
            "Dashboard",
            id="show-dashboard",
            tooltip="Fleet, RPO, RTO clock, on call.",
        ),
        Binding(
            "r",
            "show('runbooks')",
            "Runbooks",
            id="show-runbooks",
            tooltip="Choose and start a runbook.",
        ),
        Binding("a", "show('run')", "Run", id="show-run", tooltip="The active run."),
        Binding(
            "c",
            "show('contacts')",
            "Contacts",
            id="show-contacts",
            tooltip="Who to call, escalation.",
        ),
        Binding(
            "h", "show('runs')", "Runs", id="show-runs", tooltip="Past runs; re-attach to one."
        ),
        # Audit, Catalog and Keys stay off the footer (it must fit 80 columns); the palette lists them.
        Binding(
            "u",
            "show('audit')",
            "Audit",
            id="show-audit",
            show=False,
            tooltip="The audit log and its verification.",
        ),
        Binding(
            "b",
            "show('catalog')",
            "Catalog",
            id="show-catalog",
            show=False,
            tooltip="Backups in every location.",
        ),
        Binding(
            "i",
            "show('drills')",
            "Drills",
            id="show-drills",
            show=False,
            tooltip="Rehearse a recovery scenario; the plan's testing schedule.",
        ),
        Binding(
            "f1",
            "toggle_keys",
            "Keys",
            id="show-keys",
            show=False,
            tooltip="Show or hide the keys panel.",
        ),
        Binding(
            "ctrl+q",
            "quit",
            "Quit",
            id="quit",
            priority=True,
            tooltip="Quit; asks first while a run is active or a gate is open.",
        ),
    ]

    fleet: var[dict[str, NodeStatus]] = var(dict, always_update=True)
    """The last poll, by node. Screens watch it: `self.watch(app, "fleet", callback)`."""
    run_revision: var[int] = var(0)
    """Bumped when a record of the shown run arrives (a burst merges into one bump):
    screens showing a run watch it and redraw from the model."""

    @dataclass
    class RunbooksLoaded(Message):
        """The runbook directories were read."""

        entries: list[RunbookEntry]

    @dataclass
    class CatalogRead(Message):
        """The backup catalog was listed."""

        reading: CatalogReading

    @dataclass
    class ScheduleRead(Message):
        """The schedule was read against the journal (or could not be: `error`)."""

        entries: list[ScheduleStatus]
        error: str = ""
        rotation: KeyRotation | None = None

    @dataclass
    class IncidentsRead(Message):
        """Incidents were ticked (pages due sent, outbox retried) and read, with the firing alerts."""

        incidents: list[Incident]
        alerts: list[Alert]
        alerts_error: str = ""

    @dataclass
    class RunChanged(Message):
        """A run record arrived; a burst of them merges into one redraw."""

        def can_replace(self, message: Message) -> bool:
            """Any pending change notice is superseded: screens redraw from the model."""
            return isinstance(message, KconsoleApp.RunChanged)

    def __init__(
        self,
        site: Site,
        *,
        services: Services,
        clock: Clock,
        user: str,
        keymap: dict[str, str],
        catalog: CatalogSource | None,
        runbook_dirs: Sequence[Path],
        poll_interval: float,
    ) -> None:
        super().__init__()
        self.site = site
        """The site file's model."""
        self.services = services
        """Transport and clock every engine call uses."""
        self.clock = clock
        """The clock shown everywhere (injected in tests)."""
        self.user = user
        """Who is at the keyboard, as journaled and audited."""
        self.role = site.access.role_of(user)
        """admin, operator, auditor or None."""
        self.keymap_overrides = keymap
        """Binding id -> keys, applied on mount."""
        self.catalog = catalog
        """The backup catalog, or None while the engine has none."""
        self.catalog_reading: CatalogReading | None = None
        self.schedule: list[ScheduleStatus] | None = None
        """The scheduled runbooks: next due, last run, overdue (None: not read yet)."""
        self.schedule_error = ""
        """Why the schedule could not be read (a bad tier schedule in the site file)."""
        self.key_rotation: KeyRotation | None = None
        """The current backup key's age against `[keys] rotate_after` (None: not tracked)."""
        """The catalog's last listing (None: not read yet, or no catalog)."""
        self.runbook_dirs = list(runbook_dirs)
        """Where runbooks are looked for, first match of an id wins."""
        self.poll_interval = poll_interval
        """Seconds between fleet polls (0: only the first)."""
        self.fleet_polled_at: datetime | None = None
        """When the last poll came back."""
        self.runbooks: list[RunbookEntry] = []
        """Runbooks found, valid or not."""
        self.runbooks_loaded = False
        """Whether the runbook directories have been read."""
        self.session: RunSession | None = None
        """This console's run (active or last)."""
        self.shown_run: RunModel | None = None
        """The run the Run screen shows: the session's, or a past one opened from Runs."""
        self.requested_node: str | None = None
        """A node the operator asked to recover from the dashboard."""
        self.gate_open = False
        """Whether a gate dialog is waiting for the operator."""
        self.interrupted_run = False
        """Whether quitting interrupted a run (the exit code says so)."""
        self.stop_on_hangup = False
        """Whether SIGHUP / SIGTERM stop the run as interrupted and exit (the real program)."""
        self._hung_up = False
        self.make_run_id: Callable[[], str] = lambda: new_run_id(self.clock.now())
        """New run ids (tests pin them)."""
        self._polling = False
        self._run_worker: Worker[Any] | None = None
        self._gate_lock = asyncio.Lock()
        self.runbooks_signal: Signal[None] = Signal(self, "runbooks")
        self.catalog_signal: Signal[None] = Signal(self, "catalog")
        self.schedule_signal: Signal[None] = Signal(self, "schedule")
        self.desk = IncidentDesk(site, clock, user)
        """Every incident change and page goes through it (the same desk the CLI uses)."""
        self.incidents: list[Incident] = []
        """Open incidents, newest first, as of the last tick."""
        self.alerts: list[Alert] = []
        """Alerts firing in Alertmanager (`[alertmanager] url`) as of the last tick."""
        self.alerts_error = ""
        """Why Alertmanager could not be read, if it could not."""
        self._ticking = False
        self.incidents_signal: Signal[None] = Signal(self, "incidents")
        self.title = f"kconsole · {site.name}"

    # -- who may do what -----------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        """An auditor (or someone the site grants nothing) looks but does not change."""
        return self.role not in ("admin", "operator")

    @property
    def identity(self) -> str:
        """`user (role)` for the header."""
        role = self.role or "no role"
        return f"{self.user} ({role}{', read-only' if self.read_only else ''})"

    def may_operate(self, what: str) -> bool:
        """The engine's access check; a refusal is shown, not raised."""
        try:
            self.site.access.require_operate(self.user, what)
        except AccessDenied as exc:
            self.notify(str(exc), title="Not allowed", severity="error")
            return False
        return True

    # -- screens -------------------------------------------------------------------------

    @staticmethod
    def screen_classes() -> dict[str, type[ConsoleScreen]]:
        """Top-level screens by mode."""
        return SCREENS

    @classmethod
    def binding_owners(cls) -> list[Any]:
        """Every class whose BINDINGS the keymap may remap."""
        return [
            cls,
            *SCREENS.values(),
            ParamsScreen,
            PlanScreen,
            ReportScreen,
            GateScreen,
            ConfirmScreen,
            NoteScreen,
            ChooseNodeScreen,
        ]

    def key_for(self, binding_id: str) -> str:
        """The key a binding id is on now (after the keymap)."""
        if binding_id in self.keymap_overrides:
            return self.keymap_overrides[binding_id]
        for owner in self.binding_owners():
            for binding in owner.BINDINGS:
                if isinstance(binding, Binding) and binding.id == binding_id:
                    return binding.key
        return ""

    def show(self, mode: str) -> None:
        """Switch to a top-level screen."""
        if mode in SCREENS and mode != self.current_mode:
            self.switch_mode(mode)

    def action_show(self, mode: str) -> None:
        """Switch to a top-level screen (the navigation keys)."""
        self.requested_node = None
        self.show(mode)

    def action_toggle_keys(self) -> None:
        """Show or hide the keys panel."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide the key of the screen already shown; no palette over a gate."""
        if action == "show" and parameters and parameters[0] == self.current_mode:
            return False
        return not (action == "command_palette" and isinstance(self.screen, GateScreen))

    def open_runbooks(self, node: str | None = None) -> None:
        """The runbook list, with `node` as the one to recover."""
        self.requested_node = node
        self.show("runbooks")

    def down_for_recovery(self) -> list[str]:
        """The node asked for from the dashboard, else every down node (validators first)."""
        if self.requested_node:
            return [self.requested_node]
        return down_nodes(self.site, self.fleet.values())

    def close_run_preparation(self) -> None:
        """Leave the parameter and plan screens once a run has started."""
        self.requested_node = None
        while isinstance(self.screen, ParamsScreen | PlanScreen):
            self.pop_screen()

    # -- start-up ------------------------------------------------------------------------

    def on_mount(self) -> None:
        """Keymap; runbooks, catalog and the first poll in workers; polls every interval."""
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self._load_runbooks()
        self.read_catalog()
        self.read_schedule()
        self.poll_fleet()
        self.tick_incidents()
        if self.poll_interval:
            self.set_interval(self.poll_interval, self.poll_fleet)
            self.set_interval(SCHEDULE_INTERVAL, self.read_schedule)
            self.set_interval(INCIDENT_TICK_INTERVAL, self.tick_incidents)
        if self.stop_on_hangup:
            loop = asyncio.get_running_loop()
            for sig in HANGUP_SIGNALS:
                loop.add_signal_handler(sig, self.hang_up, sig)

    def hang_up(self, sig: int = signal.SIGHUP) -> None:
        """The terminal went away (the SSH session dropped) or the console was told to stop.

        Nobody is there to ask: the run stops as it does on quit, journaled as interrupted
        (its remote commands killed), and the console exits 3, to be re-attached later.
        """
        if self._hung_up:
            return
        self._hung_up = True
        hung_run = self.session.run_id if self.run_active and self.session is not None else None
        self._stop_and_exit(terminal_gone=sig == signal.SIGHUP, hangup=(sig, hung_run))

    async def on_unmount(self) -> None:
        """Close pooled connections."""
        if self.stop_on_hangup:
            loop = asyncio.get_running_loop()
            for sig in HANGUP_SIGNALS:
                loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await self.services.close()

    @work(
        thread=True,
        group="runbooks",
        exit_on_error=False,
        description="read the runbook directories",
    )
    def _load_runbooks(self) -> None:
        self.post_message(self.RunbooksLoaded(find_runbooks(self.runbook_dirs)))

    def on_kconsole_app_runbooks_loaded(self, message: RunbooksLoaded) -> None:
        """Keep the runbooks; tell the screens."""
        self.runbooks = message.entries
        self.runbooks_loaded = True
        self.runbooks_signal.publish(None)

    def read_catalog(self) -> None:
        """List every backup location in the background (nothing to do without a catalog)."""
        if self.catalog is not None:
            self._read_catalog(self.catalog)

    @work(
        group="catalog", exclusive=True, exit_on_error=False, description="list the backup catalog"
    )
    async def _read_catalog(self, catalog: CatalogSource) -> None:
        live = {name: status.height for name, status in self.fleet.items()}
        self.post_message(self.CatalogRead(await catalog.read(live)))

    def on_kconsole_app_catalog_read(self, message: CatalogRead) -> None:
        """Keep the listing; tell the screens."""
        self.catalog_reading = message.reading
        self.catalog_signal.publish(None)

    @work(
        thread=True,
        group="schedule",
        exclusive=True,
        exit_on_error=False,
        description="read the schedule against the journal",
    )
    def read_schedule(self) -> None:
        """Next due and overdue per scheduled runbook, from the site's schedule and the journal."""
        try:
            entries = schedule_status(self.site, now=self.clock.now())
        except KconsoleError as exc:
            self.post_message(self.ScheduleRead([], str(exc)))
            return
        try:
            rotation = key_rotation(self.site, self.clock.now())
        except (KconsoleError, OSError):
            rotation = None  # an unreadable keyring is reported where keys are used
        self.post_message(self.ScheduleRead(entries, rotation=rotation))

    def on_kconsole_app_schedule_read(self, message: ScheduleRead) -> None:
        """Keep the schedule; tell the screens."""
        self.schedule, self.schedule_error = message.entries, message.error
        self.key_rotation = message.rotation
        self.schedule_signal.publish(None)

    # -- incidents -----------------------------------------------------------------------

    def tick_incidents(self) -> None:
        """Page what is due, retry the outbox, re-read incidents and alerts (in a worker)."""
        if self._ticking:
            return
        self._ticking = True
        self._tick_incidents()

    @work(group="incidents", exit_on_error=False, description="tick incidents and read alerts")
    async def _tick_incidents(self) -> None:
        try:
            await self.desk.tick()
            incidents = await asyncio.to_thread(self.desk.incidents)
            alerts, error = [], ""
            try:
                alerts = await firing_alerts(self.site)
            except KconsoleError as exc:
                error = str(exc)
        finally:
            self._ticking = False
        self.post_message(self.IncidentsRead(incidents, alerts, error))

    def on_kconsole_app_incidents_read(self, message: IncidentsRead) -> None:
        """Keep the incidents and alerts; tell the screens."""
        self.incidents, self.alerts = message.incidents, message.alerts
        self.alerts_error = message.alerts_error
        self.incidents_signal.publish(None)

    def incident_of_shown_run(self) -> Incident | None:
        """The open incident the run on the Run screen belongs to."""
        model = self.shown_run
        wanted = model.incident if model is not None else ""
        return next((i for i in self.incidents if i.id == wanted), None)

    def acknowledge_incident(self, incident: Incident) -> None:
        """Acknowledge after a confirm: the escalation clock stops."""
        if not self.may_operate("acknowledge incidents"):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._change_incident(
                    lambda: self.desk.acknowledge(incident.id),
                    f"{incident.id} acknowledged; no further level is paged",
                )

        self.push_screen(
            ConfirmScreen(
                f"Acknowledge {incident.id}?",
                f"{incident.summary}\nYou take it: the escalation clock stops at level "
                f"{incident.level} and the channel is told you acknowledged.",
                "Acknowledge",
            ),
            answered,
        )

    def escalate_incident(self, incident: Incident) -> None:
        """Page the next level now, after a confirm."""
        if not self.may_operate("escalate incidents"):
            return
        matrix = self.site.escalation.get(incident.matrix)
        if matrix is None or incident.level >= len(matrix.levels):
            self.notify(
                f"{incident.id} has paged level {incident.level}, the top of its matrix.",
                severity="warning",
            )
            return
        nxt = matrix.levels[incident.level]

        def answered(yes: bool | None) -> None:
            if yes:
                self._change_incident(
                    lambda: self.desk.escalate(incident.id),
                    f"{incident.id}: level {nxt.level} ({nxt.role}) paged",
                )

        self.push_screen(
            ConfirmScreen(
                f"Escalate {incident.id} to level {nxt.level}?",
                f"{incident.summary}\nPages level {nxt.level} of {matrix.title} now: {nxt.role}.",
                "Escalate",
            ),
            answered,
        )

    def open_incident_from_alert(self, alert: Alert) -> None:
        """Open the backup incident `alert` suggests, after a confirm; then offer its runbook."""
        if not self.may_operate("open incidents"):
            return
        hint = suggest(alert, self.site)

        def answered(yes: bool | None) -> None:
            if yes:
                self._change_incident(
                    lambda: self.desk.open_from_alert(alert),
                    f"incident opened from {alert.name}; suggested runbook: {hint.runbook}",
                )
                self.requested_node = hint.nodes[0] if hint.nodes else None
                self.show("runbooks")

        self.push_screen(
            ConfirmScreen(
                f"Open a {hint.severity} {hint.type} incident from {alert.name}?",
                f"{hint.summary}\nPages level 1 of the {hint.type} matrix. "
                f"Suggested runbook: {hint.runbook}.",
                "Open incident",
            ),
            answered,
        )

    def _change_incident(self, change: Callable[[], Incident], done: str) -> None:
        try:
            change()
        except KconsoleError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(done)
        self.tick_incidents()

    # -- the fleet -----------------------------------------------------------------------

    def poll_fleet(self) -> None:
        """Poll every node in the background, unless a poll is still out."""
        if self._polling:
            return
        self._polling = True
        self._poll_fleet()

    @work(group="fleet", exit_on_error=False, description="poll every node")
    async def _poll_fleet(self) -> None:
        try:
            statuses = await poll_fleet(self.site, self.services, source="the console's fleet poll")
        finally:
            self._polling = False
        self.show_fleet(statuses, self.clock.now())

    def show_fleet(self, statuses: Sequence[NodeStatus], when: datetime) -> None:
        """Keep a poll; the screens watching `fleet` redraw."""
        self.fleet_polled_at = when
        self.fleet = {s.name: s for s in statuses}

    # -- runs ----------------------------------------------------------------------------

    @property
    def run_active(self) -> bool:
        """Whether this console is driving a run right now."""
        return self._run_worker is not None and self._run_worker.is_running

    def is_live(self, model: RunModel) -> bool:
        """Whether `model` is this console's own run (not one read back from the journal)."""
        return self.session is not None and self.session.model is model

    def run_paused(self, model: RunModel | None) -> bool:
        """Whether the live run is holding new steps."""
        session = self.session
        return session is not None and model is session.model and session.executor.paused

    def start_run(
        self,
        runbook: Runbook,
        raw_params: dict[str, Any],
        drill: bool = False,
        confirm: Confirm | None = None,
    ) -> bool:
        """Start a run of `runbook`; False (with a notification) if it may not start.
        `confirm` replaces the gate dialog's caller (a drill adds its walkthrough to it)."""
        return self._launch(
            "run runbooks",
            partial(
                RunSession.start,
                self.site,
                runbook,
                raw_params,
                run_id=self.make_run_id(),
                drill=drill,
                services=self.services,
                user=self.user,
                confirm=confirm or self.confirm_gate,
                on_event=self._on_run_event,
                desk=self.desk,
            ),
        )

    def reattach_run(self, run_id: str) -> bool:
        """Carry on an interrupted or waiting run (`kconsole run --resume`)."""
        return self._launch(
            "resume runs",
            partial(
                RunSession.reattach,
                self.site,
                run_id,
                services=self.services,
                user=self.user,
                confirm=self.confirm_gate,
                on_event=self._on_run_event,
            ),
        )

    def _launch(self, what: str, open_session: Callable[[], RunSession]) -> bool:
        if not self.may_operate(what):
            return False
        if self.run_active and self.session is not None:
            self.notify(
                f"run {self.session.run_id} is still active; one run at a time per console.",
                title="Run already active",
                severity="warning",
            )
            return False
        self._run_worker = self._drive_run(open_session)
        return True

    @work(group="run", exit_on_error=False, description="drive a run")
    async def _drive_run(self, open_session: Callable[[], RunSession]) -> str | None:
        try:
            session = await asyncio.to_thread(open_session)
        except KconsoleError as exc:
            self.notify(str(exc), title="Run not started", severity="error")
            return None
        self.session = session
        self.shown_run = session.model
        lease = getattr(session.journal.mirror, "lease", None)
        if lease is not None:
            lease.on_lost = self._lease_lost_in_thread
        self.post_message(self.RunChanged())
        await self.switch_mode("run")
        self.tick_incidents()  # a recovery may have opened an incident: show it everywhere
        outcome = await session.run()
        self.post_message(self.RunChanged())
        self.tick_incidents()  # the run's ending is on its incident
        self.read_catalog()  # the run may have made, verified or pruned backups
        self.read_schedule()  # and may have been a scheduled runbook
        reason = f": {outcome.reason}" if outcome.reason else ""
        severity = {"succeeded": "information", "waiting": "warning"}.get(outcome.status, "error")
        self.notify(
            f"run {outcome.run_id} {outcome.status}{reason}",
            title="Run over",
            severity=severity,  # type: ignore[arg-type]
            timeout=10,
        )
        return outcome.status

    def _lease_lost_in_thread(self, why: str) -> None:
        """The run's lease is gone (another console took the run over, or it could not be
        renewed for a whole lease): called from the lease's thread."""
        with contextlib.suppress(Exception):  # the console may be on its way out already
            self.call_from_thread(self._lease_lost, why)

    def _lease_lost(self, why: str) -> None:
        """Stop the run here, resumable, rather than drive it from two consoles at once."""
        self.notify(
            f"{why.rstrip('.')}; this console stopped the run (interrupted, resumable).",
            title="Run lease lost",
            severity="error",
            timeout=30,
        )
        worker = self._run_worker
        if worker is not None and worker.is_running:
            worker.cancel()

    def _on_run_event(self, _record: dict[str, Any]) -> None:
        """The executor's event sink (the model is already updated): schedule a redraw."""
        self.post_message(self.RunChanged())

    def on_kconsole_app_run_changed(self, message: RunChanged) -> None:
        """Tell the screens the run moved (they watch `run_revision`)."""
        self.run_revision += 1

    async def confirm_gate(self, request: GateRequest) -> bool | None:
        """The executor's `confirm`: a gate dialog, one at a time, over the Run screen."""
        async with self._gate_lock:
            if not self.may_operate("answer gates"):  # the engine's check, audited
                return None
            if self.current_mode != "run":
                await self.switch_mode("run")
            # Draw the run as it stands now and let that frame reach the screen before the
            # dialog covers it: a screen under a modal is not repainted (the run line would
            # otherwise show whatever state the last frame caught, e.g. "planned").
            self.run_revision += 1
            painted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def mark_painted() -> None:
                if not painted.done():
                    painted.set_result(None)

            self.call_after_refresh(mark_painted)
            await painted
            self.bell()
            self.gate_open = True
            try:
                return await self.push_screen_wait(GateScreen(request))
            finally:
                self.gate_open = False

    def pause_run(self, pause: bool) -> None:
        """Hold (or release) new steps of the live run."""
        if self.session is None or not self.may_operate("pause runs"):
            return
        if pause:
            self.session.executor.pause()
        else:
            self.session.executor.unpause()
        self.notify("paused: running steps finish, no new one starts" if pause else "resumed")

    def abort_run(self) -> None:
        """Abort the live run, after asking."""
        session = self.session
        if session is None or not self.may_operate("abort runs"):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                session.executor.abort(f"aborted by {self.user}")
                self.notify(
                    f"aborting run {session.run_id}: running steps finish, nothing new starts"
                )

        self.push_screen(
            ConfirmScreen(
                f"Abort run {session.run_id}?",
                "No new step starts; steps already running finish; the run ends aborted.\n"
                "Finished steps are not undone.",
                "Abort run",
            ),
            answered,
        )

    def add_note(self) -> None:
        """An operator note for the live run's journal."""
        session = self.session
        if session is None or not self.may_operate("add notes to runs"):
            return

        def answered(text: str | None) -> None:
            if text:
                self._write_note(session, text)

        self.push_screen(NoteScreen(), answered)

    @work(group="note", exit_on_error=False, description="journal an operator note")
    async def _write_note(self, session: RunSession, text: str) -> None:
        try:
            await session.note(self.user, text)
        except KconsoleError as exc:
            self.notify(str(exc), severity="error")
            return
        self.post_message(self.RunChanged())
        self.notify("note added to the journal")

    def open_run(self, run_id: str) -> None:
        """Show a run in the Run screen: live if it is this console's, else from its journal."""
        if self.session is not None and self.session.run_id == run_id:
            self.shown_run = self.session.model
            self.post_message(self.RunChanged())
            self.show("run")
            return
        self._open_past_run(run_id)

    @work(group="open-run", exclusive=True, exit_on_error=False, description="read a run's journal")
    async def _open_past_run(self, run_id: str) -> None:
        try:
            model = await asyncio.to_thread(load_run_model, self.site, run_id)
        except KconsoleError as exc:
            self.notify(str(exc), title="Cannot open run", severity="error")
            return
        self.shown_run = model
        self.post_message(self.RunChanged())
        self.show("run")

    @work(group="report", exclusive=True, exit_on_error=False, description="write a run's report")
    async def open_report(self, run_id: str) -> None:
        """The run's report (what `kconsole report RUN_ID` prints), written in a thread."""
        try:
            text = await asyncio.to_thread(render_report, self.site, run_id)
        except KconsoleError as exc:
            self.notify(str(exc), title="No report", severity="error")
            return
        await self.push_screen(ReportScreen(run_id, text))

    # -- failures and quitting -----------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The app's own workers: a failure is reported (screens forward theirs here too)."""
        if event.state == WorkerState.ERROR:
            self.report_failure(event.worker)

    def report_failure(self, worker: Worker[Any]) -> None:
        """Every worker failure is shown and audited, never silent and never a crash."""
        what = worker.description or worker.name
        error = worker.error
        self.log.error(f"worker {what!r} failed", error)
        self.notify(
            f"{what} failed: {error.__class__.__name__}: {error}",
            title="Console error",
            severity="error",
            timeout=15,
        )
        if worker.group != "audit":
            self._audit_failure(what, f"{error.__class__.__name__}: {error}")

    @work(thread=True, group="audit", exit_on_error=False, description="audit a console failure")
    def _audit_failure(self, what: str, error: str) -> None:
        AuditLog(self.site.state_dir).append(
            self.user, "console.error", what, result="error", error=error[:300]
        )

    async def action_quit(self) -> None:
        """Quit; while a run is active or a gate is open, ask first."""
        if not (self.run_active or self.gate_open):
            self.exit(EXIT_OK)
            return
        run_id = self.session.run_id if self.session else "?"
        self.push_screen(
            ConfirmScreen(
                "Quit while a run is active?",
                f"Run {run_id} stops here as interrupted: nothing is lost, and Runs (h) → e re-attaches "
                "to it, or `kconsole run … --resume` from a shell.",
                "Quit",
            ),
            self._quit_answered,
        )

    def _quit_answered(self, yes: bool | None) -> None:
        if yes:
            self._stop_and_exit()

    @work(group="quit", exit_on_error=False, description="stop the run and quit")
    async def _stop_and_exit(
        self, terminal_gone: bool = False, hangup: tuple[int, str | None] | None = None
    ) -> None:
        audited: asyncio.Future[Any] | None = None
        if hangup is not None and hangup[1] is not None:
            # Audited off the event loop (the log's lock may be held by another process),
            # alongside stopping the run, and waited for, up to EXIT_GRACE, before exiting.
            audited = asyncio.ensure_future(
                asyncio.to_thread(
                    AuditLog(self.site.state_dir).append,
                    self.user,
                    "console.hangup",
                    hangup[1],
                    signal=signal.Signals(hangup[0]).name,
                )
            )
        worker = self._run_worker
        if worker is not None and worker.is_running:
            worker.cancel()
            with contextlib.suppress(Exception):
                await worker.wait()
            self.interrupted_run = True
        if audited is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(audited), EXIT_GRACE)
        code = EXIT_INTERRUPTED if self.interrupted_run else EXIT_OK
        if terminal_gone:
            # The journal and audit log are durable by now. Restoring a terminal that is gone
            # would block for good in the driver's writer thread, so leave without it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.services.close(), 5)
            os._exit(code)
        if self._hung_up:
            # Told to stop (SIGTERM): a wedged terminal must not keep the console alive.
            timer = threading.Timer(EXIT_GRACE, os._exit, args=(code,))
            timer.daemon = True
            timer.start()
        self.exit(code)


SCHEDULE_INTERVAL = 60.0
"""Seconds between readings of the schedule (next due times move on by the minute)."""
INCIDENT_TICK_INTERVAL = 30.0
"""Seconds between incident ticks: a level falls due, or the outbox retries."""

EXIT_GRACE = 10.0
"""Seconds the real program gives Textual to restore the terminal after a signal, then exits."""

HANGUP_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
"""What a dropped SSH session or a service manager sends: stop the run resumable, then exit."""

ENGINE_CATALOG: Any = object()
"""`build_app(catalog=...)` default: the engine's own catalog (None: no catalog at all)."""


def build_app(
    site: Site,
    services: Services | None = None,
    clock: Clock | None = None,
    *,
    keymap: dict[str, str] | None = None,
    catalog: CatalogSource | None = ENGINE_CATALOG,
    runbook_dirs: Sequence[Path] | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    user: str | None = None,
) -> KconsoleApp:
    """The console for `site`: the one factory the CLI and the tests use.

    `services` defaults to the real SSH transport; `clock` (also given to the services)
    makes RTO clocks deterministic; `keymap` is a `[keys]` table (binding id -> keys);
    `catalog` defaults to the engine's catalog (None: none); `runbook_dirs` defaults
    to the site's `runbooks/` then the shipped runbooks.
    """
    services = services or Services.for_site(site)
    if clock is not None:
        services.clock = clock
    dirs = (
        list(runbook_dirs)
        if runbook_dirs is not None
        else [site.base_dir / "runbooks", shipped_runbooks_dir()]
    )
    return KconsoleApp(
        site,
        services=services,
        clock=services.clock,
        user=user or current_user(),
        keymap=check_keymap(keymap or {}),
        catalog=EngineCatalog(site, services) if catalog is ENGINE_CATALOG else catalog,
        runbook_dirs=dirs,
        poll_interval=poll_interval,
    )


def run_console(site_path: str | Path, keymap_path: str | Path | None = None) -> int:
    """Open the console on a site file; the exit code (3 if quitting interrupted a run).

    The keymap is `keymap_path`, else `$KCONSOLE_KEYMAP`, else `~/.config/kconsole/keys.toml`
    if it exists. Raises UsageError (exit 2) for a bad site or keymap file.
    """
    site = load_site(site_path)
    keymap = (
        load_keymap(Path(keymap_path), required=True)
        if keymap_path
        else load_keymap(default_keymap_path())
    )
    app = build_app(site, keymap=keymap)
    app.stop_on_hangup = True
    return app.run() or EXIT_OK


def serve_web(site_path: str | Path, port: int = 8000) -> int:
    """Serve the console to a browser on 127.0.0.1:`port` only (textual-serve has no login)."""
    site = load_site(site_path)
    try:
        from textual_serve.server import Server
    except ImportError:
        raise UsageError("kconsole web needs textual-serve: pip install 'kconsole[web]'.") from None
    command = f"{shlex.quote(sys.executable)} -m screens.app --site {shlex.quote(str(site.path))}"
    Server(command, host="127.0.0.1", port=port, title=f"kconsole · {site.name}").serve()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m screens.app [--site] SITE [--web [--port N]]`: errors as one sentence, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m screens.app", description="The kconsole TUI.")
    parser.add_argument("site_pos", nargs="?", metavar="SITE", help="site file")
    parser.add_argument(
        "--site", metavar="FILE", help="site file (default $KCONSOLE_SITE, then ./site.toml)"
    )
    parser.add_argument("--keymap", metavar="FILE", help="keymap file with a [keys] table")
    parser.add_argument("--web", action="store_true", help="serve to a browser on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    from kconsole.site import find_site_path

    site_path = find_site_path(args.site or args.site_pos)
    try:
        if args.web:
            return serve_web(site_path, args.port)
        return run_console(site_path, args.keymap)
    except KconsoleError as exc:
        for line in str(exc).splitlines():
            print(f"kconsole: {line}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
