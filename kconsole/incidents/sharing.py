"""Incidents shared between consoles through the site's S3 store (`[site] shared`).

Each console writes its own events of an incident as its own stream,
`incidents/<id>/<console-key>/journal/NNNNNNNN.json` (one writer per stream, so consoles
never contend for a batch number), and reads the other consoles' streams back into
`state_dir/incidents/<id>/shared.jsonl`. `IncidentStore.events` folds both, so an
incident opened on console A can be listed, acknowledged and escalated on console B.

The local `events.jsonl` is written and fsynced first and stays the source of truth: a
background thread sends what the store lacks of it, in order, as one batch; an
unreachable store leaves the events to go later (the next change, tick or listing
catches the incident up). Paging a level is claimed in the store too, with a conditional
create of `pages/<id>/L<n>`, so one console among all of them sends each page.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from kconsole.fsutil import atomic_write
from kconsole.journal import read_records
from kconsole.shared import SharedStore, StoreUnavailable, console_name
from kconsole.site import Site

RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits between attempts of the background sender while the store is unreachable."""
SHARED_FILE = "shared.jsonl"
"""Other consoles' events of one incident, as last read from the store."""


def console_key(console: str) -> str:
    """A console's stream name under an incident (its name has `/` and `:` in it)."""
    return hashlib.sha256(console.encode("utf-8")).hexdigest()[:16]


class IncidentMirror:
    """This console's side of the shared incidents: sends its events, claims pages, reads
    the others' events."""

    def __init__(self, store: SharedStore, console: str, root: Path) -> None:
        self.store = store
        self.console = console
        self.key = console_key(console)
        self.root = root
        """`state_dir/incidents`."""
        self.failures = 0
        self.last_error = ""
        self._dirty: list[str] = []
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: dict[str, tuple[int, int]] = {}
        """Per incident: (events, batches) of this console's stream the store is known to
        hold, so each send need not read the stream back (a conflict forgets it)."""

    @classmethod
    def for_site(cls, site: Site) -> IncidentMirror | None:
        """The site's mirror, or None when `[site] shared` is not set (no request made)."""
        store = SharedStore.for_site(site)
        if store is None:
            return None
        return cls(store, console_name(site), site.state_dir / "incidents")

    def _stream(self, incident_id: str, key: str = "") -> str:
        return f"incidents/{incident_id}/{key or self.key}"

    # -- sending ---------------------------------------------------------------------------

    def push(self, incident_id: str) -> None:
        """The incident's local log grew: send what the store lacks, in the background."""
        with self._cond:
            if incident_id not in self._dirty:
                self._dirty.append(incident_id)
            if self._thread is None or not self._thread.is_alive():
                self._closing = False  # a change after `close`: send it too
                self._thread = threading.Thread(
                    target=self._loop, name="mirror-incidents", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Incidents with events not yet known to be in the store."""
        with self._cond:
            return len(self._dirty) + (1 if self._busy else 0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if not self._dirty:
                    return
                incident_id = self._dirty.pop(0)
                self._busy = True
            try:
                self.sync(incident_id)
            except StoreUnavailable as exc:
                self.failures += 1
                self.last_error = str(exc)
                with self._cond:
                    self._busy = False
                    if incident_id not in self._dirty:
                        self._dirty.insert(0, incident_id)
                    if self._closing:
                        return  # one failed attempt after close: the next sync catches up
                self._wake.wait(RETRY_S[min(self.failures, len(RETRY_S)) - 1])
                self._wake.clear()
                continue
            with self._cond:
                self._busy = False
                self.failures = 0
                self.last_error = ""
                self._cond.notify_all()

    def sync(self, incident_id: str, have: int | None = None, batches: int = 0) -> int:
        """Send the store this console's events of the incident it lacks, as one batch
        (blocking). `have`/`batches`: what the store holds of this console's stream, when
        the caller has just read it. The number of events sent."""
        local, _torn = read_records(self.root / incident_id / "events.jsonl")
        if have is None and incident_id in self._known:
            have, batches = self._known[incident_id]
        for _attempt in range(3):
            if have is None:
                view = self.store.read_stream(self._stream(incident_id))
                have, batches = len(view.records), view.batches
            self._known[incident_id] = (have, batches)
            if len(local) <= have:
                return 0
            if self.store.append(
                self._stream(incident_id), local[have:], batches + 1, self.console
            ):
                self._known[incident_id] = (len(local), batches + 1)
                return len(local) - have
            have = None  # another process of this console wrote that batch: read again
            self._known.pop(incident_id, None)
        return 0

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is queued (up to `timeout`; after a failed attempt, stop at once).
        True if everything reached the store."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
        return self.pending == 0

    # -- paging ----------------------------------------------------------------------------

    def claim_page(self, incident_id: str, level: int) -> bool:
        """True for exactly one console per incident and level (a conditional create);
        StoreUnavailable when the store cannot say."""
        body = json.dumps({"console": self.console, "incident": incident_id, "level": level})
        return self.store.create(f"pages/{incident_id}/L{level}", body.encode("utf-8")) is not None

    # -- reading ---------------------------------------------------------------------------

    def pull(self, catch_up: bool = True) -> int:
        """Read every console's incident events from the store into `shared.jsonl` files
        (blocking; StoreUnavailable when it cannot be read). With `catch_up`, also send
        the store whatever this console's logs have that it lacks (it was unreachable,
        or the process ended before its sender did). The number of incidents read."""
        seen = 0
        in_store = set(self.store.names("incidents", delimiter="/"))
        for incident_id in sorted(in_store):
            if not incident_id or "/" in incident_id or incident_id.startswith("."):
                continue
            theirs: list[dict[str, Any]] = []
            mine_have: int | None = 0
            mine_batches = 0
            for key in sorted(self.store.names(f"incidents/{incident_id}", delimiter="/")):
                view = self.store.read_stream(self._stream(incident_id, key))
                if key == self.key:
                    mine_have, mine_batches = len(view.records), view.batches
                    continue
                theirs += [{**r, "console": r.get("console") or view.console} for r in view.records]
            self._write_shared(incident_id, theirs)
            if catch_up:
                self.sync(incident_id, mine_have, mine_batches)
            seen += 1
        if catch_up and self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                if d.name not in in_store and (d / "events.jsonl").exists():
                    self.sync(d.name, 0, 0)
        return seen

    def _write_shared(self, incident_id: str, events: list[dict[str, Any]]) -> None:
        d = self.root / incident_id
        path = d / SHARED_FILE
        text = "".join(
            json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in events
        )
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return
        if not events and not path.exists():
            return
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"), 0o600)
