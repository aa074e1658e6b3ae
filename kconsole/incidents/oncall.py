"""Who to call now: the site's contacts and escalation matrices read against the clock.

Pure functions over the site model, shared by the console's escalation panel and
`kconsole contacts --now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kconsole.site import Contact, EscalationLevel, EscalationMatrix, Site

BUSINESS_HOURS = (9, 17)
"""Local hours (start inclusive, end exclusive), Monday to Friday, of a "Business Hours" contact."""

MATRIX_FOR_SCENARIO = {
    "backup": "backup",
    "verification": "backup",
    "security-incident": "security",
    "security": "security",
    "recovery": "recovery",
}
"""The escalation matrix a runbook scenario (or an incident type) escalates through;
anything else is a recovery."""


def is_on_call(contact: Contact, now: datetime) -> bool:
    """Whether `contact` answers at `now`: 24/7 always, business hours on weekdays 9-17 local."""
    when = contact.on_call.strip().lower().replace(" ", "")
    if when in ("", "24/7", "always"):
        return True
    if when in ("businesshours", "business", "office"):
        local = now.astimezone()
        start, end = BUSINESS_HOURS
        return local.weekday() < 5 and start <= local.hour < end
    return True


def matrix_for(site: Site, scenario: str) -> EscalationMatrix | None:
    """The matrix for a runbook scenario, falling back to the first one the site has."""
    name = MATRIX_FOR_SCENARIO.get(scenario, "recovery")
    return site.escalation.get(name) or next(iter(site.escalation.values()), None)


def level_at(matrix: EscalationMatrix, elapsed: float) -> EscalationLevel | None:
    """The level reached `elapsed` seconds into an incident: each level waits before the next."""
    waited = 0.0
    for level in matrix.levels:
        if elapsed < waited + level.wait or level is matrix.levels[-1]:
            return level
        waited += level.wait
    return None


@dataclass(frozen=True)
class CallNow:
    """Who to call at this moment and why."""

    matrix: EscalationMatrix | None
    level: EscalationLevel | None
    people: tuple[Contact, ...]
    """Contacts holding the level's role who are on call now."""
    off_duty: tuple[Contact, ...]
    """Contacts holding the role but outside their hours."""

    def line(self) -> str:
        """One line for the dashboard."""
        if self.matrix is None or self.level is None:
            fallback = ", ".join(f"{c.name} {c.phone}".strip() for c in self.people)
            return fallback or "no contacts or escalation matrix in the site file"
        who = ", ".join(f"{c.name} {c.phone}".strip() for c in self.people)
        if not who:
            who = "nobody on call holds this role" + (
                f" (off duty: {', '.join(c.name for c in self.off_duty)})" if self.off_duty else ""
            )
        return f"L{self.level.level} {self.level.role}: {who} · {self.matrix.title}"


def call_now(
    site: Site,
    now: datetime,
    scenario: str = "single-node",
    elapsed: float = 0.0,
    level_no: int | None = None,
) -> CallNow:
    """Who to call `elapsed` seconds into an incident of `scenario` (0: a fresh one), or at
    `level_no` when the incident's paging says which level it has reached."""
    matrix = matrix_for(site, scenario)
    if matrix is None:
        people = tuple(c for c in site.contacts if is_on_call(c, now))
        return CallNow(None, None, people, ())
    if level_no is not None and matrix.levels:
        level: EscalationLevel | None = matrix.levels[max(0, min(level_no, len(matrix.levels)) - 1)]
    else:
        level = level_at(matrix, elapsed)
    holders = [c for c in site.contacts if level is not None and c.role == level.role]
    return CallNow(
        matrix,
        level,
        tuple(c for c in holders if is_on_call(c, now)),
        tuple(c for c in holders if not is_on_call(c, now)),
    )
