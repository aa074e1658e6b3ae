"""`gate`: a manual step — a checklist the operator works through and confirms, with notes."""

from __future__ import annotations

from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed
from kconsole.gates import GateRequest


class GateRefused(OperationFailed):
    """The operator did not confirm a manual step."""


class GateUnanswered(Exception):
    """No one could be asked (no terminal, no --yes): the run stops here, resumable."""


class GateAction(Action):
    """Ask the operator to do something by hand and confirm it is done."""

    name = "gate"
    help = "A manual checklist step the operator confirms, with optional notes."
    fields: ClassVar[dict[str, Field]] = {
        "prompt": Field("text", help="the question"),
        "checklist": Field("list", help="things to do or check by hand"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Ask; a refusal fails the step, no answer stops the run."""
        request = GateRequest(
            run_id=ctx.run_id,
            step_id=ctx.step.id,
            title=ctx.step.title or ctx.step.id,
            kind="checklist",
            node=ctx.node.name if ctx.node else None,
            prompt=ctx.values.get("prompt") or "",
            checklist=[str(i) for i in ctx.values.get("checklist") or []],
            guide=ctx.step.guide,
        )
        answer = await ctx.confirm(request)
        if answer is None:
            raise GateUnanswered(request.question())
        if not answer:
            raise GateRefused(f"the operator did not confirm {request.title!r}.")
        note = f" (note: {request.note})" if request.note else ""
        return ActionResult(
            exit_code=0,
            summary=f"confirmed by {request.answered_by or ctx.user}{note}",
            data={"note": request.note},
        )
