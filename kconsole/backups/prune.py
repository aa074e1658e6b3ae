"""`backup.prune`: retention per kind, planned in full before anything is deleted.

A plan lists every copy that would go, in every location, with the reason; it never holds
the newest good backup of any (kind, node) — nor, when a node has no good backup at all,
its newest one. Retention per kind comes from the step, else the site's tier, else the
plan's figures (24 h chain state, 90 d validator keys, 30 d transaction logs, 7 d system
logs); a kind with no retention anywhere is never pruned.

S3 locations: where the site requires immutable storage (`object_lock = true`) every
object in scope is checked with HEAD for an Object Lock mode and a retain-until date, and
objects lacking them are reported by name. Deletion never names a version:
on a versioned bucket it adds a delete marker and S3 keeps the data (a locked version can
then only expire, by lifecycle rule, once its retention is over), so a locked version is
never deleted early. Every deletion is written to the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kconsole.audit import AuditLog
from kconsole.backups.catalog import Backup, Catalog, forget_verifications
from kconsole.backups.manifest import iso, parse_iso
from kconsole.backups.stores import PARTIAL_UPLOAD, S3Store, Store
from kconsole.config import format_duration
from kconsole.errors import OperationFailed
from kconsole.fsutil import atomic_write
from kconsole.site import Site

Emit = Callable[[str, str], Awaitable[None]]

HOUR = 3600.0
DAY = 86400.0
PLAN_RETENTION: dict[str, float] = {
    "blockchain-state": 24 * HOUR,
    "validator-keys": 90 * DAY,
    "transaction-logs": 30 * DAY,
    "system-logs": 7 * DAY,
}
"""The plan's retention per kind (its scripts' RETENTION_* and primary.conf's [retention])."""

MAX_LINES = 500
"""Plan lines emitted one by one; beyond this the rest is counted (the data has them all)."""


@dataclass(frozen=True)
class Retention:
    """How long backups of one kind are kept, and which setting said so."""

    kind: str
    seconds: float | None
    source: str
    note: str = ""


def retention_for(site: Site, kind: str, override: float | None = None) -> Retention:
    """The retention of `kind`: the step's override, the tier's per-kind or whole-tier value,
    else the plan's. A whole-tier value shared by several kinds never cuts a kind below the
    plan's figure for it (tier 1 holds both 24 h chain state and 90 d keys); a per-kind value
    or the step's override may."""
    if override:
        return Retention(kind, override, "the step's retention")
    tier = site.tier_for_kind(kind)
    plan = PLAN_RETENTION.get(kind)
    if tier is not None:
        own = tier.retention_for(kind)
        if own:
            return Retention(kind, own, f"[tiers.{tier.name}] retention.{kind}")
        if tier.retention:
            if plan and len(tier.kinds) > 1 and tier.retention < plan:
                return Retention(
                    kind,
                    plan,
                    "the plan",
                    f"[tiers.{tier.name}] retention {format_duration(tier.retention)} is shared by "
                    f"{', '.join(tier.kinds)} and is shorter than the plan's "
                    f'{format_duration(plan)} for {kind}; set retention = {{ {kind} = "..." }} '
                    "in the tier to choose",
                )
            return Retention(kind, tier.retention, f"[tiers.{tier.name}] retention")
    if plan:
        return Retention(kind, plan, "the plan")
    return Retention(kind, None, "nothing", f"no retention is set for {kind}: none of it is pruned")


@dataclass(frozen=True)
class ObjectLock:
    """What HEAD says about one S3 object's immutability."""

    mode: str
    retain_until: datetime | None
    legal_hold: bool
    version_id: str

    def locked(self, now: datetime) -> bool:
        """Whether S3 refuses to delete this version now."""
        return self.legal_hold or (
            bool(self.mode) and self.retain_until is not None and self.retain_until > now
        )

    def describe(self) -> str:
        """`COMPLIANCE until 2026-12-26T07:00:00Z`, `legal hold`, or `not locked`."""
        parts = []
        if self.mode:
            parts.append(
                f"{self.mode} until {iso(self.retain_until) if self.retain_until else '(no date)'}"
            )
        if self.legal_hold:
            parts.append("legal hold")
        return ", ".join(parts) or "not locked"


@dataclass
class Deletion:
    """One backup's copy in one location that retention removes (object first, then manifest)."""

    backup: str
    kind: str
    node: str
    location: str
    keys: list[str]
    path: str
    size: int
    created: datetime
    age_s: float
    reason: str
    versioning: str = ""
    """S3 only: "Enabled", "Suspended" or "" (unversioned)."""
    locks: dict[str, ObjectLock] = field(default_factory=dict)
    outcome: str = ""
    """After apply: "deleted", "delete marker" or "failed: why"."""
    orphan: bool = False
    """An object with no manifest (catalog.Orphan), not a backup."""

    def effect(self, now: datetime) -> str:
        """What deleting it will do, in the operator's words."""
        if not self.versioning:
            return ""
        lock = self.locks.get(self.keys[0]) if self.keys else None
        held = (
            f"; the object is locked ({lock.describe()}), so S3 keeps that version until then"
            if lock and lock.locked(now)
            else ""
        )
        return (
            "versioned bucket: S3 adds a delete marker and keeps the data as an older version "
            f"(a lifecycle rule expires it){held}"
        )

    def as_json(self) -> dict[str, Any]:
        """The deletion in the step's data and the audit log."""
        return {
            "backup": self.backup,
            "kind": self.kind,
            "node": self.node,
            "location": self.location,
            "keys": self.keys,
            "path": self.path,
            "size": self.size,
            "created": iso(self.created),
            "age_s": round(self.age_s),
            "reason": self.reason,
            "versioning": self.versioning,
            "locks": {k: lk.describe() for k, lk in self.locks.items()},
            "outcome": self.outcome,
        }


@dataclass(frozen=True)
class LockFinding:
    """An object in a location that must be immutable, and what it lacks."""

    location: str
    key: str
    path: str
    backup: str
    problem: str


@dataclass
class PrunePlan:
    """What a prune would delete and keep, and why; nothing is deleted by making one."""

    as_of: datetime
    retention: dict[str, Retention]
    deletions: list[Deletion] = field(default_factory=list)
    protected: dict[str, str] = field(default_factory=dict)
    """Backup id -> why it is kept whatever its age (the newest good one of its kind and node)."""
    within: int = 0
    """Backups kept because they are younger than their retention."""
    lock_findings: list[LockFinding] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    versioning: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def backups(self) -> list[str]:
        """Ids of the backups with at least one copy to delete (orphans are not backups)."""
        return list(dict.fromkeys(d.backup for d in self.deletions if not d.orphan))

    @property
    def orphans(self) -> int:
        """Orphaned objects (no manifest) the plan deletes."""
        return sum(1 for d in self.deletions if d.orphan)

    @property
    def bytes(self) -> int:
        """Bytes the deletions free (before versioning keeps any)."""
        return sum(d.size for d in self.deletions)

    def lines(self, dry_run: bool = True) -> list[tuple[str, str]]:
        """(stream, text) lines: retention used, each deletion with its reason, what is kept, findings."""
        out: list[tuple[str, str]] = [
            (
                "stdout",
                f"prune plan as of {iso(self.as_of)}"
                + (" (dry run: nothing is deleted)" if dry_run else ""),
            )
        ]
        for r in self.retention.values():
            took = format_duration(r.seconds) if r.seconds else "none"
            out.append(("stdout", f"retention of {r.kind}: {took} (from {r.source})"))
            if r.note:
                out.append(("stderr", f"note: {r.note}"))
        for note in self.notes:
            out.append(("stderr", f"note: {note}"))
        for loc, err in self.errors.items():
            out.append(
                ("stderr", f"location {loc} could not be listed ({err}); nothing in it is pruned")
            )
        verb = "would delete" if dry_run else "deleting"
        for i, d in enumerate(self.deletions):
            if i == MAX_LINES:
                out.append(
                    (
                        "stdout",
                        f"... and {len(self.deletions) - MAX_LINES} more copies (listed in the step data)",
                    )
                )
                break
            effect = d.effect(self.as_of)
            out.append(
                (
                    "stdout",
                    f"{verb} {d.backup} from {d.location} ({d.path}, {d.size} bytes): {d.reason}"
                    + (f" [{effect}]" if effect else ""),
                )
            )
        for bid, why in self.protected.items():
            out.append(("stdout", f"keeping {bid}: {why}"))
        if self.within:
            out.append(("stdout", f"keeping {self.within} backups younger than their retention"))
        for loc, status in self.versioning.items():
            if status:
                out.append(
                    (
                        "stdout",
                        f"{loc}: bucket versioning is {status}; deleting adds delete markers, "
                        "older versions stay until a lifecycle rule expires them after their Object Lock",
                    )
                )
            else:
                out.append(
                    ("stdout", f"{loc}: bucket is not versioned; deleting removes objects for good")
                )
        for f in self.lock_findings:
            out.append(("stderr", f"immutability: {f.path} ({f.backup}) {f.problem}"))
        out.append(("stdout", self.summary(dry_run)))
        return out

    def summary(self, dry_run: bool = True) -> str:
        """One line: how much would go (or went), how much stays."""
        verb = "would delete" if dry_run else "deletes"
        copies = len(self.deletions) - self.orphans
        orphans = f" and {self.orphans} orphaned objects" if self.orphans else ""
        text = (
            f"{verb} {copies} copies of {len(self.backups)} backups{orphans} ({self.bytes} bytes); "
            f"keeps {len(self.protected)} newest good and {self.within} within retention"
        )
        if self.lock_findings:
            text += f"; {len(self.lock_findings)} objects lack the Object Lock the site requires"
        return text

    def as_data(self) -> dict[str, Any]:
        """The plan as step data (journaled, shown in reports)."""
        return {
            "as_of": iso(self.as_of),
            "deletions": [d.as_json() for d in self.deletions],
            "backups": self.backups,
            "orphans": self.orphans,
            "bytes": self.bytes,
            "protected": self.protected,
            "within_retention": self.within,
            "retention": {k: r.seconds for k, r in self.retention.items()},
            "unlocked": [
                {"location": f.location, "key": f.key, "backup": f.backup, "problem": f.problem}
                for f in self.lock_findings
            ],
            "versioning": self.versioning,
            "errors": self.errors,
        }


def _lock_of(head: dict[str, Any]) -> ObjectLock:
    until = head.get("ObjectLockRetainUntilDate")
    if isinstance(until, str):
        until = parse_iso(until)
    if isinstance(until, datetime) and until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return ObjectLock(
        str(head.get("ObjectLockMode") or ""),
        until if isinstance(until, datetime) else None,
        head.get("ObjectLockLegalHoldStatus") == "ON",
        str(head.get("VersionId") or ""),
    )


def _lock_cache_path(site: Site) -> Path:
    return site.state_dir / "object-lock-checked.json"


def _load_lock_cache(site: Site) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_lock_cache_path(site).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_lock_cache(site: Site, cache: dict[str, dict[str, Any]]) -> None:
    with contextlib.suppress(OSError):  # the cache only saves HEAD requests next time
        atomic_write(_lock_cache_path(site), json.dumps(cache, sort_keys=True).encode(), 0o600)


async def _check_locks(
    site: Site,
    loc: str,
    store: S3Store,
    keys: dict[str, str],
    fresh: set[str],
    now: datetime,
    cache: dict[str, dict[str, Any]],
) -> tuple[dict[str, ObjectLock], list[LockFinding]]:
    """HEAD each key (key -> backup id) not already confirmed locked; those in `fresh` always.

    Returns the locks read and the findings: no mode, no retain-until date, or a retention
    that has already ended while kconsole still keeps the backup.
    """
    known = cache.setdefault(loc, {})
    locks: dict[str, ObjectLock] = {}
    findings: list[LockFinding] = []
    sem = asyncio.Semaphore(8)

    async def one(key: str) -> tuple[str, ObjectLock | None, str]:
        hit = known.get(key)
        if hit is not None and key not in fresh:
            try:
                return (
                    key,
                    ObjectLock(
                        str(hit["mode"]),
                        parse_iso(str(hit["until"])),
                        bool(hit.get("hold")),
                        str(hit.get("version", "")),
                    ),
                    "",
                )
            except (KeyError, TypeError, ValueError):
                pass  # a damaged cache entry: ask S3 again
        async with sem:
            try:
                return key, _lock_of(await store.head(key)), ""
            except OperationFailed as exc:
                return key, None, str(exc).rstrip(".")

    for key, lock, err in await asyncio.gather(*(one(k) for k in keys)):
        path = store.describe(key)
        if lock is None:
            findings.append(LockFinding(loc, key, path, keys[key], f"could not be checked: {err}"))
            continue
        locks[key] = lock
        problem = ""
        if not lock.mode:
            problem = "has no Object Lock mode, but the site requires immutable storage"
        elif lock.retain_until is None:
            problem = f"is in {lock.mode} mode with no retain-until date"
        elif lock.retain_until <= now and key not in fresh:
            problem = f"stopped being immutable at {iso(lock.retain_until)} though kconsole still keeps it"
        if problem:
            known.pop(key, None)
            findings.append(LockFinding(loc, key, path, keys[key], problem))
        elif lock.retain_until is not None:
            known[key] = {
                "mode": lock.mode,
                "until": iso(lock.retain_until),
                "hold": lock.legal_hold,
                "version": lock.version_id,
            }
    return locks, findings


def _copies(b: Backup, loc: str) -> list[str]:
    """Keys of `b` in `loc`: the object first, then its manifest."""
    keys = []
    if loc in b.replicas:
        keys.append(b.replicas[loc].key)
    if loc in b.manifests:
        keys.append(b.manifests[loc])
    return keys


def orphan_deletions(
    catalog: Catalog,
    scope: dict[str, Store],
    kind: str | None,
    node: str | None,
    now: datetime,
) -> list[Deletion]:
    """A deletion for each orphan in scope (older than the catalog's ORPHAN_AGE_S: an object
    with no manifest beside it, a staging file, a manifest without its object): debris of a
    backup that failed or was interrupted."""
    out = []
    for o in catalog.orphans:
        parts = o.key.split("/")
        o_kind, o_node = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
        if o.location not in scope or (kind and o_kind != kind) or (node and o_node != node):
            continue
        created = datetime.fromtimestamp(o.mtime, UTC)
        age = (now - created).total_seconds()
        reason = (
            f"orphaned object: {o.what}, {format_duration(age)} old "
            "(left by a backup that failed or was interrupted)"
        )
        out.append(
            Deletion(
                o.id,
                o_kind,
                o_node,
                o.location,
                [o.key],
                o.path,
                o.size,
                created,
                age,
                reason,
                orphan=True,
            )
        )
    return out


async def plan_prune(
    site: Site,
    catalog: Catalog,
    stores: dict[str, Store],
    *,
    kind: str | None = None,
    node: str | None = None,
    location: str | None = None,
    retention: float | None = None,
    now: datetime | None = None,
    check_locks: bool = True,
) -> PrunePlan:
    """Work out what retention removes from `stores` (restricted to `kind`, `node`, `location`)."""
    now = now or catalog.as_of
    scope = {n: s for n, s in stores.items() if not location or n == location}
    kinds = [kind] if kind else sorted({k for k, _ in catalog.groups()})
    plan = PrunePlan(
        now,
        {k: retention_for(site, k, retention) for k in kinds},
        errors={n: e for n, e in catalog.errors.items() if n in scope},
    )
    in_scope: dict[str, dict[str, str]] = {n: {} for n in scope}  # location -> key -> backup id
    for k, n in catalog.groups():
        if k not in plan.retention or (node and n != node):
            continue
        keep_for = plan.retention[k].seconds
        group = catalog.select(k, n)
        newest_good = catalog.latest_good(k, n)
        protect = newest_good or (group[0] if group else None)
        if protect is not None:
            plan.protected[protect.id] = (
                f"newest good backup of {k} on {n}"
                if newest_good is not None
                else f"newest backup of {k} on {n}; none of them is good, so it is kept"
            )
        for b in group:
            for loc in scope:
                for key in _copies(b, loc):
                    in_scope[loc][key] = b.id
            if b is protect or not keep_for:
                continue
            age = b.age(now)
            if age <= keep_for:
                plan.within += 1
                continue
            reason = (
                f"{format_duration(age)} old, past the {format_duration(keep_for)} retention of {k} "
                f"(from {plan.retention[k].source})"
            )
            if b.status == "failed-verify":
                reason += "; it also failed verification"
            for loc, store in scope.items():
                keys = _copies(b, loc)
                if not keys:
                    continue
                size = b.replicas[loc].size if loc in b.replicas else 0
                plan.deletions.append(
                    Deletion(
                        b.id, k, n, loc, keys, store.describe(keys[0]), size, b.created, age, reason
                    )
                )
    planned = {(d.location, k) for d in plan.deletions for k in d.keys}
    for d in orphan_deletions(catalog, scope, kind, node, now):
        if (d.location, d.keys[0]) in planned:
            continue  # a manifest without its object, already going with its expired backup
        plan.deletions.append(d)
        in_scope[d.location][d.keys[0]] = d.backup
    lock_cache = _load_lock_cache(site) if check_locks else {}
    for loc, store in scope.items():
        if not isinstance(store, S3Store) or loc in plan.errors:
            continue
        try:
            plan.versioning[loc] = await store.versioning()
        except OperationFailed as exc:
            plan.notes.append(
                f"the versioning of {loc} could not be read ({str(exc).rstrip('.')}); "
                "assuming deletes there are permanent"
            )
            plan.versioning[loc] = ""
        for d in plan.deletions:
            if d.location == loc:
                d.versioning = plan.versioning[loc]
        if not (check_locks and store.location.object_lock):
            continue
        doomed = {key for d in plan.deletions if d.location == loc for key in d.keys}
        locks, findings = await _check_locks(
            site, loc, store, in_scope[loc], doomed, now, lock_cache
        )
        plan.lock_findings.extend(findings)
        for d in plan.deletions:
            if d.location == loc:
                d.locks = {key: locks[key] for key in d.keys if key in locks}
    if check_locks and any(
        isinstance(s, S3Store) and s.location.object_lock for s in scope.values()
    ):
        _save_lock_cache(site, lock_cache)
    return plan


@dataclass
class PruneResult:
    """What applying a plan did."""

    deleted: int = 0
    markers: int = 0
    failed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    """Backups with no copy left anywhere in scope."""


async def apply_prune(
    site: Site,
    plan: PrunePlan,
    stores: dict[str, Store],
    *,
    actor: str,
    emit: Emit,
    catalog: Catalog | None = None,
) -> PruneResult:
    """Delete what `plan` lists (object before manifest, so a failure never leaves a hidden
    object behind a missing manifest), auditing every key. Only admins may delete backups."""
    site.access.require_admin(actor, "delete backups")
    audit = AuditLog(site.state_dir)
    result = PruneResult()
    for d in plan.deletions:
        if d.backup in plan.protected and not d.orphan:  # belt and braces: never listed
            raise OperationFailed(
                f"refusing to delete {d.backup}: it is the {plan.protected[d.backup]}."
            )
    sem = asyncio.Semaphore(8)
    lock_cache = _load_lock_cache(site)

    async def one(d: Deletion) -> None:
        store = stores[d.location]
        async with sem:
            for key in d.keys:
                lock = d.locks.get(key)
                detail: dict[str, Any] = {
                    "backup": d.backup,
                    "location": d.location,
                    "kind": d.kind,
                    "node": d.node,
                    "reason": d.reason,
                }
                if lock is not None:
                    detail.update(lock=lock.describe(), version_id=lock.version_id)
                try:
                    if isinstance(store, S3Store) and key.endswith(PARTIAL_UPLOAD):
                        await store.delete(key)  # an unfinished multipart upload: aborted
                        effect = "aborted"
                    elif isinstance(store, S3Store):
                        answer = await store.delete_current(key)
                        marker = bool(answer.get("DeleteMarker")) or bool(d.versioning)
                        effect = "delete marker" if marker else "deleted"
                        if answer.get("VersionId"):
                            detail["marker_version_id"] = answer["VersionId"]
                    else:
                        await store.delete(key)
                        effect = "deleted"
                except OperationFailed as exc:
                    why = str(exc).rstrip(".")
                    audit.append(
                        actor,
                        "backup.delete",
                        store.describe(key),
                        result="failed",
                        error=why,
                        **detail,
                    )
                    d.outcome = f"failed: {why}"
                    result.failed.append(f"{d.backup} in {d.location}")
                    await emit("stderr", f"could not delete {store.describe(key)}: {why}")
                    return  # keep the manifest while its object is still there
                audit.append(
                    actor,
                    "backup.delete",
                    store.describe(key),
                    result="ok",
                    effect=effect,
                    **detail,
                )
                lock_cache.get(d.location, {}).pop(key, None)
                if effect == "delete marker":
                    result.markers += 1
                else:
                    result.deleted += 1
                d.outcome = effect
            await emit("stdout", f"{d.outcome}: {d.backup} in {d.location}")

    await asyncio.gather(*(one(d) for d in plan.deletions))
    if lock_cache:
        _save_lock_cache(site, lock_cache)
    done: dict[str, set[str]] = {}
    for d in plan.deletions:
        if not d.outcome.startswith("failed") and not d.orphan:
            done.setdefault(d.backup, set()).add(d.location)
    for bid, locs in done.items():
        if catalog is None:
            break
        try:
            b = catalog.find(bid)
        except Exception:  # noqa: BLE001 - the catalog changed; leave its verification record alone
            continue
        if set(b.replicas) | set(b.manifests) <= locs:
            result.gone.append(bid)
    forget_verifications(site, result.gone)
    audit.append(
        actor,
        "backup.prune",
        site.name,
        result="failed" if result.failed else "ok",
        deleted=result.deleted,
        delete_markers=result.markers,
        failed=len(result.failed),
        backups=len(plan.backups),
        bytes=plan.bytes,
    )
    return result
