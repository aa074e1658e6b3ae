"""The plan's emergency notification (Appendix C), filled from an incident and the site."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from kconsole.incidents.model import TYPE_TITLE, Incident
from kconsole.site import Site

SUGGESTED_RUNBOOK = {
    "security": "recover-security-incident",
    "backup": "verify-backups",
}
"""The runbook an incident of a type starts from when nothing more specific is known."""


def suggest_runbook(incident_type: str, nodes: list[str], kind: str = "") -> str:
    """The runbook whose steps are an incident's immediate actions."""
    if incident_type == "recovery":
        return "recover-multiple-nodes" if len(nodes) > 1 else "recover-single-node"
    if incident_type == "backup" and kind:
        return f"backup-{kind}"
    return SUGGESTED_RUNBOOK.get(incident_type, "recover-single-node")


def run_command(incident: Incident) -> str:
    """The command that starts the incident's runbook, linked to it."""
    args = f"kconsole run {incident.runbook}"
    if incident.runbook == "recover-single-node" and incident.nodes:
        args += f" --param node={incident.nodes[0]}"
    elif incident.runbook == "recover-multiple-nodes" and incident.nodes:
        args += f" --param nodes={','.join(incident.nodes)}"
    return f"{args} --incident {incident.id}"


def _step_titles(site: Site, runbook_id: str) -> list[str]:
    """The titles of a runbook's main operator-facing steps, read straight from its TOML (the
    site's runbooks/ first, then the shipped ones). Loading it as a Runbook would pull the
    action registry into paging, and `incident.escalate` pages through here."""
    for folder in (site.base_dir / "runbooks", Path(str(resources.files("runbooks")))):
        path = folder / f"{runbook_id}.toml"
        if not path.is_file():
            continue
        try:
            steps = tomllib.loads(path.read_text(encoding="utf-8")).get("steps", [])
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return []
        rollback = {s.get("on_failure") for s in steps if isinstance(s, dict)}
        return [
            str(s.get("title") or s.get("id"))
            for s in steps
            if isinstance(s, dict)
            and s.get("action") not in ("notify", "incident.escalate")
            and s.get("id") not in rollback
        ]
    return []


def immediate_actions(site: Site, incident: Incident, count: int = 3) -> list[str]:
    """Three actions: start the runbook, then its first operator-facing steps."""
    actions = [f"Start the runbook: `{run_command(incident)}`"]
    node = incident.nodes[0] if incident.nodes else "the node"
    for title in _step_titles(site, incident.runbook):
        if len(actions) >= count:
            break
        actions.append(title.replace("{node}", node).replace("{node.name}", node))
    fallback = [
        "Acknowledge the page: `kconsole incident ack " + incident.id + "`",
        "Post status updates: `kconsole incident update "
        + incident.id
        + " --status investigating`",
    ]
    for extra in fallback:
        if len(actions) >= count:
            break
        actions.append(extra)
    return actions


def contact_line(site: Site, incident: Incident, level_no: int) -> str:
    """'Name phone' of the people holding a level's role (or the role when nobody does)."""
    matrix = site.escalation.get(incident.matrix)
    if matrix is None or level_no > len(matrix.levels):
        return "no such level in the site's escalation matrix"
    role = matrix.levels[level_no - 1].role
    people = [f"{c.name} {c.phone}".strip() for c in site.contacts if c.role == role]
    return f"{', '.join(people) or 'nobody on file'} ({role})"


def impact(incident: Incident) -> str:
    """The impact line: what the operator said, else the summary and the nodes."""
    if incident.impact:
        return incident.impact
    where = f" ({', '.join(incident.nodes)})" if incident.nodes else ""
    return f"{incident.summary}{where}"


def emergency_notification(site: Site, incident: Incident, paging: str = "") -> str:
    """The Appendix C template as Markdown, every field filled."""
    acked = bool(incident.acknowledged_by)
    status_rank = {"open": 0, "acknowledged": 1, "investigating": 2, "resolving": 3, "resolved": 4}
    rank = status_rank.get(incident.status, 0)
    drill = "[DRILL] " if incident.drill else ""
    lines = [f"# {drill}EMERGENCY NOTIFICATION", ""]
    if paging:
        lines += [paging, ""]
    lines += [
        "## Incident Details",
        f"- **Incident**: {incident.id}: {incident.summary}",
        f"- **Incident Type**: {TYPE_TITLE.get(incident.type, incident.type)}",
        f"- **Severity**: {incident.severity.capitalize()}",
        f"- **Detected**: {incident.detected}",
        f"- **Impact**: {impact(incident)}",
        "",
        "## Immediate Actions Required",
    ]
    lines += [f"{i}. {a}" for i, a in enumerate(immediate_actions(site, incident), 1)]
    lines += [
        "",
        "## Contact Information",
        f"- **Primary Contact**: {contact_line(site, incident, 1)}",
        f"- **Secondary Contact**: {contact_line(site, incident, 2)}",
        f"- **Emergency Contact**: {contact_line(site, incident, 3)}",
        "",
        "## Status Updates",
        f"- [{'x' if acked or rank >= 1 else ' '}] Initial response completed",
        f"- [{'x' if rank >= 2 else ' '}] Investigation underway",
        f"- [{'x' if rank >= 3 else ' '}] Resolution in progress",
        f"- [{'x' if rank >= 4 else ' '}] Incident resolved",
    ]
    return "\n".join(lines) + "\n"
