"""`kconsole run`: one runbook run (or resume) on the terminal, without the TUI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from kconsole.actions.base import Confirm
from kconsole.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, KconsoleError, UsageError
from kconsole.executor import Executor, RunOutcome
from kconsole.gates import confirm_on_terminal, confirm_unattended, confirm_yes
from kconsole.incidents.desk import DELIVERY_TIMEOUT, IncidentDesk
from kconsole.journal import RunJournal, new_run_id, run_dir, summarise
from kconsole.recovery_check import restored_nodes, verify_recovery
from kconsole.reports import console_cpu, console_usage, write_evidence
from kconsole.runbook import load_runbook, resolve_runbook_path
from kconsole.runbook.model import Runbook
from kconsole.runbook.params import parse_param_args, resolve_params
from kconsole.runs import check_named_backups, open_resume
from kconsole.services import Services, run_once
from kconsole.shared.runs import share_new_run
from kconsole.site import Site, current_user

_SYMBOL = {
    "started": "..",
    "finished": "ok",
    "failed": "!!",
    "skipped": "--",
    "retrying": "<>",
    "gate": "??",
    "confirmed": "=>",
    "approved": "+1",
    "refused": "xx",
}
EXIT_FOR_STATUS = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "aborted": EXIT_FAILED,
    "waiting": EXIT_INTERRUPTED,
    "interrupted": EXIT_INTERRUPTED,
}


def human_line(record: dict[str, Any]) -> str | None:
    """One readable line for a journal record, or None to say nothing."""
    t = str(record.get("time", ""))[11:19]
    if record.get("type") == "note":
        return f"{t} note by {record.get('user', '?')}: {record.get('text', '')}"
    if record.get("type") != "step" and record.get("type") != "run":
        return None
    if record.get("type") == "run":
        ev = record.get("event")
        if ev == "created":
            drill = " (drill)" if record.get("drill") else ""
            return f"{t} run {record['run']}: {record.get('title') or record.get('runbook')}{drill}"
        if ev == "resumed":
            return f"{t} run {record['run']} resumed"
        if ev == "warning":
            return f"{t} warning: {record.get('reason', '')}"
        reason = f": {record['reason']}" if record.get("reason") else ""
        return f"{t} run {record['run']} {record.get('status')}{reason}"
    ev = str(record.get("event"))
    where = f" [{record['node']}]" if record.get("node") else ""
    if ev == "output":
        return f"{t}    {record['step']}{where} | {record.get('text', '')}"
    extra = ""
    if ev == "failed" or ev == "skipped" or ev == "retrying":
        extra = f": {record.get('reason', '')}"
    elif ev == "finished":
        extra = f" ({record.get('duration_s', 0)}s)" + (
            f" {record['summary']}" if record.get("summary") else ""
        )
    elif ev == "gate":
        extra = f": {record.get('question', '')}"
    elif ev == "confirmed":
        extra = f" by {record.get('by', '')}"
    elif ev == "approved":
        extra = (
            f" by {record.get('by', '')} ({record.get('count', '?')} of {record.get('of', '?')})"
        )
    elif ev == "started" and int(record.get("attempt", 1)) > 1:
        extra = f" (attempt {record['attempt']})"
    return f"{t} {_SYMBOL.get(ev, '  ')} {record['step']}{where} {ev}{extra}"


def event_printer(
    as_json: bool, printer: Callable[[str], None]
) -> Callable[[dict[str, Any]], None]:
    """The run's journal events for the terminal: one JSON line per step event with
    `--json`, else the human line of every event that has one."""

    def on_event(record: dict[str, Any]) -> None:
        if as_json:
            if record.get("type") == "step":
                printer(json.dumps(record, ensure_ascii=False))
        else:
            line = human_line(record)
            if line:
                printer(line)

    return on_event


def run_headless(
    *,
    site: Site,
    runbook: str,
    params: list[str],
    yes: bool,
    drill: bool,
    as_json: bool,
    resume: str | None,
    printer: Callable[[str], None],
    incident: str = "",
    user: str | None = None,
) -> int:
    """Run or resume; returns the exit code for the run's final status. `user` is the
    acting account (default: `current_user()`; tests name two different ones)."""
    user = user or current_user()
    site.access.require_operate(user, "run runbooks")
    site_runbooks = site.base_dir / "runbooks"
    if incident:
        IncidentDesk(site, user=user).get(incident)  # an unknown id: exit 2 before any journal
    prior = None
    if resume:
        point = open_resume(site, resume, user)
        rb = point.runbook
        try:
            if (
                runbook != rb.id
                and load_runbook(resolve_runbook_path(runbook, [site_runbooks])).id != rb.id
            ):
                raise UsageError(f"run {resume} ran runbook {rb.id}, not {runbook}.")
            if params:
                raise UsageError(
                    "--param cannot change a resumed run; it keeps the parameters it started with."
                )
        except BaseException:
            point.journal.close()
            raise
        raw_params: dict[str, Any] = point.raw_params
        resolved = point.params
        drill = point.summary.drill
        prior = point.summary.instances
        run_id = resume
        journal = point.journal
    else:
        rb = load_runbook(resolve_runbook_path(runbook, [site_runbooks]))
        raw_params = parse_param_args(params)
        resolved = resolve_params(rb, site, raw_params)
        check_named_backups(site, rb, raw_params)
        run_id = new_run_id()
        journal = RunJournal.create(site.state_dir, run_id, rb.text)
        share_new_run(site, journal, rb.text, user)

    confirm: Confirm
    if yes:
        confirm = confirm_yes
    elif sys.stdin.isatty():
        confirm = confirm_on_terminal
    else:
        confirm = confirm_unattended

    on_event = event_printer(as_json, printer)
    services = Services.for_site(site)
    executor = Executor(
        rb,
        site,
        resolved,
        journal=journal,
        confirm=confirm,
        services=services,
        user=user,
        drill=drill,
        on_event=on_event,
        prior=prior,
        raw_params=raw_params,
        incident=incident,
    )
    cpu_before = console_cpu()
    try:
        outcome = _drive(executor, resumed=bool(resume), services=services)
    finally:
        journal.close()
    if outcome is not None and outcome.status == "succeeded":
        _check_recovered(site, run_id, rb, printer if not as_json else None)
    with contextlib.suppress(OSError):
        # Measured even for a failed or interrupted run: the report's System Resource Usage.
        write_evidence(site, run_id, console_resources=console_usage(cpu_before))
    if outcome is None:
        if not as_json:
            printer(
                f"run {run_id} interrupted; resume with: kconsole run {rb.id} --resume {run_id}"
            )
        return EXIT_INTERRUPTED
    if outcome.status == "waiting" and not as_json:
        printer(
            f"run {run_id} stopped at a gate; resume with: kconsole run {rb.id} --resume {run_id}"
        )
    return EXIT_FOR_STATUS.get(outcome.status, EXIT_FAILED)


def _check_recovered(
    site: Site, run_id: str, rb: Runbook, printer: Callable[[str], None] | None
) -> None:
    """After a run that restored backups onto nodes succeeded: compare those nodes' heights
    with their peers' and keep it as the run's evidence (the report's "Data Consistency")."""
    nodes = restored_nodes(summarise(run_dir(site.state_dir, run_id)), rb)
    if not nodes:
        return
    try:
        check = run_once(site, lambda services: verify_recovery(site, run_id, nodes, services))
    except (KeyboardInterrupt, OSError) as exc:
        # The run itself succeeded; the report will say no consistency check ran.
        if printer:
            printer(f"consistency check of {', '.join(nodes)} did not complete ({exc!r})")
        return
    if printer:
        for n in check["nodes"]:
            lag = "no height" if n["lag_blocks"] is None else f"{n['lag_blocks']} blocks behind"
            verdict = "consistent" if n["ok"] else "NOT consistent"
            printer(
                f"consistency: {n['node']} {lag} its peers' highest "
                f"(limit {check['limit_blocks']}): {verdict}"
            )


PAGING_INTERVAL = 30.0
"""Seconds between escalation checks while a headless run goes on."""


async def _keep_paging(desk: IncidentDesk, services: Services) -> None:
    """While a run goes on, page any incident level that falls due (a headless run is one
    of the things that advance escalation) and retry the outbox."""
    while True:
        with contextlib.suppress(OSError, KconsoleError):
            await desk.tick()
        # Real time, not the services' clock: a test's fake clock must not spin this loop.
        await asyncio.sleep(PAGING_INTERVAL)


def install_stop_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """SIGINT, SIGTERM and SIGHUP (the SSH session dropped) cancel the run, which journals
    itself as interrupted and resumable."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)


def _drive(executor: Executor, resumed: bool, services: Services) -> RunOutcome | None:
    """Run the executor on a fresh loop; signals cancel it into a resumable stop."""

    async def main() -> RunOutcome | None:
        task = asyncio.create_task(executor.run(resumed=resumed))
        loop = asyncio.get_running_loop()
        install_stop_signals(loop, task)
        desk = IncidentDesk(executor.site, services.clock, executor.user)
        pager = asyncio.create_task(_keep_paging(desk, services))
        lease = getattr(executor.journal.mirror, "lease", None)
        if lease is not None:
            # Another console took the run over (this one's renewals failed for a whole
            # lease): stop here, resumable, rather than drive the run from two places.
            lease.on_lost = lambda _why: loop.call_soon_threadsafe(task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return None
        finally:
            pager.cancel()
            # The interrupted run's announcement was only queued: one bounded try now.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(desk.deliver(), DELIVERY_TIMEOUT * 2)
            await services.close()

    return asyncio.run(main())
