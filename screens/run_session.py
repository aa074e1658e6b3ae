"""A run the console drives: the same engine calls `kconsole run` makes (and `--resume`),
with the console supplying `confirm` and receiving every journal record.

No Textual here. The app builds a session in a worker thread (journal I/O), then awaits
`session.run()` in an async worker so gates can wait for the operator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kconsole.actions.base import Confirm
from kconsole.errors import KconsoleError
from kconsole.executor import Executor, RunOutcome
from kconsole.incidents import IncidentDesk
from kconsole.journal import RunJournal, run_dir, summarise
from kconsole.runbook import load_runbook
from kconsole.runbook.model import Runbook
from kconsole.runbook.params import resolve_params
from kconsole.runs import check_named_backups, open_resume
from kconsole.services import Services
from kconsole.shared.runs import share_new_run
from kconsole.site import Site
from screens.run_model import RunModel

EventSink = Callable[[dict[str, Any]], None]


@dataclass
class RunSession:
    """One run (new or re-attached): executor, journal and the live model the screens show."""

    site: Site
    runbook: Runbook
    executor: Executor
    journal: RunJournal
    model: RunModel
    resumed: bool = False

    @property
    def run_id(self) -> str:
        """The run's id in the journal."""
        return self.journal.run_id

    @classmethod
    def start(
        cls,
        site: Site,
        runbook: Runbook,
        raw_params: Mapping[str, Any],
        *,
        run_id: str,
        services: Services,
        user: str,
        drill: bool,
        confirm: Confirm,
        on_event: EventSink,
        desk: IncidentDesk | None = None,
        incident: str = "",
    ) -> RunSession:
        """A new run: parameters resolved (UsageError before anything is written), journal
        created. With `desk`, a recovery started without an incident joins the open incident
        on its nodes or opens one (paging level 1)."""
        site.access.require_operate(user, "run runbooks")
        params = resolve_params(runbook, site, dict(raw_params))
        check_named_backups(site, runbook, dict(raw_params))
        if desk is not None and not incident:
            opened = desk.for_recovery(
                runbook.scenario, runbook.id, runbook.title, dict(raw_params), drill
            )
            incident = opened.id if opened else ""
        journal = RunJournal.create(site.state_dir, run_id, runbook.text)
        share_new_run(site, journal, runbook.text, user)
        model = RunModel.planned(runbook, site, params, run_id)
        executor = Executor(
            runbook,
            site,
            params,
            journal=journal,
            confirm=confirm,
            services=services,
            user=user,
            drill=drill,
            on_event=_feeding(model, on_event),
            raw_params=dict(raw_params),
            incident=incident,
        )
        return cls(site, runbook, executor, journal, model)

    @classmethod
    def reattach(
        cls,
        site: Site,
        run_id: str,
        *,
        services: Services,
        user: str,
        confirm: Confirm,
        on_event: EventSink,
    ) -> RunSession:
        """An interrupted or waiting run picked up where its journal stops (`run --resume`)."""
        point = open_resume(site, run_id, user)
        runbook, summary, params, journal = (
            point.runbook,
            point.summary,
            point.params,
            point.journal,
        )
        model = RunModel.from_records(runbook, site, params, run_id, summary.records)
        executor = Executor(
            runbook,
            site,
            params,
            journal=journal,
            confirm=confirm,
            services=services,
            user=user,
            drill=summary.drill,
            on_event=_feeding(model, on_event),
            prior=summary.instances,
            raw_params=summary.params,
        )
        return cls(site, runbook, executor, journal, model, resumed=True)

    async def run(self) -> RunOutcome:
        """Run to the end, a stop at a gate, or cancellation; the journal is closed after."""
        try:
            return await self.executor.run(resumed=self.resumed)
        except KconsoleError as exc:
            # A refused run-wide gate surfaces as an exception from the executor: show it as
            # the failure it is rather than as a crashed console.
            self.model.status = "failed"
            self.model.reason = str(exc).rstrip(".")
            return RunOutcome(
                self.run_id, "failed", self.model.reason, elapsed=self.executor.elapsed()
            )
        finally:
            await asyncio.to_thread(self.journal.close)

    async def note(self, user: str, text: str) -> dict[str, Any]:
        """An operator note: journaled with the run and audited (on the run's I/O thread)."""
        self.site.access.require_operate(user, "add notes to runs")
        return await self.executor.note(text, user)


def _feeding(model: RunModel, on_event: EventSink) -> EventSink:
    """The executor's event sink: fold into the model first, then tell the console."""

    def sink(record: dict[str, Any]) -> None:
        model.apply(record)
        on_event(record)

    return sink


def load_run_model(site: Site, run_id: str) -> RunModel:
    """A past run read back from its journal, for viewing (blocking I/O)."""
    rdir = run_dir(site.state_dir, run_id)
    summary = summarise(rdir)
    runbook = load_runbook(rdir / "runbook.toml", shown_as=f"{run_id}/runbook.toml")
    try:
        params = resolve_params(runbook, site, summary.params)
    except KconsoleError:
        params = {}  # the site changed since; steps still show, on the nodes the journal names
    model = RunModel.from_records(runbook, site, params, run_id, summary.records)
    model.status = summary.status
    return model
