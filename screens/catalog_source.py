"""The backup catalog as the console reads it, behind a small seam.

The engine's catalog (`kconsole.catalog`) is imported lazily: while it does not exist the
Catalog screen and the dashboard's RPO strip say "catalog not available" instead of
failing. Rows are the `kconsole catalog --json` lines (DESIGN.md): `id`, `kind`, `node`,
`location`, `path`, `size`, `created`, `age_s`, `rpo_s`, `status`, `key_id`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kconsole.site import Site

CatalogRow = Mapping[str, Any]
WINDOW = 2000
"""Most rows the table holds at once: the stock DataTable stays responsive up to about here."""

ENGINE_MODULES = ("kconsole.catalog", "kconsole.backups")
"""Where the engine's catalog may live; the first that imports and has `list_backups` wins."""


class CatalogSource(Protocol):
    """Anything that lists backups as catalog rows (blocking; the UI calls it in a worker)."""

    def rows(self) -> list[CatalogRow]:
        """Every backup in every location."""
        ...


@dataclass
class StaticCatalog:
    """A fixed list of rows: tests, snapshots, demos."""

    data: Sequence[CatalogRow]

    def rows(self) -> list[CatalogRow]:
        """The rows as given."""
        return list(self.data)


@dataclass
class EngineCatalog:
    """The engine's `list_backups(site)`, its results turned into catalog rows."""

    site: Site
    list_backups: Callable[[Site], Iterable[Any]]

    def rows(self) -> list[CatalogRow]:
        """Every backup, as the `catalog --json` line of each."""
        out: list[CatalogRow] = []
        for backup in self.list_backups(self.site):
            out.append(backup.as_json() if hasattr(backup, "as_json") else dict(backup))
        return out


def engine_catalog(site: Site) -> CatalogSource | None:
    """The engine's catalog for `site`, or None while the engine has none."""
    for name in ENGINE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        list_backups = getattr(module, "list_backups", None)
        if callable(list_backups):
            return EngineCatalog(site, list_backups)
    return None


def _text(row: CatalogRow) -> str:
    return " ".join(str(v) for v in row.values()).lower()


def filter_rows(rows: Sequence[CatalogRow], query: str, limit: int = WINDOW) -> tuple[list[CatalogRow], int]:
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
        text = _text(row)
        if not all(w in text for w in plain):
            continue
        if not all(v in str(row.get(k, "")).lower() for k, v in fielded):
            continue
        total += 1
        if len(window) < limit:
            window.append(row)
    return window, total


@dataclass(frozen=True)
class TierFreshness:
    """A tier's newest good backup against its RPO."""

    tier: str
    rpo: float
    rto: float
    newest_age: float | None
    """Seconds since the newest backup that verified ok, or None if there is none."""

    @property
    def state(self) -> str:
        """ok, stale, or none."""
        if self.newest_age is None:
            return "none"
        return "ok" if self.newest_age <= self.rpo else "stale"


def tier_freshness(site: Site, rows: Sequence[CatalogRow], now: datetime) -> list[TierFreshness]:
    """For each tier, the age of its newest ok backup of any of its kinds."""
    out = []
    for tier in site.tiers.values():
        ages = [_age(r, now) for r in rows if r.get("kind") in tier.kinds and r.get("status", "ok") == "ok"]
        known = [a for a in ages if a is not None]
        out.append(TierFreshness(tier.name, tier.rpo, tier.rto, min(known) if known else None))
    return out


def _age(row: CatalogRow, now: datetime) -> float | None:
    created = row.get("created")
    if isinstance(created, str) and created:
        try:
            return max(0.0, (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
        except ValueError:
            pass
    age = row.get("age_s")
    return float(age) if isinstance(age, int | float) else None
