"""The backup catalog: every backup in every location, joined by id, with its age
against its tier's RPO and whether its replicas and verification are in order.

Built from the manifests `backup.create` writes, plus the plan's own files recognised
by name (legacy openssl format). Locations are listed concurrently; manifests already
seen are cached in the state directory by (location, key, size, mtime), so a refresh
only reads what is new. A location that cannot be listed is reported, never guessed.
Every catalog carries `as_of`, the moment its listings were taken, and every output
made from it says so.

Per tier, kind and node, `freshness()` gives the newest good backup, its age against
the RPO and the data a failure now would lose: the time since that backup, and the
blocks the live node has made since (its height from the health URL, when it answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import operator
import os
import posixpath
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kconsole.backups.manifest import (
    MANIFEST_SUFFIX,
    OBJECT_SUFFIX,
    Manifest,
    iso,
    parse_legacy_name,
)
from kconsole.backups.stores import ObjectInfo, Store, is_staging_name
from kconsole.config.problems import did_you_mean
from kconsole.errors import OperationFailed, UsageError
from kconsole.fsutil import atomic_write, atomic_writer, locked
from kconsole.site import Site

if TYPE_CHECKING:
    from kconsole.health import HealthReader

STATUSES = ("ok", "stale", "failed-verify", "missing-replica")
CACHE_VERSION = 4
"""4: manifests carry a `mac`."""
_FIELDS = list(Manifest.__dataclass_fields__)
"""The order manifest values are cached in (one list per manifest: a third of the JSON of dicts)."""
_cache_values = operator.attrgetter(*_FIELDS)
"""A manifest's values in `_FIELDS` order, as a tuple (the cache's JSON array)."""


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
    manifests: dict[str, str] = field(default_factory=dict)
    """Location -> key of the manifest there (what prune removes after the object)."""
    missing: list[str] = field(default_factory=list)
    """Listed locations that hold no copy of it (unlistable ones are in Catalog.errors)."""
    conflicts: list[str] = field(default_factory=list)
    """`location:key` of each other manifest of this id that says something else than
    `manifest`, or sits beside it in one location (forged, swapped or replayed); verification
    refuses such a backup."""

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
        if self.replicas:
            return next(iter(self.replicas.values())).key
        if self.manifest is not None:
            return self.manifest.object_key()
        return self.id

    def age(self, now: datetime) -> float:
        """Seconds since it was made."""
        return (now - self.created).total_seconds()

    @property
    def good(self) -> bool:
        """Restorable as far as the catalog knows."""
        return self.status != "failed-verify"


ORPHAN_AGE_S = 6 * 3600.0
"""An object without a manifest younger than this may be a backup still being stored; older,
it is debris of one that failed or was interrupted (an orphan)."""


ORPHAN_OBJECT = "no manifest beside it"
ORPHAN_STAGING = "a staging file left by an interrupted write"
ORPHAN_MANIFEST = "a manifest without its object"


@dataclass(frozen=True)
class Orphan:
    """Debris in a location, never restorable through the console, removed by `backup.prune`:
    an encrypted object with no manifest beside it, a staging file (`.partial`, `.*.tmp`) a
    killed process left, or a manifest whose object is not there. `what` says which."""

    location: str
    key: str
    size: int
    mtime: float
    path: str
    what: str = ORPHAN_OBJECT

    @property
    def id(self) -> str:
        """The backup id its name claims (or its base name, for a staging file)."""
        name = posixpath.basename(self.key)
        for suffix in (MANIFEST_SUFFIX, OBJECT_SUFFIX):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    def as_json(self) -> dict[str, Any]:
        """A `"type": "orphan"` line of `catalog --json`."""
        return {
            "type": "orphan",
            "location": self.location,
            "key": self.key,
            "path": self.path,
            "size": self.size,
            "modified": iso(datetime.fromtimestamp(self.mtime, UTC)),
            "what": self.what,
        }


@dataclass
class Catalog:
    """Backups across all locations, as of one listing.

    `backups` is newest first. An index by id and by (kind, node) is built on first use,
    so lookups and filters stay fast over a hundred thousand backups; a Catalog is not
    meant to be changed after it is built.
    """

    backups: list[Backup] = field(repr=False)
    as_of: datetime
    errors: dict[str, str] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    """Objects older than ORPHAN_AGE_S with no manifest in their location."""
    _by_id: dict[str, Backup] | None = field(default=None, init=False, repr=False, compare=False)
    _by_group: dict[tuple[str, str], list[Backup]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _ordered: list[Backup] = field(default_factory=list, init=False, repr=False, compare=False)

    def _index(self) -> tuple[dict[str, Backup], dict[tuple[str, str], list[Backup]]]:
        if self._by_id is None or self._by_group is None:
            ordered = sorted(self.backups, key=lambda b: b.created, reverse=True)
            by_id: dict[str, Backup] = {}
            by_group: dict[tuple[str, str], list[Backup]] = {}
            for b in ordered:
                by_id.setdefault(b.id, b)
                by_group.setdefault((b.kind, b.node), []).append(b)
            self._by_id, self._by_group, self._ordered = by_id, by_group, ordered
        return self._by_id, self._by_group

    def find(self, bid: str) -> Backup:
        """The backup with id `bid`; UsageError with a suggestion if none."""
        found = self._index()[0].get(bid)
        if found is not None:
            return found
        raise UsageError(
            f'no backup "{bid}" in the catalog{did_you_mean(bid, [b.id for b in self.backups])}; '
            "`kconsole catalog` lists them."
        )

    def groups(self) -> list[tuple[str, str]]:
        """Every (kind, node) that has backups."""
        return sorted(self._index()[1])

    def latest_good(self, kind: str, node: str) -> Backup | None:
        """The newest restorable backup of `kind` from `node`."""
        for b in self._index()[1].get((kind, node), []):
            if b.good and b.replicas:
                return b
        return None

    def select(
        self,
        kind: str | None = None,
        node: str | None = None,
        status: str | None = None,
        location: str | None = None,
    ) -> list[Backup]:
        """Backups matching the filters, newest first."""
        _, by_group = self._index()
        if kind and node:
            out: Iterable[Backup] = by_group.get((kind, node), [])
        elif kind or node:
            groups = [
                g
                for (k, n), g in by_group.items()
                if (not kind or k == kind) and (not node or n == node)
            ]
            out = sorted((b for g in groups for b in g), key=lambda b: b.created, reverse=True)
        else:
            out = self._ordered
        if status or location:
            out = [
                b
                for b in out
                if (not status or b.status == status) and (not location or location in b.replicas)
            ]
        return list(out)

    def rows(
        self,
        kind: str | None = None,
        node: str | None = None,
        location: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """One row per (backup, location): the `catalog --json` lines."""
        out = []
        as_of = iso(self.as_of)
        for b in self.select(kind, node, status, location):
            created = iso(b.created)
            age = round(b.age(self.as_of))
            for loc, r in b.replicas.items():
                if location and loc != location:
                    continue
                out.append(
                    {
                        "type": "backup",
                        "id": b.id,
                        "kind": b.kind,
                        "node": b.node,
                        "location": loc,
                        "path": r.path,
                        "size": r.size,
                        "created": created,
                        "age_s": age,
                        "rpo_s": b.rpo_s,
                        "status": b.status,
                        "key_id": b.key_id,
                        "chain_height": b.chain_height,
                        "legacy": b.legacy,
                        "reason": b.reason,
                        "as_of": as_of,
                    }
                )
        return out

    def freshness(
        self,
        site: Site,
        live: dict[str, int | None] | None = None,
        *,
        expected: dict[str, list[str]],
    ) -> list[dict[str, Any]]:
        """Per tier, kind and node: the newest good backup's age against the RPO, and the data
        a failure now would lose (`loss_s`, and `block_lag` against the live height in `live`).

        Nodes are those the site's backup runbooks back up (`expected`, from
        `kconsole.runbook.coverage.expected_nodes`) plus any node that has backups of the kind,
        so a node that has never been backed up shows as `none` rather than not at all.
        """
        live = live or {}
        _, by_group = self._index()
        as_of = iso(self.as_of)
        out = []
        for tier in site.tiers.values():
            for kind in tier.kinds:
                seen = {n for (k, n) in by_group if k == kind}
                nodes = sorted(set(expected.get(kind, [])) | seen, key=_node_order(site))
                for node in nodes:
                    best = self.latest_good(kind, node)
                    age = best.age(self.as_of) if best else None
                    breached = age is None or (tier.rpo > 0 and age > tier.rpo)
                    height = best.chain_height if best else None
                    now_height = live.get(node)
                    out.append(
                        {
                            "type": "freshness",
                            "as_of": as_of,
                            "tier": tier.name,
                            "kind": kind,
                            "node": node,
                            "rpo_s": tier.rpo,
                            "newest": best.id if best else None,
                            "created": iso(best.created) if best else None,
                            "age_s": round(age) if age is not None else None,
                            "status": "none" if best is None else ("stale" if breached else "ok"),
                            "breached": breached,
                            "chain_height": height,
                            "live_height": now_height,
                            "loss_s": round(max(0.0, age)) if age is not None else None,
                            "block_lag": now_height - height
                            if now_height is not None and height is not None
                            else None,
                        }
                    )
        return out


def tier_summary(freshness: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per tier from `Catalog.freshness()` rows: its worst state and largest loss."""
    rank = {"ok": 0, "stale": 1, "none": 2}
    tiers: dict[str, dict[str, Any]] = {}
    for row in freshness:
        t = tiers.setdefault(
            row["tier"],
            {
                "type": "tier",
                "as_of": row["as_of"],
                "tier": row["tier"],
                "rpo_s": row["rpo_s"],
                "status": "ok",
                "nodes": 0,
                "breached": 0,
                "max_loss_s": None,
                "max_block_lag": None,
            },
        )
        t["nodes"] += 1
        t["breached"] += int(row["breached"])
        if rank[row["status"]] > rank[t["status"]]:
            t["status"] = row["status"]
        for src, dst in (("loss_s", "max_loss_s"), ("block_lag", "max_block_lag")):
            if row[src] is not None and (t[dst] is None or row[src] > t[dst]):
                t[dst] = row[src]
    return list(tiers.values())


def _node_order(site: Site) -> Any:
    order = {name: i for i, name in enumerate(site.nodes)}
    return lambda n: (order.get(n, len(order)), n)


async def live_heights(
    site: Site,
    nodes: Iterable[str] | None = None,
    timeout: float = 3.0,
    health: HealthReader | None = None,
) -> dict[str, int | None]:
    """Each node's chain height from its health URL, all at once; None when it does not answer.

    `health` is the caller's reader (`Services.health`); without one a reader is made and
    closed here."""
    from kconsole.health import HealthReader

    wanted = [
        site.nodes[n] for n in (nodes if nodes is not None else site.nodes) if n in site.nodes
    ]
    reader = health or HealthReader()

    async def one(url: str) -> int | None:
        return (await reader.read(url, timeout)).height if url else None

    try:
        heights = await asyncio.gather(*(one(n.health_url or "") for n in wanted))
    finally:
        if health is None:
            await reader.close()
    return {n.name: h for n, h in zip(wanted, heights, strict=True)}


def _cache_path(site: Site) -> Path:
    return site.state_dir / "catalog-cache.json"


def _verify_path(site: Site) -> Path:
    return site.state_dir / "verify-state.json"


def _verify_lock(site: Site) -> Path:
    return site.state_dir / "verify-state.lock"


def load_verify_state(site: Site) -> dict[str, dict[str, Any]]:
    """Results of past verifications, by backup id."""
    try:
        return dict(json.loads(_verify_path(site).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_verification(
    site: Site,
    bid: str,
    ok: bool,
    reason: str = "",
    damaged: dict[str, str] | None = None,
    content_sha256: str | None = None,
) -> None:
    """Remember a verification result: not `ok` (no good copy) shows as failed-verify; a
    restorable backup with `damaged` copies (location -> why) shows as missing those replicas.
    `content_sha256` is the ciphertext SHA-256 whose content (authenticated decrypt, archive
    walk, plaintext SHA-256) was verified: a copy at rest with that hash needs no second read."""
    with locked(_verify_lock(site)):  # a cron verify and the console may record at once
        state = load_verify_state(site)
        state[bid] = {"ok": ok, "reason": reason, "time": iso(datetime.now(UTC))}
        if damaged:
            state[bid]["damaged"] = dict(damaged)
        if ok and content_sha256:
            state[bid]["content_sha256"] = content_sha256
        atomic_write(
            _verify_path(site), json.dumps(state, indent=1, sort_keys=True).encode(), 0o600
        )


def content_verified(site: Site, bid: str, ciphertext_sha256: str) -> bool:
    """Whether the content of backup `bid` with this ciphertext SHA-256 was verified before
    (by the backup's own creation or an earlier full verify)."""
    entry = load_verify_state(site).get(bid) or {}
    return bool(entry.get("ok")) and entry.get("content_sha256") == ciphertext_sha256


def forget_verifications(site: Site, ids: Iterable[str]) -> None:
    """Drop the verification results of backups that no longer exist (after a prune)."""
    with locked(_verify_lock(site)):
        state = load_verify_state(site)
        gone = [i for i in ids if i in state]
        if gone:
            for i in gone:
                del state[i]
            atomic_write(
                _verify_path(site), json.dumps(state, indent=1, sort_keys=True).encode(), 0o600
            )


@dataclass(frozen=True)
class _CacheFile:
    """The manifest cache as this process last read or wrote it: which file, which version of
    it (inode, size, mtime), and what it holds."""

    path: Path
    signature: tuple[int, int, int]
    manifests: dict[str, Any]


_last_cache: _CacheFile | None = None
"""A console refreshing its catalog finds the cache file as its last build wrote it, and does
not parse it again (45 MB at 100,000 backups). The manifests built from it share its strings,
so beside the catalog it costs little more memory."""


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _load_cache(site: Site) -> dict[str, Any]:
    """Cache key -> the manifest's values in `_FIELDS` order; {} if absent or of another format.
    Parsed only when the file is not the one this process last read or wrote; callers must
    not change what it returns."""
    global _last_cache
    path = _cache_path(site)
    try:
        with open(path, "rb") as fh:
            signature = _signature(os.fstat(fh.fileno()))
            last = _last_cache
            if last is not None and last.path == path and last.signature == signature:
                return last.manifests
            raw = fh.read()
    except OSError:
        _last_cache = None  # of no use to a build without a cache file: free it first
        return {}
    manifests = _parse_cache(raw)
    _last_cache = _CacheFile(path, signature, manifests)
    return manifests


def _parse_cache(raw: bytes) -> dict[str, Any]:
    """The `manifests` of a cache file's bytes; {} if they are not a cache of this version."""
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if (
        not isinstance(data, dict)
        or data.get("version") != CACHE_VERSION
        or data.get("fields") != _FIELDS
    ):
        return {}
    manifests = data.get("manifests")
    return manifests if isinstance(manifests, dict) else {}


def _write_cache(site: Site, now: datetime, manifests: dict[str, Any]) -> None:
    """Write the manifest cache (temp file, fsync, rename) and remember it as the last one."""
    global _last_cache
    path = _cache_path(site)
    body = {"version": CACHE_VERSION, "as_of": iso(now), "fields": _FIELDS, "manifests": manifests}
    data = json.dumps(body, separators=(",", ":")).encode()
    with atomic_writer(path, 0o600) as fh:
        fh.write(data)
        fh.flush()
        signature = _signature(os.fstat(fh.fileno()))  # the inode keeps it through the rename
    _last_cache = _CacheFile(path, signature, manifests)


def _from_cache(values: Any) -> Manifest | None:
    try:
        m = Manifest(*values)
    except TypeError:
        return None
    return m if isinstance(m.id, str) and isinstance(m.created, str) else None


async def _list_location(name: str, store: Store) -> tuple[str, list[ObjectInfo] | str]:
    try:
        return name, await store.list()
    except Exception as exc:  # noqa: BLE001 - any failure to list is reported per location, never fatal
        return name, str(exc).rstrip(".") or exc.__class__.__name__


class _CollectorPaused:
    """The cyclic garbage collector waits while catalogs are built, and what they made joins
    the oldest generation without being scanned.

    A catalog of 100,000 backups is about a million small, acyclic objects, freed by
    reference counting when it goes. Left running, the collector passes over them again and
    again as they pile up (2 s of a cold build); only switched off, it passes over all of them
    at once when switched back on (0.5 s; measured: bench/bench_catalog.py). `gc.freeze()` then
    `gc.unfreeze()` moves every tracked object to the oldest generation at no cost, where full
    collections still scan them; it is skipped when something else in the process keeps
    objects frozen, since unfreezing would undo that.

    Re-entrant across threads and overlapping builds: the last one out restores the collector.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._was_enabled = True

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users:
                return
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            if self._was_enabled:
                gc.enable()


_bulk = _CollectorPaused()


async def build_catalog(
    site: Site, stores: dict[str, Store], now: datetime | None = None
) -> Catalog:
    """List every location at once and join what they hold."""
    with _bulk:
        return await _build(site, stores, now or datetime.now(UTC))


async def _build(site: Site, stores: dict[str, Store], now: datetime) -> Catalog:
    """The catalog as of `now`: every listing, each manifest from the cache or read, the join."""
    listings = await asyncio.gather(*(_list_location(n, s) for n, s in stores.items()))
    errors: dict[str, str] = {loc: listing for loc, listing in listings if isinstance(listing, str)}
    listed = [(loc, listing) for loc, listing in listings if not isinstance(listing, str)]
    cache = _load_cache(site)
    found, misses, new_cache = _cached_manifests(listed, cache)
    await _read_manifests(stores, misses, found, new_cache)
    writing = None
    if misses or len(new_cache) != len(cache):
        writing = _start_cache_write(site, now, new_cache)
    try:
        return _join(site, stores, listed, found, errors, now)
    finally:
        if writing is not None:
            with contextlib.suppress(OSError):  # a cache that cannot be written only costs speed
                await writing


Found = dict[str, list[tuple[ObjectInfo, Manifest]]]
"""Location -> (listing entry, manifest) of every manifest read there, in listing order."""
Misses = dict[str, list[tuple[ObjectInfo, str]]]
"""Location -> (listing entry, cache key) of every manifest the cache does not hold."""


def _cached_manifests(
    listed: list[tuple[str, list[ObjectInfo]]], cache: dict[str, Any]
) -> tuple[Found, Misses, dict[str, Any]]:
    """The listed manifests the cache holds, those it does not, and the cache entries still in use.

    A manifest is known by (location, key, size, mtime): one that changed is read again.
    """
    found: Found = {loc: [] for loc, _ in listed}
    misses: Misses = {}
    kept: dict[str, Any] = {}
    for loc, listing in listed:
        hits = found[loc]
        for info in listing:
            if not info.key.endswith(MANIFEST_SUFFIX):
                continue
            ck = f"{loc}|{info.key}|{info.size}|{int(info.mtime)}"
            values = cache.get(ck)
            m = _from_cache(values) if values is not None else None
            if m is None:
                misses.setdefault(loc, []).append((info, ck))
                continue
            hits.append((info, m))
            kept[ck] = values
    return found, misses, kept


async def _read_manifests(
    stores: dict[str, Store], misses: Misses, found: Found, new_cache: dict[str, Any]
) -> None:
    """Read the manifests the cache did not hold, every location at once; add each one that
    parses to `found` and to `new_cache`. One that cannot be read or parsed is left out."""
    raws = await asyncio.gather(
        *(stores[loc].read_many([info.key for info, _ in todo]) for loc, todo in misses.items())
    )
    for (loc, todo), raw in zip(misses.items(), raws, strict=True):
        for info, ck in todo:
            data = raw.get(info.key)
            if data is not None and len(data) != info.size:
                # Short reads happen on some SFTP servers (ronf/asyncssh#814), and a file may
                # have changed since the listing: read it once more, measured.
                try:
                    data = await stores[loc].read_bytes(info.key)
                except (OperationFailed, OSError):
                    data = None
            if data is None:
                continue
            try:
                m = Manifest.from_json(data)
                if not _joinable(m):
                    continue
            except ValueError:
                continue
            new_cache[ck] = _cache_values(m)
            found[loc].append((info, m))


def _joinable(m: Manifest) -> bool:
    """Whether the catalog can file `m` at all (its id, kind, node and time are text, the time
    parses); what else it says is checked before verify or restore believes it."""
    if not all(isinstance(v, str) for v in (m.id, m.kind, m.node, m.created)):
        return False
    try:
        return m.created_at.tzinfo is not None
    except ValueError:
        return False


def _start_cache_write(
    site: Site, now: datetime, manifests: dict[str, Any]
) -> asyncio.Future[None]:
    """Write the manifest cache in a worker thread, started now so the file is written and
    synced while the join runs; await the result."""
    return asyncio.get_running_loop().run_in_executor(None, _write_cache, site, now, manifests)


def _join(
    site: Site,
    stores: dict[str, Store],
    listed: list[tuple[str, list[ObjectInfo]]],
    found: Found,
    errors: dict[str, str],
    now: datetime,
) -> Catalog:
    """Backups by id from each location's manifests, objects and legacy files; then statuses."""
    by_id: dict[str, Backup] = {}
    orphans: list[Orphan] = []
    cutoff = now.timestamp() - ORPHAN_AGE_S
    for loc, listing in listed:
        unclaimed = _add_location(by_id, loc, stores[loc], listing, found[loc])
        orphans.extend(
            Orphan(loc, o.key, o.size, o.mtime, stores[loc].describe(o.key), what)
            for o, what in unclaimed
            if o.mtime < cutoff
        )
    backups = list(by_id.values())
    _set_statuses(site, backups, [n for n in stores if n not in errors], now)
    backups.sort(key=lambda b: b.created, reverse=True)
    return Catalog(backups, now, errors, list(stores), orphans)


def _add_location(
    by_id: dict[str, Backup],
    loc: str,
    store: Store,
    listing: list[ObjectInfo],
    manifests: list[tuple[ObjectInfo, Manifest]],
) -> list[tuple[ObjectInfo, str]]:
    """Add what one location holds: a copy for each manifest whose object is there, and the
    legacy files recognised by name. Returns the debris, each with what it is (`Orphan.what`):
    objects no manifest there claims, staging files, and manifests whose object is not there."""
    objects = {o.key: o for o in listing if o.key.endswith(OBJECT_SUFFIX)}
    debris: list[tuple[ObjectInfo, str]] = [
        (o, ORPHAN_STAGING) for o in listing if is_staging_name(posixpath.basename(o.key))
    ]
    unclaimed = dict(objects)
    for info, m in manifests:
        obj_key = info.key[: -len(MANIFEST_SUFFIX)] + OBJECT_SUFFIX
        b = by_id.get(m.id)
        if b is None:
            b = by_id[m.id] = Backup(m.id, m.kind, m.node, m.created_at, m)
        elif loc in b.manifests or (b.manifest is not None and _differs(b.manifest, m)):
            b.conflicts.append(f"{loc}:{info.key}")
            if loc in b.manifests:
                continue  # a second manifest of one id in one location: keep the first
        b.manifests[loc] = info.key
        obj = objects.get(obj_key)
        unclaimed.pop(obj_key, None)
        if obj is not None:
            b.replicas[loc] = Replica(loc, obj_key, obj.size, obj.mtime, store.describe(obj_key))
        else:
            debris.append((info, ORPHAN_MANIFEST))
            if not b.reason:
                b.reason = f"manifest without object in {loc}"
    for o in listing:
        if not o.key.endswith(".enc"):
            continue
        parsed = parse_legacy_name(posixpath.basename(o.key))
        if parsed is None:
            continue
        node, kind, created = parsed
        bid = posixpath.basename(o.key)
        b = by_id.get(bid)
        if b is None:
            b = by_id[bid] = Backup(bid, kind, node, created, None, legacy=True)
        b.replicas[loc] = Replica(loc, o.key, o.size, o.mtime, store.describe(o.key))
    # A manifest that did not parse still claims its object: that is not debris to delete.
    for o in listing:
        if o.key.endswith(MANIFEST_SUFFIX):
            unclaimed.pop(o.key[: -len(MANIFEST_SUFFIX)] + OBJECT_SUFFIX, None)
    return [(o, ORPHAN_OBJECT) for o in unclaimed.values()] + debris


def _differs(a: Manifest, b: Manifest) -> bool:
    """Whether two manifests of one id disagree on what matters (cheap: runs per copy)."""
    return (a.mac, a.ciphertext_sha256, a.plaintext_sha256, a.key_id, a.paths, a.kind, a.node) != (
        b.mac,
        b.ciphertext_sha256,
        b.plaintext_sha256,
        b.key_id,
        b.paths,
        b.kind,
        b.node,
    )


def _set_statuses(site: Site, backups: list[Backup], reachable: list[str], now: datetime) -> None:
    """Each backup's RPO, missing copies and status; the newest good one of each kind and node
    is marked, and is stale when it is older than its tier's RPO."""
    verified = load_verify_state(site)
    newest: dict[tuple[str, str], Backup] = {}
    rpo = {kind: tier.rpo for tier in site.tiers.values() for kind in tier.kinds}
    for b in backups:
        b.rpo_s = rpo.get(b.kind, 0.0)
        v = verified.get(b.id)
        if not b.legacy:
            b.missing = [n for n in reachable if n not in b.replicas]
        damaged = v.get("damaged") if v is not None else None
        if v is not None and not v.get("ok"):
            b.status, b.reason = "failed-verify", str(v.get("reason", ""))
        elif b.missing:
            b.status, b.reason = "missing-replica", b.reason or f"no copy in {', '.join(b.missing)}"
        elif isinstance(damaged, dict) and any(loc in b.replicas for loc in damaged):
            bad = [f"{loc} ({why})" for loc, why in damaged.items() if loc in b.replicas]
            b.status, b.reason = "missing-replica", f"damaged copy in {'; '.join(bad)}"
        if b.good and b.replicas:
            k = (b.kind, b.node)
            if k not in newest or b.created > newest[k].created:
                newest[k] = b
    for b in newest.values():
        b.newest = True
        if b.status == "ok" and b.rpo_s and b.age(now) > b.rpo_s:
            b.status, b.reason = "stale", "newest backup is older than the RPO"
