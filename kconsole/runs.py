"""Picking a run back up: what the CLI's `--resume` and the console's re-attach share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kconsole.errors import UsageError
from kconsole.journal import RunJournal, RunSummary, run_dir, summarise
from kconsole.runbook import load_runbook
from kconsole.runbook.model import Runbook
from kconsole.runbook.params import resolve_params
from kconsole.shared.runs import take_over
from kconsole.site import Site


@dataclass
class ResumePoint:
    """A stopped run, ready to continue: its own runbook copy, parameters and journal."""

    runbook: Runbook
    summary: RunSummary
    params: dict[str, Any]
    journal: RunJournal

    @property
    def raw_params(self) -> dict[str, Any]:
        """The parameters as the operator gave them when the run started."""
        return self.summary.params


def open_resume(site: Site, run_id: str, user: str) -> ResumePoint:
    """Check the run may be resumed by `user`, and open its journal (taking its lock)."""
    site.access.require_operate(user, "resume runs")
    if "/" in run_id or run_id.startswith("."):
        run_dir(site.state_dir, run_id)  # the usual "no run" sentence
    # With a shared store: the lease first (refused while another console drives the
    # run), then the shared journal replayed here, and only then the local journal read.
    shared = take_over(site, run_id, user)
    try:
        rdir = run_dir(site.state_dir, run_id)
        summary = summarise(rdir)
        if summary.status == "running":
            raise UsageError(f"run {run_id} is still running in another kconsole process.")
        if summary.status == "succeeded":
            raise UsageError(f"run {run_id} already succeeded; there is nothing to resume.")
        runbook = load_runbook(rdir / "runbook.toml", shown_as=f"{run_id}/runbook.toml")
        params = resolve_params(runbook, site, summary.params)
        journal = RunJournal(site.state_dir, run_id)
        journal.open()
    except BaseException:
        if shared is not None:
            shared.mirror.close(timeout=0)
            if shared.lease is not None:
                shared.lease.release()
        raise
    journal.mirror = shared
    return ResumePoint(runbook, summary, params, journal)


def check_named_backups(site: Site, runbook: Runbook, raw_params: dict[str, Any]) -> None:
    """Before a run starts: every backup parameter that names a backup by id must name one
    the catalog holds (UsageError with a suggestion, exit 2). `latest` and `before:TIME`
    are chosen per node when the step runs."""
    values = {
        name: str(raw_params.get(name, p.default) or "")
        for name, p in runbook.params.items()
        if p.type == "backup"
    }
    named = {
        name: value
        for name, value in values.items()
        if value not in ("", "latest") and not value.startswith("before:")
    }
    if not named:
        return
    from kconsole.services import run_once

    async def listing(services: Any) -> Any:
        return await services.backups(site).catalog()

    catalog = run_once(site, listing)
    for name, bid in named.items():
        try:
            catalog.find(bid)
        except UsageError as exc:
            where = f" (not listed: {', '.join(catalog.errors)})" if catalog.errors else ""
            raise UsageError(f"parameter {name}: {str(exc).rstrip('.')}{where}.") from None
