"""Whether a backup's manifest may be believed: held against the site, its locations and its
MAC before verify or restore uses anything it says (issue: backup locations are hostile).

Kept apart from the verify and restore pipelines so that however they change, one call
decides what a manifest may make the console do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from kconsole.backups.manifest import (
    Manifest,
    ManifestRejected,
    authenticate_manifest,
    check_manifest,
    path_allowed,
)
from kconsole.crypto import Keyring
from kconsole.errors import OperationFailed
from kconsole.site import Site


class _Copy(Protocol):
    size: int


class Backup(Protocol):
    """What is checked of a catalog Backup (a protocol: importing the catalog here would pull
    this module into the engine's import cycle)."""

    id: str
    kind: str
    manifest: Manifest | None
    manifests: dict[str, str]
    conflicts: list[str]

    @property
    def replicas(self) -> Mapping[str, _Copy]: ...


def check_backup(site: Site, backup: Backup, keyring: Keyring, now: datetime | None = None) -> bool:
    """Raise OperationFailed (one sentence naming the field) unless every manifest of `backup`
    agrees with the site, with where it is stored, with the other locations' copies and with
    its MAC. Returns whether the manifest is authenticated (False: unsigned, written before
    manifests were signed, trusted only because its fields check out; or a legacy file)."""
    m = backup.manifest
    if m is None:
        return False  # a plan-made file: named by its file name, restored to the plan's paths
    try:
        check_manifest(
            m,
            site.nodes,
            stored_at=list(backup.manifests.values()),
            sizes=[r.size for r in backup.replicas.values()],
            now=now or datetime.now(UTC),
        )
        for other in backup.conflicts:
            raise ManifestRejected(
                m.id, "id", f"is claimed by another, different manifest too ({other})"
            )

        def master(key_id: str) -> bytes | None:
            key = keyring.find(key_id)
            return key.master if key is not None else None

        return authenticate_manifest(m, master)
    except ManifestRejected as exc:
        raise OperationFailed(f"{exc}.") from None


def confined_paths(backup: Backup, paths: list[str]) -> list[str]:
    """`paths` as relative paths, each one checked again against the backup's kind (what
    restore is about to write): OperationFailed naming the first that is not allowed."""
    out = []
    for p in paths:
        why = path_allowed(backup.kind, p)
        if why is not None:
            raise OperationFailed(f"the manifest of {backup.id} is refused: paths {why}.")
        out.append(p.strip("/"))
    return out
