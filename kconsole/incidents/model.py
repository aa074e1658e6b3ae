"""An incident as its event log tells it: opened, paged, acknowledged, updated, resolved.

The state is never stored on its own: `Incident.from_events` folds the append-only log, so
the log is the one truth a mirror (or a reader offline) needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

IncidentType = Literal["backup", "recovery", "security"]
INCIDENT_TYPES: tuple[IncidentType, ...] = ("backup", "recovery", "security")
SEVERITIES = ("critical", "high", "medium", "low")
STATUSES = ("open", "acknowledged", "investigating", "resolving", "resolved")
UPDATE_STATUSES = ("investigating", "resolving", "resolved")
"""Statuses an operator sets with `incident update` (the plan's status checklist)."""
EVENTS = (
    "opened",
    "paged",
    "acknowledged",
    "escalated",
    "note",
    "status",
    "run-started",
    "run-finished",
    "notification-failed",
    "notification-delivered",
)

TYPE_TITLE = {
    "backup": "Backup Failure",
    "recovery": "Recovery Required",
    "security": "Security Incident",
}
"""The plan's wording for each incident type (Appendix C)."""


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as the journal writes it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Incident:
    """One incident, folded from its events."""

    id: str
    type: str
    severity: str
    summary: str
    detected: str
    opened: str
    opened_by: str
    matrix: str
    """The escalation matrix it pages through (the site's `[escalation.NAME]`)."""
    nodes: list[str] = field(default_factory=list)
    drill: bool = False
    impact: str = ""
    runbook: str = ""
    """The runbook whose first steps are the immediate actions (suggested at open)."""
    status: str = "open"
    acknowledged_by: str = ""
    acknowledged_at: str = ""
    level: int = 0
    """The highest escalation level paged."""
    level_due: str = ""
    """When the level reached was due (a late tick does not push the next page back)."""
    runs: list[str] = field(default_factory=list)
    run_status: dict[str, str] = field(default_factory=dict)
    resolved_at: str = ""
    opened_on: str = ""
    """The console it was opened on (`host:state_dir`; "" without a shared store)."""
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        """Not yet resolved."""
        return self.status != "resolved"

    @property
    def escalating(self) -> bool:
        """Whether the escalation clock runs: open and nobody has acknowledged."""
        return self.is_open and not self.acknowledged_by

    @classmethod
    def from_events(cls, events: list[dict[str, Any]]) -> Incident:
        """Fold an incident's events (the first must be `opened`)."""
        first = events[0]
        inc = cls(
            id=first["incident"],
            type=first["type"],
            severity=first["severity"],
            summary=first["summary"],
            detected=first.get("detected") or first["time"],
            opened=first["time"],
            opened_by=first.get("by", ""),
            matrix=first.get("matrix", first["type"]),
            nodes=list(first.get("nodes", [])),
            drill=bool(first.get("drill")),
            impact=first.get("impact", ""),
            runbook=first.get("runbook", ""),
            opened_on=first.get("console", ""),
        )
        for ev in events:
            inc.apply(ev)
        return inc

    def apply(self, ev: dict[str, Any]) -> None:
        """Fold one event into the state and the timeline."""
        kind = ev.get("event")
        if kind == "paged" and int(ev.get("level", 0)) > self.level:
            self.level = int(ev["level"])
            self.level_due = ev.get("due") or ev["time"]
        elif kind == "acknowledged":
            self.acknowledged_by = ev.get("by", "")
            self.acknowledged_at = ev["time"]
            if self.status == "open":
                self.status = "acknowledged"
        elif kind == "status":
            self.status = ev["status"]
            if ev["status"] == "resolved":
                self.resolved_at = ev["time"]
        elif kind == "run-started":
            if ev["run"] not in self.runs:
                self.runs.append(ev["run"])
            self.run_status[ev["run"]] = "running"
        elif kind == "run-finished":
            if ev["run"] not in self.runs:
                self.runs.append(ev["run"])
            self.run_status[ev["run"]] = ev.get("status", "")
        self.timeline.append(
            {
                "time": ev["time"],
                "event": kind,
                "by": ev.get("by", ""),
                "console": ev.get("console", ""),
                "text": timeline_text(ev),
            }
        )

    def as_json(self, timeline: bool = False) -> dict[str, Any]:
        """The `incident list/show --json` object (DESIGN.md)."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "severity": self.severity,
            "status": self.status,
            "detected": self.detected,
            "opened": self.opened,
            "acknowledged_by": self.acknowledged_by or None,
            "level": self.level,
            "summary": self.summary,
            "nodes": self.nodes,
            "runs": self.runs,
            "drill": self.drill,
            "opened_by": self.opened_by,
            "console": self.opened_on or None,
        }
        if timeline:
            out["timeline"] = self.timeline
        return out


def timeline_text(ev: dict[str, Any]) -> str:
    """The words of one timeline entry."""
    kind = ev.get("event")
    if kind == "opened":
        where = f" on {', '.join(ev['nodes'])}" if ev.get("nodes") else ""
        return f"{ev['severity']} {ev['type']} incident{where}: {ev['summary']}"
    if kind == "paged":
        who = ", ".join(ev.get("contacts", [])) or "nobody on file holds the role"
        return f"level {ev['level']} ({ev.get('role', '')}) paged: {who}"
    if kind == "escalated":
        return f"escalated to level {ev['level']}" + (f": {ev['text']}" if ev.get("text") else "")
    if kind == "acknowledged":
        return "acknowledged: the escalation clock stops"
    if kind == "status":
        return f"status {ev['status']}" + (f": {ev['text']}" if ev.get("text") else "")
    if kind == "note":
        return str(ev.get("text", ""))
    if kind == "run-started":
        return f"run {ev['run']} ({ev.get('runbook', '')}) started"
    if kind == "run-finished":
        return f"run {ev['run']} {ev.get('status', '')}" + (
            f": {ev['text']}" if ev.get("text") else ""
        )
    if kind in ("notification-failed", "notification-delivered"):
        return str(ev.get("text", ""))
    return str(ev.get("text", ""))
