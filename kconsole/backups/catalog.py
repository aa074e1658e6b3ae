"""The backup catalog: every backup in every location, joined by id, with its age
against its tier's RPO and whether its replicas and verification are in order.

Built from the manifests `backup.create` writes, plus the plan's own files recognised
by name (legacy openssl format). Locations are listed concurrently; manifests already
seen are cached in the state directory by (location, key, size, mtime), so a refresh
only reads what is new. A location that cannot be listed is reported, never guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kconsole.backups.manifest import (
    MANIFEST_SUFFIX,
    OBJECT_SUFFIX,
    Manifest,
    iso,
    parse_legacy_name,
)
from kconsole.backups.stores import ObjectInfo, Store
from kconsole.config.problems import did_you_mean
from kconsole.errors import OperationFailed, UsageError
from kconsole.fsutil import atomic_write
from kconsole.site import Site

STATUSES = ("ok", "stale", "failed-verify", "missing-replica")


@dataclass
class Replica:
    """One copy of a backup in one location."""

    location: str
    key: str
    size: int
    mtime: float
    path: str


@dataclass
class Backup:
    """One backup, wherever its copies are."""

    id: str
    kind: str
    node: str
    created: datetime
    manifest: Manifest | None
    legacy: bool = False
    replicas: dict[str, Replica] = field(default_factory=dict)
    status: str = "ok"
    reason: str = ""
    rpo_s: float = 0.0
    newest: bool = False

    @property
    def key_id(self) -> str:
        """Key id from the manifest; legacy files have none."""
        return self.manifest.key_id if self.manifest else ("legacy" if self.legacy else "")

    @property
    def size(self) -> int:
        """Ciphertext size."""
        if self.manifest:
            return self.manifest.ciphertext_size
        return max((r.size for r in self.replicas.values()), default=0)

    @property
    def chain_height(self) -> int | None:
        """Chain height when it was made."""
        return self.manifest.chain_height if self.manifest else None

    @property
    def object_key(self) -> str:
        """Key of the encrypted object inside a location."""
        return next(iter(self.replicas.values())).key

    def age(self, now: datetime) -> float:
        """Seconds since it was made."""
        return (now - self.created).total_seconds()

    @property
    def good(self) -> bool:
        """Restorable as far as the catalog knows."""
        return self.status != "failed-verify"


@dataclass
class Catalog:
    """Backups across all locations, as of one listing."""

    backups: list[Backup]
    as_of: datetime
    errors: dict[str, str] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)

    def find(self, bid: str) -> Backup:
        """The backup with id `bid`; UsageError with a suggestion if none."""
        for b in self.backups:
            if b.id == bid:
                return b
        raise UsageError(f'no backup "{bid}" in the catalog{did_you_mean(bid, [b.id for b in self.backups])}; '
                         "`kconsole catalog` lists them.")

    def latest_good(self, kind: str, node: str) -> Backup | None:
        """The newest restorable backup of `kind` from `node`."""
        for b in sorted(self.backups, key=lambda x: x.created, reverse=True):
            if b.kind == kind and b.node == node and b.good and b.replicas:
                return b
        return None

    def select(self, kind: str | None = None, node: str | None = None) -> list[Backup]:
        """Backups matching the filters, newest first."""
        out = [b for b in self.backups if (not kind or b.kind == kind) and (not node or b.node == node)]
        return sorted(out, key=lambda b: b.created, reverse=True)

    def rows(self, kind: str | None = None, node: str | None = None,
             location: str | None = None) -> list[dict[str, Any]]:
        """One row per (backup, location): the `catalog --json` lines."""
        out = []
        for b in self.select(kind, node):
            for loc, r in b.replicas.items():
                if location and loc != location:
                    continue
                out.append({
                    "id": b.id, "kind": b.kind, "node": b.node, "location": loc, "path": r.path,
                    "size": r.size, "created": iso(b.created), "age_s": round(b.age(self.as_of)),
                    "rpo_s": b.rpo_s, "status": b.status, "key_id": b.key_id,
                    "chain_height": b.chain_height, "legacy": b.legacy, "reason": b.reason,
                })
        return out

    def freshness(self, site: Site) -> list[dict[str, Any]]:
        """Per tier, kind and node: the newest good backup's age against the RPO."""
        out = []
        for tier in site.tiers.values():
            for kind in tier.kinds:
                nodes = sorted({b.node for b in self.backups if b.kind == kind})
                for node in nodes:
                    best = self.latest_good(kind, node)
                    age = best.age(self.as_of) if best else None
                    out.append({"tier": tier.name, "kind": kind, "node": node, "rpo_s": tier.rpo,
                                "newest": best.id if best else None, "age_s": round(age) if age is not None else None,
                                "breached": age is None or (tier.rpo > 0 and age > tier.rpo),
                                "chain_height": best.chain_height if best else None})
        return out


def _cache_path(site: Site) -> Path:
    return site.state_dir / "catalog-cache.json"


def _verify_path(site: Site) -> Path:
    return site.state_dir / "verify-state.json"


def load_verify_state(site: Site) -> dict[str, dict[str, Any]]:
    """Results of past verifications, by backup id."""
    try:
        return dict(json.loads(_verify_path(site).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_verification(site: Site, bid: str, ok: bool, reason: str = "") -> None:
    """Remember a verification result (the catalog shows failed ones as failed-verify)."""
    state = load_verify_state(site)
    state[bid] = {"ok": ok, "reason": reason, "time": iso(datetime.now(UTC))}
    atomic_write(_verify_path(site), json.dumps(state, indent=1, sort_keys=True).encode(), 0o600)


async def _list_location(name: str, store: Store) -> tuple[str, list[ObjectInfo] | str]:
    try:
        return name, await store.list()
    except (OperationFailed, OSError) as exc:
        return name, str(exc).rstrip(".")


async def build_catalog(site: Site, stores: dict[str, Store], now: datetime | None = None) -> Catalog:
    """List every location at once and join what they hold."""
    now = now or datetime.now(UTC)
    listings = await asyncio.gather(*(_list_location(n, s) for n, s in stores.items()))
    try:
        cache: dict[str, Any] = json.loads(_cache_path(site).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        cache = {}
    new_cache: dict[str, Any] = {}
    errors: dict[str, str] = {}
    by_id: dict[str, Backup] = {}
    sem = asyncio.Semaphore(16)

    async def manifest_of(loc: str, store: Store, info: ObjectInfo) -> Manifest | None:
        ck = f"{loc}|{info.key}|{info.size}|{int(info.mtime)}"
        if ck in cache:
            new_cache[ck] = cache[ck]
            try:
                return Manifest.from_json(json.dumps(cache[ck]).encode())
            except ValueError:
                pass
        async with sem:
            try:
                raw = await store.read_bytes(info.key)
                m = Manifest.from_json(raw)
            except (OperationFailed, ValueError):
                return None
        new_cache[ck] = json.loads(m.to_json())
        return m

    for loc, listing in listings:
        if isinstance(listing, str):
            errors[loc] = listing
            continue
        store = stores[loc]
        objects = {o.key: o for o in listing}
        manifests = [o for o in listing if o.key.endswith(MANIFEST_SUFFIX)]
        results = await asyncio.gather(*(manifest_of(loc, store, o) for o in manifests))
        for info, m in zip(manifests, results, strict=True):
            obj_key = info.key[: -len(MANIFEST_SUFFIX)] + OBJECT_SUFFIX
            if m is None:
                continue
            b = by_id.setdefault(m.id, Backup(m.id, m.kind, m.node, m.created_at, m))
            obj = objects.get(obj_key)
            if obj is not None:
                b.replicas[loc] = Replica(loc, obj_key, obj.size, obj.mtime, store.describe(obj_key))
            elif not b.reason:
                b.reason = f"manifest without object in {loc}"
        for o in listing:
            parsed = parse_legacy_name(posixpath.basename(o.key))
            if parsed is None:
                continue
            node, kind, created = parsed
            bid = posixpath.basename(o.key)
            b = by_id.setdefault(bid, Backup(bid, kind, node, created, None, legacy=True))
            b.replicas[loc] = Replica(loc, o.key, o.size, o.mtime, store.describe(o.key))
    if new_cache != cache:
        # A cache that cannot be written only costs speed.
        with contextlib.suppress(OSError):
            atomic_write(_cache_path(site), json.dumps(new_cache).encode(), 0o600)
    verified = load_verify_state(site)
    backups = list(by_id.values())
    reachable = [n for n in stores if n not in errors]
    newest: dict[tuple[str, str], Backup] = {}
    for b in backups:
        tier = site.tier_for_kind(b.kind)
        b.rpo_s = tier.rpo if tier else 0.0
        v = verified.get(b.id)
        if v is not None and not v.get("ok"):
            b.status, b.reason = "failed-verify", str(v.get("reason", ""))
        elif not b.legacy and any(n not in b.replicas for n in reachable):
            missing = [n for n in reachable if n not in b.replicas]
            b.status, b.reason = "missing-replica", b.reason or f"no copy in {', '.join(missing)}"
        if b.good:
            k = (b.kind, b.node)
            if k not in newest or b.created > newest[k].created:
                newest[k] = b
    for b in newest.values():
        b.newest = True
        if b.status == "ok" and b.rpo_s and b.age(now) > b.rpo_s:
            b.status, b.reason = "stale", "newest backup is older than the RPO"
    backups.sort(key=lambda b: b.created, reverse=True)
    return Catalog(backups, now, errors, list(stores))
