"""`kconsole incident report`: the plan's emergency notification, then the timeline and the
linked runs (each with the id `kconsole report RUN_ID` fills its run report from)."""

from __future__ import annotations

from typing import Any

from kconsole.incidents.model import Incident
from kconsole.incidents.notification import emergency_notification
from kconsole.journal import list_runs
from kconsole.site import Site


def linked_runs(site: Site, incident: Incident) -> list[dict[str, Any]]:
    """The incident's runs as the journal has them (a run missing from it says so)."""
    known = {r.id: r for r in list_runs(site.state_dir)}
    out: list[dict[str, Any]] = []
    for run_id in incident.runs:
        r = known.get(run_id)
        if r is None:
            out.append({"id": run_id, "runbook": "", "status": "not in this journal"})
            continue
        out.append(
            {
                "id": r.id,
                "runbook": r.runbook,
                "status": r.status,
                "started": r.started,
                "finished": r.finished or None,
                "reason": r.reason,
                "report": f"kconsole report {r.id}",
            }
        )
    return out


def incident_report_json(site: Site, incident: Incident) -> dict[str, Any]:
    """The report as one JSON object."""
    return {
        **incident.as_json(timeline=True),
        "notification": emergency_notification(site, incident),
        "linked_runs": linked_runs(site, incident),
    }


def incident_report_markdown(site: Site, incident: Incident) -> str:
    """The report as Markdown: notification, timeline, linked runs."""
    out = [emergency_notification(site, incident).rstrip("\n"), "", "## Timeline", ""]
    out += ["| Time (UTC) | Event | By | What |", "| --- | --- | --- | --- |"]
    for t in incident.timeline:
        what = str(t["text"]).replace("|", "\\|").replace("\n", " ")
        out.append(f"| {t['time']} | {t['event']} | {t['by'] or '-'} | {what} |")
    out += ["", "## Linked runs", ""]
    runs = linked_runs(site, incident)
    if not runs:
        out.append("No run was started for this incident.")
    else:
        out += ["| Run | Runbook | Status | Started | Finished | Report |"]
        out += ["| --- | --- | --- | --- | --- | --- |"]
        for r in runs:
            out.append(
                f"| {r['id']} | {r['runbook'] or '-'} | {r['status']} | {r.get('started') or '-'} "
                f"| {r.get('finished') or '-'} | `{r.get('report') or '-'}` |"
            )
    state = "resolved at " + incident.resolved_at if incident.resolved_at else incident.status
    out += [
        "",
        f"Incident {incident.id}: {state}; escalation level reached {incident.level}; "
        + (
            f"acknowledged by {incident.acknowledged_by} at {incident.acknowledged_at}."
            if incident.acknowledged_by
            else "never acknowledged."
        ),
    ]
    return "\n".join(out) + "\n"
