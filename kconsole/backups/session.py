"""Per-run access to backup locations, the keyring and the catalog, shared by every step
of a run so the locations are listed once, not once per node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kconsole.backups.catalog import Catalog, build_catalog
from kconsole.backups.stores import Store, open_stores
from kconsole.crypto import Key, Keyring, read_key_file
from kconsole.errors import OperationFailed, UsageError
from kconsole.fsutil import atomic_write
from kconsole.site import Site

LISTING_ATTEMPTS = 3
"""Listings tried while backups keep changing underneath; the last one is used, not kept."""


class BackupSession:
    """Stores, keys and a catalog for one site, built lazily and cached."""

    def __init__(self, site: Site, transport: Any) -> None:
        self.site = site
        self.transport = transport
        self._stores: dict[str, Store] | None = None
        self._catalog: Catalog | None = None
        self._generation = 0
        """Bumped by invalidate(); a listing that saw it change is not kept."""
        self._lock = asyncio.Lock()

    def stores(self, only: list[str] | None = None) -> dict[str, Store]:
        """The site's locations (optionally only the named ones)."""
        if self._stores is None:
            self._stores = open_stores(self.site, self.transport)
        if not only:
            return dict(self._stores)
        unknown = [n for n in only if n not in self._stores]
        if unknown:
            raise OperationFailed(
                f"unknown location {unknown[0]}; the site has {', '.join(self._stores)}."
            )
        return {n: self._stores[n] for n in only}

    def keyring(self) -> Keyring:
        """The site's key directory."""
        if self.site.keys_dir is None:
            raise UsageError(
                "the site has no [keys] dir; backups cannot be encrypted or read without keys."
            )
        return Keyring(self.site.keys_dir)  # refuses a missing, empty or non-private keyring

    def current_key(self) -> Key:
        """The key new backups are encrypted with: the keyring's CURRENT marker (written
        when a key is generated or rotated), else the site's `[keys] current`, else the
        newest key file."""
        marker = current_marker(self.site)
        if marker is not None:
            return read_key_file(marker)
        if self.site.current_key and self.site.keys_dir is not None:
            return read_key_file(self.site.keys_dir / self.site.current_key)
        return self.keyring().current()

    async def catalog(self, refresh: bool = False) -> Catalog:
        """The catalog, listed once per session unless refreshed."""
        async with self._lock:
            if self._catalog is not None and not refresh:
                return self._catalog
            for _ in range(LISTING_ATTEMPTS):
                generation = self._generation
                built = await build_catalog(self.site, self.stores())
                if generation == self._generation:
                    self._catalog = built
                    break
                # A backup was made or deleted while the locations were being listed: this
                # listing may predate it, so list again rather than keep it.
            return built

    def invalidate(self) -> None:
        """Forget the catalog (a backup was made or deleted), even one being listed now."""
        self._catalog = None
        self._generation += 1

    async def close(self) -> None:
        """Close the stores."""
        for store in (self._stores or {}).values():
            await store.close()


CURRENT_MARKER = "CURRENT"


def current_marker(site: Site) -> Path | None:
    """The key file named by the keyring's CURRENT marker, if there is one."""
    if site.keys_dir is None:
        return None
    marker = site.keys_dir / CURRENT_MARKER
    try:
        name = marker.read_text().strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name:
        raise UsageError(f"{marker} must hold the file name of a key in {site.keys_dir}.")
    return site.keys_dir / name


def make_current(site: Site, name: str) -> None:
    """Mark key file `name` as the one new backups use (atomic)."""
    assert site.keys_dir is not None
    atomic_write(site.keys_dir / CURRENT_MARKER, (name + "\n").encode(), 0o600)
