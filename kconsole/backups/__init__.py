"""Backups: manifests, the stores that hold them (local, SFTP, S3), create, restore,
verify, prune, and the catalog across every location."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kconsole.site import Site


def list_backups(site: Site) -> list[dict[str, Any]]:
    """Every copy of every backup as `catalog --json` rows (blocking; the console calls it in a worker)."""
    from kconsole.backups.catalog import list_backups as _list

    return _list(site)
