"""The backup catalog as the console reads it, behind a small seam.

The engine's catalog is `services.backups(site).catalog()`, its rows and
`tier_summary(catalog.freshness(...))`; tests and snapshots use `StaticCatalog`, and with no
catalog at all (`catalog=None`) the Catalog screen and the dashboard's RPO strip say "catalog
not available". Rows are the `kconsole catalog --json` lines (docs/cli.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kconsole.backups.catalog import tier_summary
from kconsole.runbook.coverage import expected_nodes
from kconsole.services import Services
from kconsole.site import Site

CatalogRow = Mapping[str, Any]
WINDOW = 2000
"""Most rows the table holds at once: the stock DataTable stays responsive up to about here."""


@dataclass
class CatalogReading:
    """One listing of every location."""

    rows: list[CatalogRow]
    """One per (backup, location): the `catalog --json` lines."""
    tiers: Sequence[Mapping[str, Any]] = field(default_factory=list)
    """The engine's `tier_summary` lines: tier, rpo_s, status (ok|stale|none), nodes, breached, max_loss_s."""
    errors: dict[str, str] = field(default_factory=dict)
    """Locations that could not be listed, and why."""
    as_of: datetime | None = None
    """When the listing was taken."""
    orphans: list[CatalogRow] = field(default_factory=list)
    """Debris the engine's catalog reports (`orphan_row` of each `"type": "orphan"` line):
    shown after the backups with the status `orphan`."""

    def tier(self, name: str) -> Mapping[str, Any] | None:
        """The summary line of one tier."""
        return next((t for t in self.tiers if t.get("tier") == name), None)


class CatalogSource(Protocol):
    """Anything that lists the backups; awaited in an async worker."""

    async def read(self, live: dict[str, int | None]) -> CatalogReading:
        """List every location; `live` is each node's current chain height, for data-loss figures."""
        ...


@dataclass
class StaticCatalog:
    """Fixed rows and tier lines: tests, snapshots, demos."""

    rows: Sequence[CatalogRow]
    tiers: Sequence[Mapping[str, Any]] = ()
    orphans: Sequence[CatalogRow] = ()

    async def read(self, live: dict[str, int | None]) -> CatalogReading:
        """The rows as given."""
        return CatalogReading(list(self.rows), list(self.tiers), orphans=list(self.orphans))


@dataclass
class EngineCatalog:
    """The engine's catalog through the console's own services (one connection pool)."""

    site: Site
    services: Services

    async def read(self, live: dict[str, int | None]) -> CatalogReading:
        """A fresh listing, its rows and per-tier freshness (over the nodes the site's backup
        runbooks back up, read from disk off the event loop)."""
        expected = await asyncio.to_thread(expected_nodes, self.site)
        catalog = await self.services.backups(self.site).catalog(refresh=True)
        return CatalogReading(
            catalog.rows(),
            tier_summary(catalog.freshness(self.site, live, expected=expected)),
            dict(catalog.errors),
            catalog.as_of,
            [orphan_row(o.as_json(), catalog.as_of) for o in catalog.orphans],
        )


def orphan_row(line: Mapping[str, Any], as_of: datetime) -> dict[str, Any]:
    """A `"type": "orphan"` line of `kconsole catalog --json` as a table row: its kind and
    node from where it is stored, its age from its modification time, the status `orphan`
    and, as its id, its file name (it is no backup)."""
    parts = str(line.get("key", "")).split("/")
    kind, node = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
    modified = str(line.get("modified", ""))
    try:
        age: float | None = (as_of - datetime.fromisoformat(modified)).total_seconds()
    except ValueError:
        age = None
    return {
        **line,
        "id": parts[-1],
        "kind": kind,
        "node": node,
        "created": modified,
        "age_s": age,
        "status": "orphan",
    }


def _text(row: CatalogRow) -> str:
    return " ".join(str(v) for v in row.values()).lower()


def filter_rows(
    rows: Sequence[CatalogRow], query: str, limit: int = WINDOW
) -> tuple[list[CatalogRow], int]:
    """Rows matching every word of `query` (`field:value` matches one field), at most `limit`.

    Returns the window and the total number of matches, so the screen can say how many
    it is not showing.
    """
    words = query.lower().split()
    if not words:
        return list(rows[:limit]), len(rows)
    plain: list[str] = []
    fielded: list[tuple[str, str]] = []
    for word in words:
        key, sep, value = word.partition(":")
        if sep and key and value:
            fielded.append((key, value))
        else:
            plain.append(word)
    window: list[CatalogRow] = []
    total = 0
    for row in rows:
        if plain and not all(w in _text(row) for w in plain):
            continue
        if not all(v in str(row.get(k, "")).lower() for k, v in fielded):
            continue
        total += 1
        if len(window) < limit:
            window.append(row)
    return window, total
