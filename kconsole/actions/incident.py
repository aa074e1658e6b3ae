"""`incident.escalate`: page the next level of an escalation matrix."""

from __future__ import annotations

from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.actions.notify import pick_target, send_webhook
from kconsole.errors import OperationFailed
from kconsole.incidents.desk import IncidentDesk, incident_of_run


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
        """Escalate the run's incident to the level (each level paged once, through the
        outbox); a run without an incident names the level's contacts and notifies."""
        journal = ctx.site.state_dir / "runs" / ctx.run_id / "journal.jsonl"
        incident_id = incident_of_run(journal)
        if incident_id:
            return await self._escalate_incident(ctx, incident_id)
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

    async def _escalate_incident(self, ctx: StepContext, incident_id: str) -> ActionResult:
        desk = IncidentDesk(ctx.site, ctx.services.clock, ctx.user or None)
        wanted = int(ctx.values.get("level") or 1)
        inc = desk.get(incident_id)
        paged = []
        while inc.is_open and inc.level < wanted and not inc.acknowledged_by:
            before = inc.level
            inc = desk.escalate(incident_id, ctx.values["text"])
            if inc.level == before:
                break
            paged.append(inc.level)
        desk.note(incident_id, f"run {ctx.run_id}, step {ctx.step.id}: {ctx.values['text']}")
        await desk.deliver()
        what = (
            f"paged level(s) {', '.join(map(str, paged))}"
            if paged
            else f"already at level {inc.level}"
            + (f", acknowledged by {inc.acknowledged_by}" if inc.acknowledged_by else "")
        )
        summary = f"incident {incident_id}: {what}"
        await ctx.emit("stdout", summary)
        return ActionResult(
            exit_code=0,
            stdout=summary,
            summary=summary,
            data={"incident": incident_id, "level": inc.level},
        )
