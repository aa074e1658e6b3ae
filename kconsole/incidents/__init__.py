"""Incidents and escalation: the outage as people live it (DESIGN.md, "Incidents").

`IncidentDesk` makes every change; `IncidentStore` keeps each incident as an append-only
event log; the `Outbox` holds every notification until a target takes it.
"""

from kconsole.incidents.desk import IncidentDesk, Page
from kconsole.incidents.model import Incident
from kconsole.incidents.oncall import CallNow, call_now
from kconsole.incidents.outbox import Outbox
from kconsole.incidents.store import IncidentStore

__all__ = ["CallNow", "Incident", "IncidentDesk", "IncidentStore", "Outbox", "Page", "call_now"]
