"""The async executor: runs a runbook's step graph against a site, journaling every move.

Steps whose `needs` are done run concurrently; `for_each` fans a step out over nodes
under its `concurrency`; each instance gets its gate, timeout, retries with exponential
backoff and `expect` check; a failure aborts the run, is tolerated (`continue`), or runs
a rollback step first. Each transition is fsynced to the journal before it is acted on,
so a resumed run never repeats a finished step and asks before repeating one that was in
flight when the process died.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kconsole.actions import REGISTRY
from kconsole.actions.base import ActionResult, Confirm, StepContext
from kconsole.actions.gate import GateRefused, GateUnanswered
from kconsole.audit import AuditLog
from kconsole.config import format_duration
from kconsole.errors import KconsoleError, UsageError
from kconsole.gates import GateRequest
from kconsole.incidents.desk import IncidentDesk, incident_of_run
from kconsole.journal import InstanceState, RunJournal, iso
from kconsole.runbook.model import Runbook, Step
from kconsole.runbook.params import step_nodes
from kconsole.runbook.template import NodeRef, RunRef, SiteRef, render, render_value
from kconsole.services import Services
from kconsole.site import Site

MAX_BACKOFF = 300.0
R = TypeVar("R")
EventSink = Callable[[dict[str, Any]], None]


class _StopRun(Exception):
    """Internal: a gate could not be answered; stop the run resumable."""


class _SkipStep(Exception):
    """Internal: at a drill's gate the operator chose to skip the step (later steps run)."""


@dataclass
class RunOutcome:
    """How a run ended."""

    run_id: str
    status: str
    reason: str = ""
    failed: list[str] = field(default_factory=list)
    elapsed: float = 0.0


@dataclass
class _Instance:
    step: Step
    node: NodeRef | None

    @property
    def node_name(self) -> str | None:
        return self.node.name if self.node else None


class Executor:
    """Runs one runbook once (or resumes it), writing the journal as it goes."""

    def __init__(
        self,
        runbook: Runbook,
        site: Site,
        params: dict[str, Any],
        *,
        journal: RunJournal,
        confirm: Confirm,
        services: Services | None = None,
        user: str = "",
        drill: bool = False,
        on_event: EventSink | None = None,
        prior: dict[tuple[str, str | None], InstanceState] | None = None,
        raw_params: dict[str, Any] | None = None,
        incident: str = "",
    ) -> None:
        self.runbook = runbook
        self.site = site
        self.params = params
        self.raw_params = raw_params or {}
        self.journal = journal
        self.confirm = confirm
        self.services = services or Services()
        self.user = user
        self.drill = drill
        self.on_event = on_event
        self.prior = prior or {}
        self.run_id = journal.run_id
        self.audit = AuditLog(site.state_dir)
        self._io_thread: ThreadPoolExecutor | None = None
        self._aborting: str = ""
        self._abort_status = "failed"
        self._stopped: str = ""
        self._abort_asked = False
        self._resume = asyncio.Event()
        self._resume.set()
        self._failed: list[str] = []
        self._started_at = 0.0
        self.incident = incident
        """The incident this run belongs to ("" for none); a resumed run keeps its own."""
        self.announce = True
        """Tell the channel how the run ended (through the outbox)."""

    # -- operator controls (the TUI calls these) --------------------------------------

    def abort(self, reason: str = "aborted by the operator") -> None:
        """Start no new step; running ones finish; the run ends `aborted`."""
        self._aborting = reason
        self._abort_status = "aborted"
        self._resume.set()

    def pause(self) -> None:
        """Hold new steps until `unpause`; running ones carry on."""
        self._resume.clear()

    def unpause(self) -> None:
        """Let new steps start again."""
        self._resume.set()

    async def note(self, text: str, user: str | None = None) -> dict[str, Any]:
        """An operator note on the run's timeline: journaled and audited (the text is
        the operator's own; only its length goes to the audit log)."""
        who = user or self.user
        self.site.access.require_operate(who, "add notes to runs")
        record = {
            "type": "note",
            "run": self.run_id,
            "user": who,
            "text": text,
            "time": iso(self.services.clock.now()),
        }
        await self._emit(record)
        await self._audit(who, "run.note", self.run_id, chars=len(text))
        return record

    @property
    def paused(self) -> bool:
        """Whether the run is holding new steps."""
        return not self._resume.is_set()

    def elapsed(self) -> float:
        """Seconds since this run (or resume) started."""
        return self.services.clock.monotonic() - self._started_at if self._started_at else 0.0

    # -- events --------------------------------------------------------------------------

    async def _io(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run journal or audit I/O (fsync, the audit log's lock) on the run's own I/O
        thread, one call at a time in the order made: records stay in order, and the event
        loop (the console's) never waits on a disk or on a lock another process holds."""
        if self._io_thread is None:
            self._io_thread = ThreadPoolExecutor(1, thread_name_prefix=f"run-{self.run_id}-io")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_thread, functools.partial(fn, *args, **kwargs))

    async def _audit(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        await self._io(self.audit.append, actor, action, target, **detail)

    async def _emit(self, record: dict[str, Any], durable: bool = True) -> None:
        await self._io(self.journal.write, record, durable=durable)
        if self.on_event is not None:
            self.on_event(record)

    async def _step_event(
        self,
        inst: _Instance | Step,
        node: str | None,
        event: str,
        durable: bool = True,
        **extra: Any,
    ) -> None:
        step = inst.step if isinstance(inst, _Instance) else inst
        record = {
            "type": "step",
            "run": self.run_id,
            "step": step.id,
            "node": node,
            "event": event,
            "time": iso(self.services.clock.now()),
        }
        record.update(extra)
        await self._emit(record, durable)

    # -- the run -------------------------------------------------------------------------

    async def run(self, resumed: bool = False) -> RunOutcome:
        """Run to the end, a stop at a gate, or cancellation (re-raised after journaling)."""
        # The role check lives here, not only in the CLI or the console: every way in meets it.
        self.site.access.require_operate(self.user, "run runbooks")
        # An operator is stopped before the first step, not halfway through an incident.
        for step in self.runbook.steps.values():
            action = REGISTRY.get(step.action)
            if action is not None and action.admin_only:
                self.site.access.require_admin(
                    self.user,
                    f"run {self.runbook.id}, whose step {step.id} would {action.admin_only}",
                )
        self._started_at = self.services.clock.monotonic()
        now = iso(self.services.clock.now())
        if resumed and not self.incident:
            self.incident = incident_of_run(self.journal.path)
        desk = IncidentDesk(self.site, self.services.clock, self.user)
        if self.incident:
            try:
                desk.get(self.incident)  # an unknown id is refused before anything runs
            except UsageError:
                if not resumed:
                    raise
                # Taken over from another console, whose incident this console does not
                # have (incidents are not shared yet): the recovery goes on, unlinked here.
                self._warn(
                    f"incident {self.incident} is not on this console; this run goes on "
                    "without updating it here"
                )
                self.incident = ""
        if resumed:
            await self._emit(
                {
                    "type": "run",
                    "event": "resumed",
                    "run": self.run_id,
                    "time": now,
                    "user": self.user,
                }
            )
        else:
            await self._emit(
                {
                    "type": "run",
                    "event": "created",
                    "run": self.run_id,
                    "runbook": self.runbook.id,
                    "title": self.runbook.title,
                    "path": self.runbook.path,
                    "params": self.raw_params,
                    "drill": self.drill,
                    "user": self.user,
                    "time": now,
                    "rto_s": self.runbook.rto,
                    "site": self.site.name,
                    "incident": self.incident or None,
                }
            )
        if self.incident:
            desk.link_run(self.incident, self.run_id, self.runbook.id)
        await self._audit(
            self.user,
            "run.resume" if resumed else "run.start",
            self.run_id,
            runbook=self.runbook.id,
            drill=self.drill,
            params=self.raw_params,
        )
        try:
            status, reason = await self._schedule()
        except asyncio.CancelledError:
            await self._finish(
                "interrupted",
                f"stopped by a signal or a closed session; resume with --resume {self.run_id}",
                final=False,
            )
            # Queued only: whoever delivers next (the console, a run, `incident tick`) sends it.
            self._announce(desk)
            raise
        await self._finish(status, reason, final=status not in ("waiting", "interrupted"))
        if status != "waiting":
            self._announce(desk)
            await self._deliver(desk)
        await self._anchor_audit()
        return RunOutcome(self.run_id, status, reason, list(self._failed), self.elapsed())

    def _announce(self, desk: IncidentDesk) -> None:
        """Queue how the run ended for the channel and its incident (never fails the run)."""
        if not self.announce:
            return
        try:
            desk.run_ended(self.journal.path)
        except (OSError, KconsoleError) as exc:
            self._warn(f"the run's ending was not queued for the channel: {exc}")

    async def _deliver(self, desk: IncidentDesk) -> None:
        """Try the outbox once; what is not delivered stays there for the next try."""
        try:
            results = await desk.deliver()
        except (OSError, KconsoleError) as exc:
            self._warn(f"notifications not sent yet: {exc}")
            return
        for r in results:
            if not r.delivered:
                self._warn(f"notification not delivered yet ({r.error}); kept in the outbox")

    def _warn(self, reason: str) -> None:
        if self.on_event is not None:
            self.on_event(
                {
                    "type": "run",
                    "event": "warning",
                    "run": self.run_id,
                    "time": iso(self.services.clock.now()),
                    "reason": reason,
                }
            )

    async def _finish(self, status: str, reason: str, final: bool) -> None:
        await self._emit(
            {
                "type": "run",
                "event": "finished" if final else "stopped",
                "run": self.run_id,
                "status": status,
                "reason": reason,
                "time": iso(self.services.clock.now()),
                "elapsed_s": round(self.elapsed(), 3),
            }
        )
        await self._audit(
            self.user,
            "run.finish" if final else "run.stop",
            self.run_id,
            result=status,
            reason=reason,
        )

    async def _anchor_audit(self) -> None:
        """Copy the audit chain's head off-host (best effort; a failure is shown, not fatal)."""
        if not any(loc.type != "local" for loc in self.site.locations.values()):
            return
        from kconsole.anchor import publish

        try:
            problems = await publish(self.audit, self.services.backups(self.site).stores())
        except Exception as exc:  # noqa: BLE001 - anchoring must never turn a run's result
            problems = [f"{exc.__class__.__name__}: {exc}"]
        for problem in problems:
            if self.on_event is not None:
                self.on_event(
                    {
                        "type": "run",
                        "event": "warning",
                        "run": self.run_id,
                        "time": iso(self.services.clock.now()),
                        "reason": f"audit checkpoint not stored off-host in {problem}",
                    }
                )

    async def _schedule(self) -> tuple[str, str]:
        rollback = self.runbook.rollback_steps
        pending = [s for s in self.runbook.steps.values() if s.id not in rollback]
        outcome: dict[str, str] = {}
        running: dict[asyncio.Task[str], Step] = {}
        try:
            while pending or running:
                if not self._aborting and not self._stopped:
                    await self._resume.wait()
                    for step in list(pending):
                        if not all(n in outcome for n in step.needs):
                            continue
                        pending.remove(step)
                        blocked = [n for n in step.needs if outcome[n] in ("failed", "skipped")]
                        if blocked:
                            await self._skip(
                                step, f"needs {blocked[0]}, which {outcome[blocked[0]]}"
                            )
                            outcome[step.id] = "skipped"
                            continue
                        running[asyncio.create_task(self._run_step(step), name=step.id)] = step
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    exc = task.exception()
                    if isinstance(exc, _StopRun):
                        self._stopped = str(exc)
                        outcome[step.id] = "stopped"
                    elif exc is not None:
                        raise exc
                    else:
                        outcome[step.id] = task.result()
        except BaseException:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if self._stopped:
            return "waiting", self._stopped
        for step in pending:
            await self._skip(step, self._aborting or "not reached")
        if self._aborting:
            return self._abort_status, self._aborting
        return "succeeded", ""

    async def _skip(self, step: Step, reason: str) -> None:
        for node in self._nodes_for(step, quiet=True):
            await self._step_event(step, node.name if node else None, "skipped", reason=reason)

    def _context(self, node: NodeRef | None) -> dict[str, Any]:
        ctx: dict[str, Any] = dict(self.params)
        ctx["run"] = RunRef(self.run_id, self.drill, self.runbook.id, self.user)
        ctx["site"] = SiteRef(self.site.name, self.site.health_url)
        ctx["now"] = self.services.clock.now()
        if node is not None:
            ctx["node"] = node
        return ctx

    def _nodes_for(self, step: Step, quiet: bool = False) -> list[NodeRef | None]:
        try:
            return step_nodes(
                step, self.site, self.params, lambda t: render(t, self._context(None))
            )
        except Exception:
            if quiet:
                return [None]
            raise

    async def _run_step(self, step: Step) -> str:
        """Run every instance of a step; 'ok', 'failed' (run aborting) or 'continued'."""
        try:
            nodes = self._nodes_for(step)
        except Exception as exc:  # noqa: BLE001 - a bad node reference fails the step, not the console
            await self._step_event(step, None, "failed", reason=str(exc))
            return await self._on_failure(step, None, str(exc))
        if step.gate and "{node" not in step.gate:
            try:
                await self._gate(step, None, nodes)
            except _SkipStep as exc:
                for node in nodes:
                    await self._step_event(
                        step, node.name if node else None, "skipped", reason=str(exc)
                    )
                return "continued"
            except GateRefused as exc:
                for node in nodes:
                    await self._step_event(
                        step, node.name if node else None, "skipped", reason=str(exc).rstrip(".")
                    )
                return "failed"
        limit = asyncio.Semaphore(step.concurrency or len(nodes) or 1)
        instances = [_Instance(step, n) for n in nodes]

        async def one(inst: _Instance) -> str:
            async with limit:
                if self._aborting or self._stopped:
                    await self._step_event(
                        inst, inst.node_name, "skipped", reason=self._aborting or self._stopped
                    )
                    return "skipped"
                return await self._run_instance(inst)

        results = await asyncio.gather(*(one(i) for i in instances), return_exceptions=True)
        for r in results:
            if isinstance(r, _StopRun):
                raise r
            if isinstance(r, BaseException):
                raise r
        if "failed" in results:
            return "failed"
        if "continued" in results:
            return "continued"
        if all(r == "skipped" for r in results):
            return "skipped"
        return "ok"

    async def _gate(self, step: Step, node: NodeRef | None, nodes: list[NodeRef | None]) -> None:
        node_name = node.name if node else None
        prior = self.prior.get((step.id, node_name))
        if prior is not None and (prior.confirmed or prior.last == "finished"):
            return
        assert step.gate is not None
        ctx = self._context(node)
        if step.gate.startswith("type:"):
            kind, expected = "type", render(step.gate[5:], ctx)
        else:
            kind, expected = "confirm", ""
        where = ", ".join(n.name for n in nodes if n) if node is None else node.name
        title = render(step.title, ctx) if step.title else step.id
        request = GateRequest(
            run_id=self.run_id,
            step_id=step.id,
            title=title,
            kind=kind,  # type: ignore[arg-type]
            node=where or None,
            expected=expected,
            guide=step.guide,
            destructive=REGISTRY[step.action].destructive,
            skippable=self.drill,
            approvers=step.approvers,
            approved_by=list(prior.approved_by) if prior is not None else [],
        )
        await self._step_event(step, node_name, "gate", question=request.question(), kind=kind)
        answer = await self.confirm(request)
        if answer is None:
            raise _StopRun(f"waiting at gate {step.id}: {request.question()}")
        if not answer and not self._abort_asked:
            answer = await self._confirm_abort(step, node_name, request)
        by = request.answered_by or self.user
        if not answer:
            await self._step_event(step, node_name, "refused", by=by)
            await self._audit(self.user, "gate.refuse", f"{self.run_id}/{step.id}", node=node_name)
            self.abort(f"{self.user} refused the gate of {step.id} and chose to abort the run")
            raise GateRefused(f"the operator refused the gate of {step.id}.")
        if request.skipped and request.skippable:
            await self._audit(self.user, "gate.skip", f"{self.run_id}/{step.id}", node=node_name)
            raise _SkipStep(f"skipped by {by} in the drill walkthrough")
        if step.approvers > 1:
            await self._approve(step, node_name, request, by)
        await self._step_event(step, node_name, "confirmed", by=by, note=request.note)
        await self._audit(
            self.user, "gate.confirm", f"{self.run_id}/{step.id}", node=node_name, by=by
        )

    async def _confirm_abort(self, step: Step, node_name: str | None, gate: GateRequest) -> bool:
        """The run's first refused gate asks "abort the run?" (a reflexive Enter on Cancel
        must not end a recovery): yes aborts; no asks the gate again, and a second refusal
        aborts. Returns the gate's final answer."""
        self._abort_asked = True
        ask = GateRequest(
            run_id=self.run_id,
            step_id=step.id,
            title=gate.title,
            kind="confirm",
            node=gate.node,
            prompt=f"You refused {gate.title}{' on ' + gate.node if gate.node else ''}. "
            "Abort the run? (no: back to the gate)",
        )
        await self._step_event(step, node_name, "gate", question=ask.question(), kind="abort")
        really = await self.confirm(ask)
        if really is None:
            raise _StopRun(f"waiting at gate {step.id}: {ask.question()}")
        if really:
            gate.answered_by = ask.answered_by or gate.answered_by
            return False
        await self._step_event(step, node_name, "gate", question=gate.question(), kind=gate.kind)
        again = await self.confirm(gate)
        if again is None:
            raise _StopRun(f"waiting at gate {step.id}: {gate.question()}")
        return bool(again)

    async def _approve(
        self, step: Step, node_name: str | None, request: GateRequest, by: str
    ) -> None:
        """One approval of a two-person gate, by the acting account (`--yes` included: it
        approves as the account that gave it). Returns once the gate has all it needs;
        until then the run stops there, waiting for another account."""
        approved = request.approved_by
        if self.user in approved:
            raise _StopRun(
                f"waiting at gate {step.id}: {self.user} approved it already and cannot approve "
                f"it twice; {request.approval_line()}"
            )
        approved.append(self.user)
        await self._step_event(
            step,
            node_name,
            "approved",
            by=self.user,
            via=by,
            count=len(approved),
            of=step.approvers,
        )
        await self._audit(
            self.user,
            "gate.approve",
            f"{self.run_id}/{step.id}",
            node=node_name,
            count=len(approved),
            of=step.approvers,
        )
        prior = self.prior.get((step.id, node_name))
        if prior is not None:
            prior.approved_by = list(approved)
        if len(approved) < step.approvers:
            raise _StopRun(f"waiting at gate {step.id}: {request.approval_line()}")

    async def _ask_rerun(self, inst: _Instance, prior: InstanceState) -> bool:
        what = (
            "was in flight when the run stopped" if prior.in_flight else f"failed ({prior.reason})"
        )
        request = GateRequest(
            run_id=self.run_id,
            step_id=inst.step.id,
            title=render(inst.step.title, self._context(inst.node))
            if inst.step.title
            else inst.step.id,
            kind="rerun",
            node=inst.node_name,
            prompt=f"{inst.step.id}{' on ' + inst.node_name if inst.node_name else ''} {what}; run it again?",
        )
        await self._step_event(inst, inst.node_name, "gate", question=request.prompt, kind="rerun")
        answer = await self.confirm(request)
        if answer is None:
            raise _StopRun(f"waiting to re-run {inst.step.id}: {request.prompt}")
        if answer:
            await self._step_event(
                inst, inst.node_name, "confirmed", by=request.answered_by or self.user, rerun=True
            )
            await self._audit(
                self.user, "step.rerun", f"{self.run_id}/{inst.step.id}", node=inst.node_name
            )
        return bool(answer)

    async def _run_instance(self, inst: _Instance, rollback: bool = False) -> str:
        step = inst.step
        prior = self.prior.get((step.id, inst.node_name))
        if prior is not None:
            if prior.last == "finished":
                return "ok"
            if (prior.in_flight or prior.last == "failed") and not await self._ask_rerun(
                inst, prior
            ):
                reason = "the operator chose not to re-run it"
                await self._step_event(inst, inst.node_name, "failed", reason=reason)
                self.abort(f"{step.id} was not re-run")
                return "failed"
        try:
            if step.gate and "{node" in step.gate:
                await self._gate(step, inst.node, [inst.node])
        except _SkipStep as exc:
            await self._step_event(inst, inst.node_name, "skipped", reason=str(exc))
            return "continued"
        except GateRefused as exc:
            await self._step_event(inst, inst.node_name, "skipped", reason=str(exc))
            return "failed"
        action_cls = REGISTRY[step.action]
        attempts = step.retries + 1
        reason = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                delay = min(MAX_BACKOFF, step.backoff * 2 ** (attempt - 2))
                await self._step_event(
                    inst, inst.node_name, "retrying", attempt=attempt, reason=reason, delay_s=delay
                )
                await self.services.clock.sleep(delay)
            started: dict[str, Any] = {"attempt": attempt, "action": step.action}
            command = self.rendered_command(step, inst.node)
            if command:
                started["command"] = command  # the report's timeline shows it as run
            await self._step_event(inst, inst.node_name, "started", **started)
            t0 = self.services.clock.monotonic()
            try:
                result = await self._attempt(inst, action_cls())
                reason = self._check_expect(step, result)
            except GateUnanswered as exc:
                raise _StopRun(f"waiting at gate {step.id}: {exc}") from None
            except GateRefused as exc:
                await self._step_event(inst, inst.node_name, "failed", reason=str(exc))
                self.abort(str(exc).rstrip("."))
                return "failed"
            except TimeoutError:
                reason = f"timed out after {format_duration(step.timeout or 0)}"
                result = None
            except KconsoleError as exc:  # OperationFailed, or a bad value only known now
                reason = str(exc).rstrip(".")
                result = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug in an action must not kill the run
                reason = f"internal error in {step.action}: {exc.__class__.__name__}: {exc}"
                result = None
            duration = round(self.services.clock.monotonic() - t0, 3)
            if not reason and result is not None:
                await self._step_event(
                    inst,
                    inst.node_name,
                    "finished",
                    exit_code=result.exit_code,
                    duration_s=duration,
                    summary=result.summary,
                    data=_jsonable(result.data),
                )
                return "ok"
            extra: dict[str, Any] = {"exit_code": result.exit_code} if result is not None else {}
            if attempt == attempts:
                await self._step_event(
                    inst,
                    inst.node_name,
                    "failed",
                    reason=reason,
                    duration_s=duration,
                    attempt=attempt,
                    **extra,
                )
        label = f"{step.id}{' on ' + inst.node_name if inst.node_name else ''}"
        self._failed.append(label)
        if rollback:
            return "failed"
        return await self._on_failure(step, inst.node, f"{label} failed: {reason}")

    async def _on_failure(self, step: Step, node: NodeRef | None, reason: str) -> str:
        """Apply the step's on_failure: carry on, abort, or roll back then abort."""
        if step.on_failure == "continue":
            return "continued"
        if not self._aborting:
            self._aborting = reason
            self._abort_status = "failed"
        if step.on_failure != "abort":
            rollback = self.runbook.steps[step.on_failure]
            targets = self._nodes_for(rollback) if (rollback.for_each or rollback.node) else [node]
            for target in targets:
                await self._step_event(
                    rollback,
                    target.name if target else None,
                    "output",
                    durable=False,
                    stream="stdout",
                    text=f"rolling back after {step.id} failed",
                )
                await self._run_instance(_Instance(rollback, target), rollback=True)
        return "failed"

    def rendered_text(self, text: str, node: NodeRef | None = None) -> str:
        """A template (a step's title, say) as this run renders it on `node`; the text as
        written if it cannot be rendered."""
        try:
            return render(text, self._context(node))
        except Exception:  # noqa: BLE001 - shown to the operator as written instead
            return text

    def rendered_command(self, step: Step, node: NodeRef | None) -> str | None:
        """The step's `command` as it runs on `node` (journaled with `started`, shown in the
        drill walkthrough and the report's timeline); None for steps without one."""
        raw = step.fields.get("command")
        spec = REGISTRY[step.action].fields.get("command")
        if not isinstance(raw, str) or spec is None:
            return None
        try:
            return str(render_value(raw, self._context(node), quote=spec.kind == "command"))
        except Exception:  # noqa: BLE001 - the step itself reports a bad template when it runs
            return None

    async def _attempt(self, inst: _Instance, action: Any) -> ActionResult:
        step = inst.step
        ctx_vars = self._context(inst.node)
        values: dict[str, Any] = {}
        for name, spec in REGISTRY[step.action].fields.items():
            if name in step.fields:
                raw = step.fields[name]
                values[name] = (
                    render_value(raw, ctx_vars, quote=spec.kind == "command")
                    if spec.templated
                    else raw
                )
            elif spec.default is not None:
                values[name] = spec.default

        async def emit(stream: str, text: str) -> None:
            await self._step_event(
                inst, inst.node_name, "output", durable=False, stream=stream, text=text
            )

        ctx = StepContext(
            run_id=self.run_id,
            step=step,
            node=inst.node.node if inst.node else None,
            values=values,
            site=self.site,
            services=self.services,
            emit=emit,
            confirm=self.confirm,
            drill=self.drill,
            user=self.user,
            params=self.params,
        )
        if step.timeout:
            return await self.services.clock.wait_for(action.run(ctx), step.timeout)
        return await action.run(ctx)

    @staticmethod
    def _check_expect(step: Step, result: ActionResult) -> str:
        expect = step.expect
        codes = expect.exit if expect else (0,)
        code = 0 if result.exit_code is None else result.exit_code
        if code not in codes:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            detail = f": {tail[0][:200]}" if tail[0] else ""
            return f"exit code {code}, expected {' or '.join(map(str, codes))}{detail}"
        if expect and expect.stdout and not re.search(expect.stdout, result.stdout):
            return f"output does not match {expect.stdout!r}"
        if expect and expect.stderr and not re.search(expect.stderr, result.stderr):
            return f"error output does not match {expect.stderr!r}"
        return ""


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        out[k] = v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)
    return out
