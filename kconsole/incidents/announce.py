"""How a run ended, in one line for the channel, read from the run's own journal.

Succeeded (naming the backup ids it made or restored, never `latest`), failed (the step, the
node and the reason), aborted (who and why) or interrupted (and how to resume).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kconsole.journal import read_records


@dataclass
class RunEnding:
    """The facts of a run's end as its journal holds them."""

    run_id: str
    runbook: str
    title: str
    status: str
    reason: str = ""
    drill: bool = False
    incident: str = ""
    user: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    """`backup@node` for each backup restored."""
    created: list[str] = field(default_factory=list)
    """Backup ids made."""
    failed_step: str = ""
    failed_node: str = ""
    failed_reason: str = ""
    elapsed_s: float = 0.0

    def line(self) -> str:
        """The announcement."""
        tag = "[DRILL] " if self.drill else ""
        what = f"{self.title or self.runbook} (run {self.run_id})"
        where = self.params.get("node") or self.params.get("nodes") or ""
        if where:
            what += f" on {where}"
        inc = f" [incident {self.incident}]" if self.incident else ""
        backups = ""
        if self.restored:
            backups = f"; restored {', '.join(self.restored)}"
        elif self.created:
            shown = self.created[:5]
            more = f" and {len(self.created) - 5} more" if len(self.created) > 5 else ""
            backups = f"; made {', '.join(shown)}{more}"
        if self.status == "succeeded":
            return f"{tag}{what} succeeded in {_secs(self.elapsed_s)}{backups}{inc}."
        if self.status == "failed":
            step = self.failed_step or "a step"
            node = f" on {self.failed_node}" if self.failed_node else ""
            why = self.failed_reason or self.reason or "no reason recorded"
            nxt = f" Next: {WHAT_NEXT_UNREACHABLE}." if host_unreachable(why) else ""
            return f"{tag}{what} FAILED at {step}{node}: {why}{backups}{inc}.{nxt}"
        if self.status == "aborted":
            # The reason names who (the console's abort, a refused gate); else say who ran it.
            why = self.reason or "no reason given"
            who = f" (run by {self.user})" if self.user and self.user not in why else ""
            return f"{tag}{what} ABORTED: {why}{who}{backups}{inc}."
        if self.status == "interrupted":
            return (
                f"{tag}{what} INTERRUPTED ({self.reason or 'stopped'}); it is not running now, "
                f"resume with `kconsole run {self.runbook} --resume {self.run_id}`{inc}."
            )
        return f"{tag}{what} {self.status}{inc}: {self.reason}."


_UNREACHABLE = re.compile(r"node (\S+) is unreachable")

WHAT_NEXT_UNREACHABLE = (
    "the host itself is gone: replace it (a spare host under the same name in the site file, "
    "then run the recovery again) or escalate"
)
"""What to do when a recovery cannot reach its node (the console and the channel say it)."""


def host_unreachable(reason: str) -> str:
    """The node a failure reason says could not be reached, or ""."""
    m = _UNREACHABLE.search(reason or "")
    return m.group(1) if m else ""


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"


def read_ending(journal: Path) -> RunEnding | None:
    """The ending of the run whose journal is `journal`, or None while it has not ended."""
    records, _ = read_records(journal)
    created = next(
        (r for r in records if r.get("type") == "run" and r.get("event") == "created"), None
    )
    end = next(
        (
            r
            for r in reversed(records)
            if r.get("type") == "run" and r.get("event") in ("finished", "stopped")
        ),
        None,
    )
    if created is None or end is None:
        return None
    ending = RunEnding(
        run_id=str(created.get("run", "")),
        runbook=str(created.get("runbook", "")),
        title=str(created.get("title", "")),
        status=str(end.get("status", "")),
        reason=str(end.get("reason", "")),
        drill=bool(created.get("drill")),
        incident=str(created.get("incident") or ""),
        user=str(created.get("user", "")),
        params=dict(created.get("params") or {}),
        elapsed_s=float(end.get("elapsed_s") or 0.0),
    )
    for r in records:
        if r.get("type") == "run" and r.get("event") == "resumed":
            ending.user = str(r.get("user") or ending.user)
        if r.get("type") != "step":
            continue
        ev = r.get("event")
        data = r.get("data") or {}
        if ev == "finished" and isinstance(data, dict) and data.get("backup"):
            if data.get("replica") is not None or "members" in data:
                ending.restored.append(f"{data['backup']}@{r.get('node') or '?'}")
            else:
                ending.created.append(str(data["backup"]))
        elif ev == "failed" and not ending.failed_step:
            ending.failed_step = str(r.get("step", ""))
            ending.failed_node = str(r.get("node") or "")
            ending.failed_reason = str(r.get("reason", ""))
    return ending
