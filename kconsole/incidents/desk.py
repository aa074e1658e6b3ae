"""The incident desk: every change to an incident, its paging and its notifications.

The CLI, the console and headless runs all go through `IncidentDesk`, so each change is
checked against the site's `[access]`, appended to the incident's log, audited, and each
notification goes through the outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from kconsole.audit import AuditLog
from kconsole.errors import UsageError
from kconsole.incidents.alerts import Alert, suggest
from kconsole.incidents.announce import RunEnding, read_ending
from kconsole.incidents.model import (
    INCIDENT_TYPES,
    SEVERITIES,
    TYPE_TITLE,
    UPDATE_STATUSES,
    Incident,
    parse_time,
)
from kconsole.incidents.notification import emergency_notification, suggest_runbook
from kconsole.incidents.oncall import MATRIX_FOR_SCENARIO, is_on_call
from kconsole.incidents.outbox import Delivery, Outbox
from kconsole.incidents.sharing import IncidentMirror
from kconsole.incidents.store import IncidentStore, new_incident_id
from kconsole.incidents.targets import make_sender
from kconsole.journal import iso, read_records
from kconsole.services import Clock
from kconsole.shared import StoreUnavailable
from kconsole.site import Site, current_user

DELIVERY_TIMEOUT = 5.0
"""Seconds one HTTP post may take: a dead target costs the operator at most this, then the
message waits in the outbox."""


@dataclass(frozen=True)
class Page:
    """One level paged for one incident."""

    incident: str
    level: int
    role: str
    contacts: tuple[str, ...]


class IncidentDesk:
    """Opens, pages, acknowledges, escalates, updates and reports incidents of one site."""

    def __init__(self, site: Site, clock: Clock | None = None, user: str | None = None) -> None:
        self.site = site
        self.clock = clock or Clock()
        self.user = user or current_user()
        self.make_id: Callable[[datetime], str] = new_incident_id
        """New incident ids (tests pin them)."""
        self.shared_problem = ""
        """Why the last tick could not read the shared store ("" when it could)."""
        self.store = IncidentStore(site.state_dir)
        self.store.mirror = IncidentMirror.for_site(site)
        self.outbox = Outbox(site.state_dir)
        self.audit = AuditLog(site.state_dir)

    # -- reading -------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        """One incident; UsageError naming the id if there is none."""
        return self.store.load(incident_id)

    def incidents(self, include_resolved: bool = False) -> list[Incident]:
        """Incidents, newest first: open ones, or every one."""
        return [i for i in self.store.all() if include_resolved or i.is_open]

    def next_page_at(self, incident: Incident) -> datetime | None:
        """When the next level will be paged, or None (acknowledged, resolved, top level)."""
        matrix = self.site.escalation.get(incident.matrix)
        if matrix is None or not incident.escalating or incident.level >= len(matrix.levels):
            return None
        wait = matrix.levels[incident.level - 1].wait if incident.level else 0.0
        due = parse_time(incident.level_due or incident.opened)
        return due + timedelta(seconds=wait)

    # -- the shared store ----------------------------------------------------------------

    def pull_shared(self) -> str:
        """Read every console's incidents from the shared store (blocking) and, when this
        account may operate, send it what this console's logs have that it lacks. A
        sentence saying why the store could not be read, or "" (also with no store)."""
        mirror = self.store.mirror
        if mirror is None:
            return ""
        may_write = self.site.access.role_of(self.user) in ("admin", "operator")
        try:
            mirror.pull(catch_up=may_write)
        except StoreUnavailable as exc:
            return f"{exc} Showing this console's incidents as last read."
        return ""

    def opened_elsewhere(self, inc: Incident) -> str:
        """`by alice on host:/state` when another console opened the incident, else ""."""
        mine = self.store.mirror.console if self.store.mirror is not None else ""
        if not inc.opened_on or inc.opened_on == mine:
            return ""
        return f"by {inc.opened_by or '?'} on {inc.opened_on}"

    def close_shared(self, timeout: float = 10.0) -> str:
        """Send what is queued for the shared store (bounded wait); a sentence saying what
        stayed behind, or ""."""
        mirror = self.store.mirror
        if mirror is None or mirror.close(timeout):
            return ""
        return (
            f"incident changes not yet in the shared store ({mirror.last_error or 'unreachable'}"
            "); they stay in this console's log and go with its next incident command."
        )

    # -- changes -------------------------------------------------------------------------

    def _event(self, incident_id: str, event: str, **fields: Any) -> dict[str, Any]:
        record = {
            "incident": incident_id,
            "event": event,
            "time": iso(self.clock.now()),
            "by": self.user,
            **fields,
        }
        self.store.append(incident_id, record)
        return record

    def open(
        self,
        type: str,
        severity: str,
        summary: str,
        nodes: list[str] | None = None,
        detected: datetime | None = None,
        drill: bool = False,
        impact: str = "",
        runbook: str = "",
        source: str = "",
    ) -> Incident:
        """Open an incident and page level 1 of its type's matrix."""
        self.site.access.require_operate(self.user, "open incidents")
        if type not in INCIDENT_TYPES:
            raise UsageError(
                f'incident type must be one of {", ".join(INCIDENT_TYPES)}, not "{type}".'
            )
        if severity not in SEVERITIES:
            raise UsageError(f'severity must be one of {", ".join(SEVERITIES)}, not "{severity}".')
        if not summary.strip():
            raise UsageError("an incident needs a --summary saying what is wrong.")
        nodes = list(nodes or [])
        for node_name in nodes:
            self.site.node(node_name)
        now = self.clock.now()
        matrix = MATRIX_FOR_SCENARIO.get(type, "recovery")
        if matrix not in self.site.escalation and self.site.escalation:
            matrix = next(iter(self.site.escalation))
        incident_id = self.make_id(now)
        self.store.create(
            incident_id,
            {
                "incident": incident_id,
                "event": "opened",
                "time": iso(now),
                "by": self.user,
                "type": type,
                "severity": severity,
                "summary": summary.strip(),
                "nodes": nodes,
                "detected": iso(detected or now),
                "drill": drill,
                "impact": impact,
                "matrix": matrix,
                "runbook": runbook or suggest_runbook(type, nodes),
                "source": source,
            },
        )
        self.audit.append(
            self.user, "incident.open", incident_id, type=type, severity=severity, drill=drill
        )
        self._page(self.get(incident_id), 1, now)
        return self.get(incident_id)

    def open_from_alert(self, alert: Alert, drill: bool = False) -> Incident:
        """Open the backup incident a firing alert suggests (its runbook the suggested one)."""
        hint = suggest(alert, self.site)
        return self.open(
            hint.type,
            hint.severity,
            hint.summary,
            nodes=list(hint.nodes),
            detected=alert_time(alert.starts_at),
            drill=drill,
            runbook=hint.runbook,
            source=f"alertmanager:{alert.name}:{alert.fingerprint}",
        )

    def for_recovery(
        self, scenario: str, runbook: str, title: str, raw_params: dict[str, Any], drill: bool
    ) -> Incident | None:
        """The incident a recovery started without one belongs to: an open incident of its
        kind on the same nodes, else a new one (paging level 1). None for runbooks that are
        not recoveries (backups, verification)."""
        if scenario not in RECOVERY_SCENARIOS:
            return None
        kind = "security" if scenario == "security-incident" else "recovery"
        nodes = _param_nodes(raw_params, self.site)
        for inc in self.incidents():
            if (
                inc.type == kind
                and inc.drill == drill
                and (set(inc.nodes) & set(nodes) or not nodes)
            ):
                return inc
        where = f" of {', '.join(nodes)}" if nodes else ""
        return self.open(
            kind,
            "critical" if scenario in ("complete-network", "security-incident") else "high",
            f"{title}{where}: started from the console",
            nodes=nodes,
            drill=drill,
            runbook=runbook,
        )

    def acknowledge(self, incident_id: str) -> Incident:
        """Acknowledge: the escalation clock stops (once; a second ack says who did it)."""
        self.site.access.require_operate(self.user, "acknowledge incidents")
        inc = self.get(incident_id)
        if not inc.is_open:
            raise UsageError(f"incident {incident_id} is resolved.")
        if inc.acknowledged_by:
            raise UsageError(
                f"incident {incident_id} was already acknowledged by {inc.acknowledged_by} at {inc.acknowledged_at}."
            )
        self._event(incident_id, "acknowledged")
        self.audit.append(self.user, "incident.ack", incident_id)
        inc = self.get(incident_id)
        self._notify_all(
            inc,
            f"{_tag(inc)}Incident {inc.id} acknowledged by {self.user}: {inc.summary}",
            event_action="acknowledge",
        )
        return inc

    def escalate(self, incident_id: str, text: str = "") -> Incident:
        """Page the next level now."""
        self.site.access.require_operate(self.user, "escalate incidents")
        inc = self.get(incident_id)
        if not inc.is_open:
            raise UsageError(f"incident {incident_id} is resolved.")
        matrix = self.site.escalation.get(inc.matrix)
        top = len(matrix.levels) if matrix else 0
        if inc.level >= top:
            raise UsageError(
                f"incident {incident_id} has already paged level {inc.level}, the top of its matrix."
            )
        now = self.clock.now()
        self._event(incident_id, "escalated", level=inc.level + 1, text=text)
        self.audit.append(self.user, "incident.escalate", incident_id, level=inc.level + 1)
        if self._page(inc, inc.level + 1, now) is None and self.store.mirror is not None:
            self.pull_shared()  # another console paged that level first: read its page
        return self.get(incident_id)

    def update(self, incident_id: str, status: str, note: str = "") -> Incident:
        """Set the status (investigating, resolving, resolved), with an optional note."""
        self.site.access.require_operate(self.user, "update incidents")
        if status not in UPDATE_STATUSES:
            raise UsageError(f'status must be one of {", ".join(UPDATE_STATUSES)}, not "{status}".')
        inc = self.get(incident_id)
        if not inc.is_open:
            raise UsageError(f"incident {incident_id} is already resolved.")
        self._event(incident_id, "status", status=status, text=note)
        self.audit.append(self.user, "incident.status", incident_id, status=status, chars=len(note))
        inc = self.get(incident_id)
        self._notify_all(
            inc,
            f"{_tag(inc)}Incident {inc.id} is {status}"
            + (f": {note}" if note else "")
            + f" ({inc.summary})",
            event_action="resolve" if status == "resolved" else "",
        )
        return inc

    def resolve(self, incident_id: str, note: str = "") -> Incident:
        """Resolve the incident."""
        return self.update(incident_id, "resolved", note)

    def note(self, incident_id: str, text: str) -> Incident:
        """A note on the timeline (only its length goes to the audit log)."""
        self.site.access.require_operate(self.user, "add notes to incidents")
        self.get(incident_id)
        self._event(incident_id, "note", text=text)
        self.audit.append(self.user, "incident.note", incident_id, chars=len(text))
        return self.get(incident_id)

    def link_run(self, incident_id: str, run_id: str, runbook: str) -> None:
        """A run started (or resumed) for this incident."""
        self._event(incident_id, "run-started", run=run_id, runbook=runbook)
        self.audit.append(self.user, "incident.run", incident_id, run=run_id)

    def run_finished(self, incident_id: str, run_id: str, status: str, text: str) -> None:
        """A linked run ended (or stopped)."""
        self._event(incident_id, "run-finished", run=run_id, status=status, text=text)

    def run_ended(self, journal: Path) -> RunEnding | None:
        """Tell the channel how the run of `journal` ended (and its incident, if it has one)."""
        ending = read_ending(journal)
        if ending is None:
            return None
        if ending.incident and self.store.exists(ending.incident):
            self.run_finished(ending.incident, ending.run_id, ending.status, ending.line())
        severity = "high" if ending.status in ("failed", "aborted", "interrupted") else "low"
        self.announce(ending.line(), ending.incident, severity)
        return ending

    # -- paging --------------------------------------------------------------------------

    def _page(self, inc: Incident, level_no: int, due: datetime) -> Page | None:
        """Page one level, unless some process already did (then None)."""
        matrix = self.site.escalation.get(inc.matrix)
        if matrix is None or level_no > len(matrix.levels):
            return None
        if not self.store.claim_page(inc.id, level_no):
            return None
        level = matrix.levels[level_no - 1]
        now = self.clock.now()
        holders = [c for c in self.site.contacts if c.role == level.role]
        on_call = [c for c in holders if is_on_call(c, now)] or holders
        names = tuple(f"{c.name} {c.phone}".strip() for c in on_call)
        paging = (
            f"**Paging level {level_no} of {matrix.title}: {level.role}**: "
            f"{', '.join(names) or 'nobody on file holds this role'}"
        )
        self._notify_all(
            inc,
            emergency_notification(self.site, inc, paging),
            title=f"{_tag(inc)}{TYPE_TITLE.get(inc.type, inc.type)} L{level_no}: {inc.summary}",
        )
        self._event(
            inc.id, "paged", level=level_no, role=level.role, contacts=list(names), due=iso(due)
        )
        self.audit.append(self.user, "incident.page", inc.id, level=level_no, role=level.role)
        return Page(inc.id, level_no, level.role, names)

    def due_pages(self) -> list[Page]:
        """Page every level whose wait has passed with no acknowledgement (a level once only)."""
        pages: list[Page] = []
        now = self.clock.now()
        for inc in self.incidents():
            while True:
                at = self.next_page_at(inc)
                if at is None or at > now:
                    break
                page = self._page(inc, inc.level + 1, at)
                if page is None:
                    break  # another process paged it; it writes the event
                pages.append(page)
                inc = self.get(inc.id)
        return pages

    async def tick(self) -> tuple[list[Page], list[Delivery]]:
        """Read the other consoles' incidents, page what is due, then try the outbox: what
        the console, headless runs and `kconsole incident tick` call."""
        if self.store.mirror is not None:
            self.shared_problem = await asyncio.to_thread(self.pull_shared)
        pages = self.due_pages()
        return pages, await self.deliver()

    # -- notifications -------------------------------------------------------------------

    def _notify_all(
        self, inc: Incident | None, text: str, title: str = "", event_action: str = "trigger"
    ) -> None:
        """Put a message for every target in the outbox (nothing is sent here)."""
        now = self.clock.now()
        for target in self.site.notify.values():
            if target.kind == "pagerduty" and (not event_action or (inc and inc.drill)):
                # PagerDuty takes trigger / acknowledge / resolve, not chat; and a drill
                # never wakes anyone through it (the channel gets it, marked [DRILL]).
                continue
            self.outbox.new(
                now,
                target.name,
                text,
                incident=inc.id if inc else "",
                title=title or text.splitlines()[0],
                severity=inc.severity if inc else "high",
                dedup_key=inc.id if inc else "",
                event_action=event_action or "trigger",
            )

    def announce(self, text: str, incident: str = "", severity: str = "high") -> None:
        """Queue a one-line announcement (a run's ending) for every Slack-style target
        (PagerDuty pages people; a run's ending is for the channel)."""
        now = self.clock.now()
        for target in self.site.notify.values():
            if target.kind == "pagerduty":
                continue
            self.outbox.new(
                now,
                target.name,
                text,
                incident=incident,
                title=text,
                severity=severity,
                dedup_key=incident,
                event_action="trigger",
            )

    async def deliver(self, client: httpx.AsyncClient | None = None) -> list[Delivery]:
        """Try every due message once, recording on its incident what happened."""
        own = client is None
        if own and not await asyncio.to_thread(self.outbox.due, self.clock.now()):
            return []  # nothing to send: no HTTP client (its TLS context costs ~0.15 s)
        # Built in a worker thread: loading the CA bundle would hold the console's loop.
        http = (
            client
            if client is not None
            else await asyncio.to_thread(httpx.AsyncClient, timeout=DELIVERY_TIMEOUT)
        )
        try:
            results = await self.outbox.deliver(make_sender(self.site, http), self.clock.now())
        finally:
            if own:
                await http.aclose()
        for r in results:
            inc_id = r.message.incident
            if not inc_id or not self.store.exists(inc_id):
                continue
            if r.delivered:
                self._event(
                    inc_id,
                    "notification-delivered",
                    target=r.message.target,
                    text=f"delivered to {r.message.target}"
                    + (f" after {r.message.attempts + 1} attempts" if r.message.attempts else ""),
                )
            elif r.message.attempts == 1:
                # Once per message: a target that stays down does not flood the timeline.
                self._event(
                    inc_id,
                    "notification-failed",
                    target=r.message.target,
                    text=f"not delivered to {r.message.target} ({r.error}); kept in the outbox and retried",
                )
        return results


RECOVERY_SCENARIOS = ("single-node", "multiple-nodes", "complete-network", "security-incident")
"""Runbook scenarios that are recoveries: started from the console, each belongs to an incident."""


def _param_nodes(raw: dict[str, Any], site: Site) -> list[str]:
    """The site nodes a run's `node` / `nodes` parameters name."""
    names: list[str] = []
    for key in ("node", "nodes"):
        value = raw.get(key)
        items = value if isinstance(value, list) else str(value or "").split(",")
        names += [str(n).strip() for n in items if str(n).strip() in site.nodes]
    return list(dict.fromkeys(names))


def alert_time(text: str) -> datetime | None:
    """An Alertmanager timestamp (nanoseconds cut to microseconds), or None."""
    if not text:
        return None
    head, dot, frac = text.rstrip("Z").partition(".")
    try:
        return parse_time(f"{head}.{frac[:6]}Z" if dot else f"{head}Z")
    except ValueError:
        return None


def incident_of_run(journal: Path) -> str:
    """The incident a run was started for, from its journal ("" for none)."""
    records, _ = read_records(journal)
    created = next((r for r in records if r.get("event") == "created"), {})
    return str(created.get("incident") or "")


def _tag(inc: Incident) -> str:
    return "[DRILL] " if inc.drill else ""
