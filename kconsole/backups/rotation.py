"""How old the key new backups are encrypted with is, against the site's `[keys] rotate_after`
(the plan's quarterly rotation): `kconsole schedule`, the metrics and the dashboard read it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kconsole.backups.session import BackupSession
from kconsole.errors import UsageError
from kconsole.site import Site


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class KeyRotation:
    """How old the key new backups are encrypted with is, against `[keys] rotate_after`."""

    key_id: str
    path: Path | None
    since: datetime
    """When the key file was written (its modification time)."""
    age_s: float
    rotate_after_s: float
    due: datetime

    @property
    def overdue(self) -> bool:
        """Whether the key has been current longer than the site allows."""
        return self.age_s > self.rotate_after_s

    def as_json(self) -> dict[str, Any]:
        """The key-rotation fields `kconsole schedule --json` and the metrics carry."""
        return {
            "key_id": self.key_id,
            "since": _iso(self.since),
            "age_s": round(self.age_s),
            "rotate_after_s": round(self.rotate_after_s),
            "due": _iso(self.due),
            "overdue": self.overdue,
        }


def key_rotation(site: Site, now: datetime | None = None) -> KeyRotation | None:
    """The current key's age against `[keys] rotate_after`; None when the site sets no
    rotation period or has no key yet. The key's age is its file's modification time:
    `kconsole crypto keygen` writes a new file, so a rotation resets it."""
    if site.key_rotate_after is None or site.keys_dir is None:
        return None
    try:
        key = BackupSession(site, transport=None).current_key()
    except UsageError:
        return None
    if key.path is None:
        return None
    since = datetime.fromtimestamp(key.path.stat().st_mtime).astimezone()
    now = now or datetime.now().astimezone()
    return KeyRotation(
        key.key_id,
        key.path,
        since,
        (now - since).total_seconds(),
        site.key_rotate_after,
        since + timedelta(seconds=site.key_rotate_after),
    )
