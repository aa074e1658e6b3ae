"""Where incidents live: one append-only, fsynced event log per incident.

Layout under the site's `state_dir`::

    incidents/<id>/events.jsonl   one JSON event per line, append-only (the incident)
    incidents/<id>/lock           flock held while an event is appended
    incidents/<id>/pages/L<n>     created once (O_EXCL) by whoever pages level n
    incidents/<id>/shared.jsonl   other consoles' events, as last read from the shared store

Everything an incident is goes through `IncidentStore`, so a mirror (the shared store) has
one place to hook: `events(id)` and `append(id, event)`.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kconsole.errors import UsageError
from kconsole.fsutil import fsync_dir, locked
from kconsole.incidents.model import Incident
from kconsole.journal import read_records
from kconsole.shared import StoreUnavailable

if TYPE_CHECKING:
    from kconsole.incidents.sharing import IncidentMirror


def new_incident_id(now: datetime) -> str:
    """A sortable, unique incident id: `INC-20261203-190244-3fa1`."""
    return f"INC-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class IncidentStore:
    """Reads and appends incident event logs under `state_dir/incidents/`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "incidents"
        self.mirror: IncidentMirror | None = None
        """The shared store's side (`[site] shared`): appends are sent there, pages claimed
        there, and other consoles' events read back (None: this console only)."""

    def _dir(self, incident_id: str) -> Path:
        if not incident_id or "/" in incident_id or incident_id.startswith("."):
            raise UsageError(f'"{incident_id}" is not an incident id.')
        return self.root / incident_id

    def create(self, incident_id: str, opened: dict[str, Any]) -> None:
        """Make the incident's directory and write its `opened` event."""
        d = self._dir(incident_id)
        self.root.mkdir(parents=True, exist_ok=True)
        d.mkdir(exist_ok=False)
        (d / "pages").mkdir()
        fsync_dir(self.root)
        self.append(incident_id, opened)

    def exists(self, incident_id: str) -> bool:
        """Whether an incident with this id has been opened."""
        d = self._dir(incident_id)
        return (d / "events.jsonl").exists() or (d / "shared.jsonl").exists()

    def append(self, incident_id: str, event: dict[str, Any]) -> None:
        """Append one event, durable before this returns (several processes may append)."""
        d = self._dir(incident_id)
        if self.mirror is not None:
            event.setdefault("console", self.mirror.console)
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"
        with locked(d / "lock"):
            path = d / "events.jsonl"
            if path.exists():
                raw = path.read_bytes()
                if raw and not raw.endswith(b"\n"):
                    # A torn tail is a crash artefact: the event was never committed.
                    with path.open("r+b") as fh:
                        fh.truncate(raw.rfind(b"\n") + 1)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.mirror is not None:
            self.mirror.push(incident_id)  # after the local write: it is the source of truth

    def claim_page(self, incident_id: str, level: int) -> bool:
        """True for exactly one caller per incident and level, whichever process asks first."""
        marker = self._dir(incident_id) / "pages" / f"L{level}"
        marker.parent.mkdir(exist_ok=True)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        fsync_dir(marker.parent)
        return self._claim_shared_page(incident_id, level)

    def _claim_shared_page(self, incident_id: str, level: int) -> bool:
        """Across consoles: the store's conditional create decides. An unreachable store
        cannot say, and a page sent twice is better than a page never sent: this console
        pages (its local claim stands)."""
        if self.mirror is None or level == 1:
            # Level 1 is paged by the console that opens the incident, before any other
            # console can know its id: opening never waits for the store.
            return True
        try:
            return self.mirror.claim_page(incident_id, level)
        except StoreUnavailable:
            return True

    def events(self, incident_id: str) -> list[dict[str, Any]]:
        """Every committed event of the incident, oldest first."""
        d = self._dir(incident_id)
        records, _torn = read_records(d / "events.jsonl")
        theirs, _torn = read_records(d / "shared.jsonl")
        if not theirs:
            return records
        # Other consoles' events interleave with ours by time; `opened` always comes first.
        merged = records + theirs
        return sorted(merged, key=lambda e: (e.get("event") != "opened", str(e.get("time", ""))))

    def load(self, incident_id: str) -> Incident:
        """The incident folded from its events; UsageError if there is none."""
        events = self.events(incident_id)
        if not events or events[0].get("event") != "opened":
            raise UsageError(
                f"no incident {incident_id} in {self.root}; `kconsole incident list --all` lists them."
            )
        return Incident.from_events(events)

    def ids(self) -> list[str]:
        """Every incident id, newest first."""
        if not self.root.is_dir():
            return []
        found = [
            p.name
            for p in self.root.iterdir()
            if (p / "events.jsonl").exists() or (p / "shared.jsonl").exists()
        ]
        return sorted(found, reverse=True)

    def all(self) -> list[Incident]:
        """Every incident, newest first."""
        out = []
        for i in self.ids():
            events = self.events(i)
            if events and events[0].get("event") == "opened":
                out.append(Incident.from_events(events))
        return out
