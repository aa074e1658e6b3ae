"""The runbook model: params, steps and the graph between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ParamType = Literal["node", "nodes", "group", "backup", "string", "duration", "time"]
PARAM_TYPES: tuple[str, ...] = ("node", "nodes", "group", "backup", "string", "duration", "time")


@dataclass(frozen=True)
class Param:
    """A typed runbook parameter."""

    name: str
    type: ParamType
    help: str = ""
    default: Any = None
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        """A parameter with no default must be given."""
        return self.default is None


@dataclass(frozen=True)
class Expect:
    """What a step's result must look like to count as success."""

    exit: tuple[int, ...] = (0,)
    stdout: str | None = None
    stderr: str | None = None


@dataclass(frozen=True)
class ForEach:
    """A step's `for_each`, parsed once when the runbook loads: exactly one of a list of node
    names, a site group (`"group:NAME"`) or a param of type node, nodes or group (`"{name}"`)."""

    nodes: tuple[str, ...] = ()
    group: str = ""
    param: str = ""


@dataclass(frozen=True)
class Step:
    """One node of the graph."""

    id: str
    action: str
    title: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    gate: str | None = None
    for_each: ForEach | None = None
    node: str | None = None
    concurrency: int = 0
    timeout: float | None = None
    retries: int = 0
    backoff: float = 1.0
    on_failure: str = "abort"
    expect: Expect | None = None
    guide: str = ""
    estimate: float | None = None
    approvers: int = 1
    """Different accounts that must confirm the step's gate (2: a two-person gate)."""


@dataclass
class Runbook:
    """A loaded, valid runbook."""

    id: str
    title: str
    rto: float
    rpo: float
    scenario: str
    description: str
    params: dict[str, Param]
    steps: dict[str, Step]
    path: str
    text: str
    kind: str = ""

    @property
    def rollback_steps(self) -> set[str]:
        """Steps that run only as some other step's `on_failure`."""
        targets = {s.on_failure for s in self.steps.values()}
        return {sid for sid in self.steps if sid in targets}

    def main_steps(self) -> list[Step]:
        """Steps of the normal flow, in file order."""
        rollback = self.rollback_steps
        return [s for s in self.steps.values() if s.id not in rollback]

    def total_estimate(self) -> float:
        """Sum of step estimates along the longest path of the normal flow (seconds)."""
        memo: dict[str, float] = {}

        def finish(sid: str) -> float:
            if sid not in memo:
                step = self.steps[sid]
                memo[sid] = (step.estimate or 0.0) + max(
                    (finish(n) for n in step.needs), default=0.0
                )
            return memo[sid]

        return max((finish(s.id) for s in self.main_steps()), default=0.0)
