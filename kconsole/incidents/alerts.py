"""Alertmanager in: the firing alerts (API v2) and the incident each one suggests.

The plan's alert rules (kconsole/data/prometheus-backup-rules.yml) fire in Prometheus and
route through Alertmanager; with `[alertmanager] url` in the site, the console and the CLI
read what is firing and open a backup incident from an alert with its runbook suggested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from kconsole.errors import OperationFailed
from kconsole.site import BACKUP_KINDS, Site

SEVERITY_FROM_LABEL = {"critical": "critical", "error": "high", "warning": "medium", "info": "low"}
"""An alert's `severity` label as an incident severity."""


@dataclass(frozen=True)
class Alert:
    """One firing alert."""

    name: str
    severity: str
    summary: str
    starts_at: str
    fingerprint: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def node(self) -> str:
        """The node the alert names, if any."""
        return self.labels.get("node", "")

    @property
    def kind(self) -> str:
        """The backup kind the alert names, if it is one of the plan's."""
        kind = self.labels.get("kind", "")
        return kind if kind in BACKUP_KINDS else ""

    def line(self) -> str:
        """One line for the dashboard."""
        where = " ".join(x for x in (self.kind, self.node) if x)
        return f"{self.name} ({self.severity}) {where}: {self.summary}".replace("  ", " ")


@dataclass(frozen=True)
class Suggestion:
    """The incident an alert suggests opening."""

    type: str
    severity: str
    summary: str
    nodes: tuple[str, ...]
    runbook: str


def suggest(alert: Alert, site: Site) -> Suggestion:
    """BackupFailed / BackupAgeHigh (and the other backup alerts): a backup incident naming the
    node and kind, with that kind's backup runbook; without a kind, verify-backups."""
    nodes = (alert.node,) if alert.node in site.nodes else ()
    runbook = f"backup-{alert.kind}" if alert.kind else "verify-backups"
    what = " ".join(
        x for x in (alert.kind, "backups", "on " + alert.node if alert.node else "") if x
    )
    summary = f"{alert.name}: {alert.summary or what}" + (f" ({what})" if alert.summary else "")
    return Suggestion(
        "backup", SEVERITY_FROM_LABEL.get(alert.severity, "high"), summary, nodes, runbook
    )


def parse_alerts(data: Any) -> list[Alert]:
    """Alertmanager's `GET /api/v2/alerts` body as Alerts (active ones only), newest first."""
    out: list[Alert] = []
    for a in data if isinstance(data, list) else []:
        if not isinstance(a, dict):
            continue
        state = (a.get("status") or {}).get("state", "active")
        if state != "active":
            continue
        labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
        notes = a.get("annotations") or {}
        out.append(
            Alert(
                name=labels.get("alertname", "?"),
                severity=labels.get("severity", ""),
                summary=str(notes.get("summary") or notes.get("description") or ""),
                starts_at=str(a.get("startsAt", "")),
                fingerprint=str(a.get("fingerprint", "")),
                labels=labels,
            )
        )
    return sorted(out, key=lambda x: x.starts_at, reverse=True)


async def firing_alerts(
    site: Site, client: httpx.AsyncClient | None = None, timeout: float = 5.0
) -> list[Alert]:
    """The alerts firing now (not silenced, not inhibited); [] when the site has no
    `[alertmanager]`. OperationFailed, in one sentence, when Alertmanager cannot be read."""
    if not site.alertmanager_url:
        return []
    url = f"{site.alertmanager_url}/api/v2/alerts"
    params = {"active": "true", "silenced": "false", "inhibited": "false"}
    own = client is None
    http = client or httpx.AsyncClient(timeout=timeout)
    try:
        resp = await http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise OperationFailed(
            f"Alertmanager at {site.alertmanager_url} cannot be read ({exc.__class__.__name__})."
        ) from None
    finally:
        if own:
            await http.aclose()
    if resp.status_code != 200:
        raise OperationFailed(
            f"Alertmanager at {site.alertmanager_url} answered HTTP {resp.status_code}."
        )
    try:
        return parse_alerts(resp.json())
    except ValueError:
        raise OperationFailed(
            f"Alertmanager at {site.alertmanager_url} did not answer JSON."
        ) from None
