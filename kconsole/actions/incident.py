"""`incident.escalate`: page the next level of an escalation matrix."""

from __future__ import annotations

from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.actions.notify import pick_target, send_webhook
from kconsole.errors import OperationFailed


class IncidentEscalate(Action):
    """Name who to call at a level of a matrix and notify them."""

    name = "incident.escalate"
    help = "Escalate to a level of the site's escalation matrix (backup, recovery, security)."
    fields: ClassVar[dict[str, Field]] = {
        "matrix": Field("str", required=True, help="name of an [escalation.*] table"),
        "level": Field("int", default=1),
        "text": Field("text", required=True),
        "target": Field("str"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Find the level's role and contacts, then notify."""
        name = ctx.values["matrix"]
        matrix = ctx.site.escalation.get(name)
        if matrix is None:
            raise OperationFailed(f'escalation matrix "{name}" is not in the site file.')
        level_no = int(ctx.values.get("level") or 1)
        if not 1 <= level_no <= len(matrix.levels):
            raise OperationFailed(f"escalation matrix {name} has no level {level_no}.")
        level = matrix.levels[level_no - 1]
        people = [c for c in ctx.site.contacts if c.role == level.role]
        who = ", ".join(f"{c.name} {c.phone}".strip() for c in people) or "no contact on file"
        text = f"Escalation {matrix.title} L{level_no} ({level.role}: {who}): {ctx.values['text']}"
        if ctx.drill:
            text = f"[DRILL] {text}"
        target = pick_target(ctx.site, ctx.values.get("target"))
        outcome = await send_webhook(target, text) if target else "not sent: no [notify] target"
        await ctx.emit("stdout", f"{text} ({outcome})")
        return ActionResult(
            exit_code=0,
            stdout=text,
            summary=f"L{level_no} {level.role}: {who}",
            data={"matrix": name, "level": level_no, "role": level.role},
        )
