"""The first failure the console saw on each node, kept in `state_dir/outages.json`.

Every fleet poll the console makes (the dashboard's, `kconsole status`, a drill's detection
and a recovery's consistency check) passes its results here. A node seen down (`inactive` or
`unreachable`) opens an outage stamped with that poll's time and source, unless one is
already open; the next poll that sees it up again closes it. A report without an incident
takes its detection time from the outage open when its run started (see
`kconsole.reports`), and names the poll that saw it.

The file is small (the last `KEEP` outages per node), rewritten temp + fsync + rename, and
only when something changed; callers on an event loop run `record_polls` in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from kconsole.fsutil import atomic_write
from kconsole.journal import iso

FILE = "outages.json"
KEEP = 20
"""Outages remembered per node (older ones are dropped)."""

DOWN = ("inactive", "unreachable")
"""Poll states that count as a failure (`behind` is a node still catching up, not down)."""


def _load(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: [e for e in v if isinstance(e, dict)] for k, v in data.items() if isinstance(v, list)
    }


def record_polls(
    state_dir: Path, states: Iterable[tuple[str, str, str]], when: datetime, source: str
) -> bool:
    """Record one poll: `states` is (node, state, detail) per node. Returns whether the file
    changed (it is written only then)."""
    path = Path(state_dir) / FILE
    data = _load(path)
    changed = False
    for node, state, detail in states:
        history = data.setdefault(node, [])
        open_now = bool(history) and not history[-1].get("cleared")
        if state in DOWN and not open_now:
            history.append({"first": iso(when), "source": source, "state": state, "detail": detail})
            del history[:-KEEP]
            changed = True
        elif state not in DOWN and open_now:
            history[-1]["cleared"] = iso(when)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(data, indent=1) + "\n").encode(), 0o644)
    return changed


def first_failure(
    state_dir: Path, nodes: Iterable[str], at: datetime, parse: Any
) -> tuple[datetime, str, str] | None:
    """The earliest first-seen failure among `nodes` of outages open at time `at` (opened at
    or before it and not cleared before it): (time, node, source), or None.
    `parse` turns a stored timestamp into a datetime (None when it cannot)."""
    data = _load(Path(state_dir) / FILE)
    found: tuple[datetime, str, str] | None = None
    for node in nodes:
        for outage in data.get(node, []):
            first = parse(outage.get("first"))
            cleared = parse(outage.get("cleared")) if outage.get("cleared") else None
            if first is None or first > at or (cleared is not None and cleared < at):
                continue
            if found is None or first < found[0]:
                found = (first, node, str(outage.get("source") or "a fleet poll"))
    return found
