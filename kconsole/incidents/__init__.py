"""Incidents and escalation: the outage as people live it (DESIGN.md, "Incidents").

`IncidentDesk` makes every change; `IncidentStore` keeps each incident as an append-only
event log; the `Outbox` holds every notification until a target takes it.

The names are imported on first use (PEP 562): the CLI builds its `incident` parser from
`kconsole.incidents.cli` without paying for the desk's HTTP client and targets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kconsole.incidents.desk import IncidentDesk, Page
    from kconsole.incidents.model import Incident
    from kconsole.incidents.oncall import CallNow, call_now
    from kconsole.incidents.outbox import Outbox
    from kconsole.incidents.store import IncidentStore

__all__ = ["CallNow", "Incident", "IncidentDesk", "IncidentStore", "Outbox", "Page", "call_now"]

_WHERE = {
    "CallNow": "oncall",
    "Incident": "model",
    "IncidentDesk": "desk",
    "IncidentStore": "store",
    "Outbox": "outbox",
    "Page": "desk",
    "call_now": "oncall",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
