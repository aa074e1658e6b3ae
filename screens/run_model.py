"""What the console shows of one run: every step on every node and its state, rebuilt from
the same journal records the executor writes, plus the RTO clock's arithmetic.

No Textual here: the model is fed records (live from the executor's `on_event`, or read
back from the journal) and the screens render it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kconsole.incidents.announce import host_unreachable
from kconsole.runbook.model import Runbook, Step
from kconsole.runbook.params import step_nodes
from kconsole.runbook.template import NodeRef, render
from kconsole.site import Site

StepState = Literal["waiting", "running", "gated", "done", "failed", "skipped"]
RtoLevel = Literal["ok", "amber", "red", "breached"]

OUTPUT_LINES = 2000
"""Lines of output kept per step instance for the screen (the journal keeps them all)."""

AMBER_AT = 0.8
"""Projected finish past this share of the RTO turns the clock amber."""

_EVENT_STATE: dict[str, StepState] = {
    "started": "running",
    "retrying": "running",
    "gate": "gated",
    "confirmed": "waiting",
    "refused": "failed",
    "finished": "done",
    "failed": "failed",
    "skipped": "skipped",
}


def parse_time(value: Any) -> datetime | None:
    """A journal timestamp (`2026-11-26T03:14:00.000Z`) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class StepRun:
    """One step on one node (or once, for a local step), as the operator follows it."""

    step: Step
    node: str | None
    title: str = ""
    """The step's title with its parameters filled in."""
    state: StepState = "waiting"
    attempt: int = 0
    question: str = ""
    reason: str = ""
    summary: str = ""
    confirmed_by: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))
    output_total: int = 0
    """Lines of output ever received (the deque keeps the last OUTPUT_LINES)."""
    version: int = 0
    """Bumped on every change, so a screen redraws only the rows that moved."""

    @property
    def over(self) -> bool:
        """Done, failed or skipped."""
        return self.state in ("done", "failed", "skipped")


@dataclass(frozen=True)
class RtoReading:
    """The RTO clock at one instant."""

    elapsed: float
    rto: float
    projected: float
    """Elapsed plus the estimate of what is left along the longest remaining path."""
    level: RtoLevel

    @property
    def fraction(self) -> float:
        """Elapsed as a share of the RTO (0 when the runbook has none)."""
        return self.elapsed / self.rto if self.rto else 0.0


def rto_level(elapsed: float, projected: float, rto: float) -> RtoLevel:
    """breached once elapsed passes the RTO; red when the projection does; amber past 80%."""
    if not rto:
        return "ok"
    if elapsed >= rto:
        return "breached"
    if projected > rto:
        return "red"
    if projected > AMBER_AT * rto:
        return "amber"
    return "ok"


class RunModel:
    """A run's step instances and status, folded from journal records."""

    def __init__(self, runbook: Runbook, run_id: str = "") -> None:
        self.runbook = runbook
        self.run_id = run_id
        self.status = "planned"
        self.reason = ""
        self.drill = False
        self.user = ""
        self.created_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.steps: dict[tuple[str, str | None], StepRun] = {}
        self.notes: list[str] = []
        self.version = 0
        self.params: dict[str, Any] = {}
        self.site: Site | None = None
        self.incident = ""
        """The incident the run belongs to ("" for none)."""

    def title_of(self, step: Step, node: str | None) -> str:
        """`step`'s title rendered as the executor renders it for `node`."""
        if not step.title:
            return step.action
        context = dict(self.params)
        if node is not None and self.site is not None and node in self.site.nodes:
            context["node"] = NodeRef(self.site.nodes[node])
        try:
            return render(step.title, context)
        except Exception:  # noqa: BLE001 - a title that cannot be filled in is shown as written
            return step.title

    # -- building ---------------------------------------------------------------------

    @classmethod
    def planned(
        cls, runbook: Runbook, site: Site, params: Mapping[str, Any], run_id: str = ""
    ) -> RunModel:
        """Every main step on the nodes it will run on, all waiting: the plan of a run."""
        model = cls(runbook, run_id)
        model.params = dict(params)
        model.site = site
        for step in runbook.main_steps():
            for node in planned_nodes(step, site, params):
                model.steps[(step.id, node)] = StepRun(step, node, model.title_of(step, node))
        return model

    @classmethod
    def from_records(
        cls,
        runbook: Runbook,
        site: Site,
        params: Mapping[str, Any],
        run_id: str,
        records: Iterable[dict[str, Any]],
    ) -> RunModel:
        """The plan, then every journal record applied: a past or interrupted run."""
        model = cls.planned(runbook, site, params, run_id)
        for record in records:
            model.apply(record)
        return model

    # -- folding records --------------------------------------------------------------

    def apply(self, record: dict[str, Any]) -> list[StepRun]:
        """Fold one journal record in; the step instances it changed."""
        self.version += 1
        if record.get("type") == "run":
            self._apply_run(record)
            return []
        if record.get("type") == "note":
            self.notes.append(
                f"{str(record.get('time', ''))[11:19]} {record.get('user', '')}: {record.get('text', '')}"
            )
            return []
        if record.get("type") != "step":
            return []
        changed = []
        for inst in self._targets(
            str(record.get("step")), record.get("node"), str(record.get("event"))
        ):
            self._apply_step(inst, record)
            inst.version += 1
            changed.append(inst)
        return changed

    def _apply_run(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "created":
            self.run_id = str(record.get("run", self.run_id))
            self.created_at = parse_time(record.get("time"))
            self.drill = bool(record.get("drill"))
            self.user = str(record.get("user", ""))
            self.incident = str(record.get("incident") or "")
            self.status = "running"
        elif event == "resumed":
            self.status = "running"
            self.finished_at = None
            self.reason = ""
        elif event in ("finished", "stopped"):
            self.status = str(record.get("status", "finished"))
            self.reason = str(record.get("reason", ""))
            if event == "finished":
                self.finished_at = parse_time(record.get("time"))

    def unreachable_node(self) -> str:
        """The node a failed run could not reach ("" when it failed otherwise or did not fail)."""
        if self.status != "failed":
            return ""
        for inst in self.steps.values():
            node = host_unreachable(inst.reason)
            if node:
                return node
        return host_unreachable(self.reason)

    def _targets(self, step_id: str, node: str | None, event: str) -> list[StepRun]:
        """The instances a record speaks of: a step-wide gate (node None) covers every node."""
        key = (step_id, node)
        if key in self.steps:
            return [self.steps[key]]
        if node is None:
            siblings = [s for (sid, _), s in self.steps.items() if sid == step_id]
            if siblings:
                if event in ("gate", "confirmed", "refused", "approved"):
                    return [s for s in siblings if not s.over]
                return siblings
        step = self.runbook.steps.get(step_id)
        if step is None:
            return []
        # A rollback step, or a node the plan could not foresee: shown from now on.
        inst = StepRun(step, node, self.title_of(step, node))
        self.steps[key] = inst
        return [inst]

    @staticmethod
    def _apply_step(inst: StepRun, record: dict[str, Any]) -> None:
        event = str(record.get("event"))
        when = parse_time(record.get("time"))
        if event == "output":
            stream = record.get("stream", "stdout")
            text = str(record.get("text", ""))
            inst.output.append(text if stream == "stdout" else f"[{stream}] {text}")
            inst.output_total += 1
            return
        if event == "approved":
            # A two-person gate: who approved so far shows with the step until it is confirmed.
            inst.reason = (
                f"approved by {record.get('by', '?')} ({record.get('count')} of {record.get('of')})"
            )
            return
        state = _EVENT_STATE.get(event)
        if state is None:
            return
        if event == "confirmed":
            inst.confirmed_by = str(record.get("by", ""))
            inst.question = ""
            if inst.state != "gated":
                return
        inst.state = state
        if event == "gate":
            inst.question = str(record.get("question", ""))
        elif event == "started":
            inst.attempt = int(record.get("attempt", inst.attempt + 1))
            inst.started_at = inst.started_at or when
            inst.reason = ""
        elif event == "retrying":
            inst.reason = str(record.get("reason", ""))
        elif event in ("finished", "failed", "skipped", "refused"):
            inst.finished_at = when
            inst.reason = str(record.get("reason", "")) or (
                "gate refused" if event == "refused" else ""
            )
            inst.summary = str(record.get("summary", ""))

    # -- reading ----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the run is under way (not planned, not over)."""
        return self.status == "running"

    def gated(self) -> list[StepRun]:
        """Instances waiting at a gate right now."""
        return [s for s in self.steps.values() if s.state == "gated"]

    def counts(self) -> dict[str, int]:
        """How many instances are in each state."""
        out: dict[str, int] = {}
        for inst in self.steps.values():
            out[inst.state] = out.get(inst.state, 0) + 1
        return out

    def current(self) -> StepRun | None:
        """The instance the operator most likely wants to look at: gated, running, else last moved."""
        for state in ("gated", "running"):
            for inst in self.steps.values():
                if inst.state == state:
                    return inst
        moved = [s for s in self.steps.values() if s.version]
        return max(moved, key=lambda s: s.version) if moved else None

    def remaining_estimate(self, now: datetime) -> float:
        """Seconds left along the longest path of unfinished main steps, from their estimates."""
        by_step: dict[str, list[StepRun]] = {}
        for inst in self.steps.values():
            by_step.setdefault(inst.step.id, []).append(inst)
        memo: dict[str, float] = {}

        def left(step: Step) -> float:
            insts = by_step.get(step.id, [])
            if insts and all(i.over for i in insts):
                return 0.0
            estimate = step.estimate or 0.0
            started = [i.started_at for i in insts if i.state == "running" and i.started_at]
            if started:
                estimate = max(0.0, estimate - (now - min(started)).total_seconds())
            return estimate

        def finish(sid: str) -> float:
            if sid not in memo:
                step = self.runbook.steps[sid]
                memo[sid] = left(step) + max((finish(n) for n in step.needs), default=0.0)
            return memo[sid]

        return max((finish(s.id) for s in self.runbook.main_steps()), default=0.0)

    def rto(self, now: datetime) -> RtoReading:
        """The RTO clock: elapsed since the run was created (or until it finished) vs the RTO."""
        if self.created_at is None:
            elapsed = 0.0
        else:
            end = self.finished_at or now
            elapsed = max(0.0, (end - self.created_at).total_seconds())
        over = self.status in ("succeeded", "failed", "aborted")
        remaining = 0.0 if over else self.remaining_estimate(now)
        projected = elapsed + remaining
        return RtoReading(
            elapsed, self.runbook.rto, projected, rto_level(elapsed, projected, self.runbook.rto)
        )


def planned_nodes(step: Step, site: Site, params: Mapping[str, Any]) -> list[str | None]:
    """Node names a step will run on, as the executor will pick them; [None] for a local step."""
    try:
        refs = step_nodes(step, site, params, lambda t: render(t, params))
    except Exception:  # noqa: BLE001 - an unresolvable target shows as one local row; the run says why
        return [None]
    return [ref.name if ref is not None else None for ref in refs]
