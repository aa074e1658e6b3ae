"""Which backup a runbook means: a backup id, the latest good one, or the newest good one
made before a point in time.

    latest                          the newest good backup of the kind and node
    before:2026-11-26T02:40Z        the newest good one made strictly before that time
    before:now                      the same as latest
    validator1_blockchain-state_…   that backup

A security recovery restores from before the compromise, not from whatever ran last:
`before:` is how a runbook (or `--param`) says so, and it is applied per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kconsole.backups.catalog import Backup, Catalog

LATEST = "latest"
BEFORE = "before:"
NOW = "now"


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (UTC unless it says otherwise; a date alone is its midnight UTC),
    or None for "now"; ValueError with the reason otherwise."""
    raw = text.strip()
    if raw.lower() == NOW:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f'"{text}" is not a time; write it as 2026-11-26T02:40Z (ISO 8601, UTC) or "now"'
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def canonical_time(text: str) -> str:
    """`text` as the one spelling the journal keeps: `now` or `YYYY-MM-DDTHH:MM:SSZ`."""
    when = parse_time(text)
    return NOW if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class BackupSelector:
    """A parsed `backup` value."""

    backup_id: str = ""
    """A named backup, or "" for latest / before."""
    before: datetime | None = None
    """Only backups made strictly before this time (None: any time)."""

    def describe(self) -> str:
        """How a message names what was asked for."""
        if self.backup_id:
            return self.backup_id
        return "latest" if self.before is None else f"made before {self.before:%Y-%m-%d %H:%M:%S}Z"


def parse_selector(text: str) -> BackupSelector:
    """`latest`, `before:TIME` or a backup id; ValueError for a `before:` with a bad time."""
    raw = text.strip()
    if raw in ("", LATEST):
        return BackupSelector()
    if raw.startswith(BEFORE):
        return BackupSelector(before=parse_time(raw[len(BEFORE) :]))
    return BackupSelector(backup_id=raw)


def pick(
    catalog: Catalog, selector: BackupSelector, kind: str, node: str, location: str | None = None
) -> Backup | None:
    """The newest restorable backup of `kind` from `node` the selector allows (not for ids),
    among those with a copy in `location` when one is given."""
    for backup in catalog.select(kind, node):  # newest first
        if not (backup.good and backup.replicas):
            continue
        if location is not None and location not in backup.replicas:
            continue
        if selector.before is None or backup.created < selector.before:
            return backup
    return None
