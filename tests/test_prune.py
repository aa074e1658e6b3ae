"""Retention: where each kind's figure comes from, the plan (never the newest good backup),
applying it (object before manifest, every deletion audited, admins only), and
`backup.prune` run headless through a runbook: dry run first, then the deletion."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kconsole.audit import AuditLog
from kconsole.backups.catalog import build_catalog, load_verify_state, record_verification
from kconsole.backups.prune import (
    PLAN_RETENTION,
    ObjectLock,
    _lock_of,
    apply_prune,
    plan_prune,
    retention_for,
)
from kconsole.backups.stores import open_stores
from kconsole.errors import AccessDenied, UsageError
from kconsole.site import Site, current_user, load_site
from tests.catalogkit import make_site, plant, plant_sync, utc

NOW = utc("2026-11-26T10:00:00")
H = 3600.0
D = 86400.0


async def quiet(stream: str, text: str) -> None:
    pass


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def test_retention_sources(site: Site, tmp_path: Path) -> None:
    assert PLAN_RETENTION == {
        "blockchain-state": 24 * H,
        "validator-keys": 90 * D,
        "transaction-logs": 30 * D,
        "system-logs": 7 * D,
    }
    r = retention_for(site, "blockchain-state")
    assert (r.seconds, r.source) == (24 * H, "[tiers.critical] retention")
    # Tier 1's 24h is shared with the keys; the plan keeps keys 90 days and says so.
    keys = retention_for(site, "validator-keys")
    assert (
        keys.seconds == 90 * D
        and keys.source == "the plan"
        and "shorter than the plan's" in keys.note
    )
    assert retention_for(site, "transaction-logs").seconds == 30 * D
    assert retention_for(site, "system-logs").seconds == 7 * D  # tier without retention: the plan's
    assert retention_for(site, "validator-keys", 3600).seconds == 3600  # the step decides
    none = retention_for(site, "archive")
    assert none.seconds is None and "none of it is pruned" in none.note
    tuned = make_site(
        tmp_path,
        text=site.path.read_text().replace(
            'retention = "24h"', 'retention = { blockchain-state = "12h", validator-keys = "30d" }'
        ),
    )
    assert retention_for(tuned, "validator-keys").seconds == 30 * D
    assert (
        retention_for(tuned, "blockchain-state").source
        == "[tiers.critical] retention.blockchain-state"
    )


def test_per_kind_retention_rejects_kinds_outside_the_tier(site: Site) -> None:
    text = site.path.read_text().replace('retention = "24h"', 'retention = { system-logs = "1d" }')
    Path(site.path).write_text(text)
    with pytest.raises(UsageError, match='retention names kind "system-logs"'):
        load_site(site.path)


async def test_plan_never_lists_the_newest_good_backup(site: Site) -> None:
    stores = open_stores(site, None)
    old = [
        await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(days=d))
        for d in (3, 2)
    ]
    recent = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=1))
    only_old = await plant(site, stores, "validator2", "blockchain-state", NOW - timedelta(days=5))
    catalog = await build_catalog(site, stores, now=NOW)
    plan = await plan_prune(site, catalog, stores)
    assert set(plan.backups) == {o.id for o in old}
    assert {(d.backup, d.location) for d in plan.deletions} == {
        (o.id, loc) for o in old for loc in ("primary", "dr")
    }
    assert (
        recent.id in plan.protected and only_old.id in plan.protected
    )  # old, but the newest good one
    d = next(x for x in plan.deletions if x.backup == old[0].id and x.location == "primary")
    assert d.keys == [old[0].object_key(), old[0].manifest_key()]  # object first, then manifest
    assert "3d00h old, past the 1d00h retention of blockchain-state" in d.reason
    assert plan.within == 0
    text = "\n".join(t for _, t in plan.lines(dry_run=True))
    assert (
        "(dry run: nothing is deleted)" in text and f"would delete {old[0].id} from primary" in text
    )
    assert f"keeping {only_old.id}: newest good backup of blockchain-state on validator2" in text
    # A failed verification moves the protection to the newest backup that is still good.
    record_verification(site, recent.id, False, "corrupt")
    plan = await plan_prune(site, await build_catalog(site, stores, now=NOW), stores)
    assert old[1].id in plan.protected and recent.id not in {
        d.backup for d in plan.deletions
    }  # within 24h
    assert {d.backup for d in plan.deletions} == {old[0].id}


async def test_when_nothing_is_good_the_newest_is_kept(site: Site) -> None:
    stores = open_stores(site, None)
    a = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(days=3))
    b = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(days=2))
    for m in (a, b):
        record_verification(site, m.id, False, "bad")
    plan = await plan_prune(site, await build_catalog(site, stores, now=NOW), stores)
    assert "none of them is good" in plan.protected[b.id]
    assert {d.backup for d in plan.deletions} == {a.id}
    assert "it also failed verification" in plan.deletions[0].reason


async def test_plan_filters_kind_node_location_and_retention(site: Site) -> None:
    stores = open_stores(site, None)
    for node in ("validator1", "validator2"):
        for d in (4, 3, 0.01):
            await plant(site, stores, node, "blockchain-state", NOW - timedelta(days=d))
        for d in (100, 95, 2, 1):
            await plant(site, stores, node, "validator-keys", NOW - timedelta(days=d))
    catalog = await build_catalog(site, stores, now=NOW)
    everything = await plan_prune(site, catalog, stores)
    assert {d.kind for d in everything.deletions} == {"blockchain-state", "validator-keys"}
    assert len(everything.backups) == 8 and len(everything.protected) == 4
    assert everything.within == 2  # the 2-day-old keys: within 90 days, and not the newest
    keys = await plan_prune(site, catalog, stores, kind="validator-keys")
    assert {d.kind for d in keys.deletions} == {"validator-keys"} and len(keys.backups) == 4
    one = await plan_prune(site, catalog, stores, node="validator2", location="dr")
    assert {(d.node, d.location) for d in one.deletions} == {("validator2", "dr")}
    short = await plan_prune(site, catalog, stores, kind="validator-keys", retention=1.5 * D)
    assert (
        len(short.backups) == 6
        and short.retention["validator-keys"].source == "the step's retention"
    )
    nothing = await plan_prune(site, catalog, stores, kind="archive")
    assert nothing.deletions == [] and "none of it is pruned" in nothing.retention["archive"].note


async def test_apply_deletes_object_then_manifest_and_audits_each(site: Site) -> None:
    stores = open_stores(site, None)
    old = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(days=2))
    new = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=2))
    record_verification(site, old.id, True)
    catalog = await build_catalog(site, stores, now=NOW)
    plan = await plan_prune(site, catalog, stores)
    lines: list[str] = []

    async def emit(stream: str, text: str) -> None:
        lines.append(text)

    result = await apply_prune(site, plan, stores, actor="alice", emit=emit, catalog=catalog)
    assert (result.deleted, result.markers, result.failed, result.gone) == (4, 0, [], [old.id])
    for store in stores.values():
        assert not store.path(old.object_key()).exists()  # type: ignore[attr-defined]
        assert not store.path(old.manifest_key()).exists()  # type: ignore[attr-defined]
        assert store.path(new.object_key()).exists()  # type: ignore[attr-defined]
    assert f"deleted: {old.id} in primary" in lines
    assert old.id not in load_verify_state(site)
    log = AuditLog(site.state_dir)
    entries = [e for e in log.read() if e["action"] == "backup.delete"]
    assert len(entries) == 4 and {e["actor"] for e in entries} == {"alice"}
    assert [
        e["target"].endswith(".kdx") for e in entries if e["detail"]["location"] == "primary"
    ] == [True, False]
    assert all(e["detail"]["backup"] == old.id and e["result"] == "ok" for e in entries)
    assert log.read()[-1]["action"] == "backup.prune" and log.verify().ok
    after = await build_catalog(site, stores, now=NOW)
    assert [b.id for b in after.backups] == [new.id]


async def test_a_failed_object_delete_keeps_its_manifest(site: Site) -> None:
    from kconsole.backups.stores import LocalStore
    from kconsole.errors import OperationFailed

    class Stuck(LocalStore):
        async def delete(self, key: str) -> None:
            raise OperationFailed("permission denied")

    stores = open_stores(site, None)
    old = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(days=2))
    await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=2))
    stores["dr"] = Stuck(site.locations["dr"])
    catalog = await build_catalog(site, stores, now=NOW)
    plan = await plan_prune(site, catalog, stores)
    result = await apply_prune(site, plan, stores, actor="alice", emit=quiet, catalog=catalog)
    assert result.failed == [f"{old.id} in dr"] and result.gone == []
    assert stores["dr"].path(old.manifest_key()).exists()  # type: ignore[attr-defined]
    failed = [e for e in AuditLog(site.state_dir).read() if e["result"] == "failed"]
    assert (
        failed[0]["action"] == "backup.delete"
        and "permission denied" in failed[0]["detail"]["error"]
    )


async def test_only_admins_delete(tmp_path: Path) -> None:
    site = make_site(
        tmp_path,
        extra="""
        [access]
        admin = ["root-admin"]
        operator = ["olga"]
        """,
    )
    stores = open_stores(site, None)
    await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(days=2))
    await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=2))
    catalog = await build_catalog(site, stores, now=NOW)
    plan = await plan_prune(site, catalog, stores)
    with pytest.raises(AccessDenied, match="olga is not a backup admin"):
        await apply_prune(site, plan, stores, actor="olga", emit=quiet)
    assert len((await build_catalog(site, stores, now=NOW)).backups) == 2


def test_lock_state_from_head() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    locked = _lock_of(
        {
            "ObjectLockMode": "COMPLIANCE",
            "VersionId": "v1",
            "ObjectLockRetainUntilDate": datetime(2026, 12, 26, tzinfo=UTC),
        }
    )
    assert locked.locked(now) and locked.describe() == "COMPLIANCE until 2026-12-26T00:00:00Z"
    assert not locked.locked(datetime(2027, 1, 1, tzinfo=UTC))
    assert _lock_of({"ObjectLockLegalHoldStatus": "ON"}).locked(now)
    assert _lock_of({}).describe() == "not locked"
    assert ObjectLock("GOVERNANCE", None, False, "").describe() == "GOVERNANCE until (no date)"


RUNBOOK = """
[runbook]
id = "prune-test"
title = "Retention, previewed then applied"
rto = "1h"
rpo = "1h"

[[steps]]
id = "preview"
title = "Preview"
action = "backup.prune"
kind = "blockchain-state"
retention = "1d"
dry_run = true

[[steps]]
id = "apply"
title = "Apply"
action = "backup.prune"
needs = ["preview"]
gate = "confirm"
kind = "blockchain-state"
retention = "1d"
dry_run = false
"""


def test_prune_through_a_runbook_dry_run_then_apply(site: Site, cli, write_runbook) -> None:
    stores = open_stores(site, None)
    now = datetime.now(UTC).replace(microsecond=0)
    old = plant_sync(site, stores, "validator1", "blockchain-state", now - timedelta(days=3))
    new = plant_sync(site, stores, "validator1", "blockchain-state", now - timedelta(minutes=3))
    rb = write_runbook(RUNBOOK)
    code, out, err = cli("--site", site.path, "run", rb, "--yes", "--json")
    assert code == 0, out + err
    events = [json.loads(x) for x in out.splitlines()]
    preview = [e["text"] for e in events if e["step"] == "preview" and e["event"] == "output"]
    apply = [e["text"] for e in events if e["step"] == "apply" and e["event"] == "output"]
    assert any(t.startswith(f"would delete {old.id} from primary") for t in preview)
    assert f"keeping {new.id}: newest good backup of blockchain-state on validator1" in preview
    # The apply step shows its plan again before it deletes anything.
    first_delete = next(i for i, t in enumerate(apply) if t.startswith("deleted:"))
    assert any(t.startswith(f"deleting {old.id} from dr") for t in apply[:first_delete])
    finished = {e["step"]: e for e in events if e["event"] == "finished"}
    assert finished["preview"]["data"]["dry_run"] is True and finished["preview"]["data"][
        "backups"
    ] == [old.id]
    assert finished["apply"]["data"]["deleted"] == 4
    assert not stores["primary"].path(old.object_key()).exists()  # type: ignore[attr-defined]
    assert stores["dr"].path(new.object_key()).exists()  # type: ignore[attr-defined]
    code, out, _ = cli("--site", site.path, "audit", "show", "--json")
    actions = [json.loads(x)["action"] for x in out.splitlines()]
    assert actions.count("backup.delete") == 4 and "backup.prune" in actions


def test_a_dry_run_deletes_nothing_and_needs_no_admin(tmp_path: Path, cli, write_runbook) -> None:
    site = make_site(
        tmp_path,
        extra=f"""
        [access]
        admin = ["nobody-here"]
        operator = ["{current_user()}"]
        """,
    )
    stores = open_stores(site, None)
    now = datetime.now(UTC).replace(microsecond=0)
    old = plant_sync(site, stores, "validator1", "blockchain-state", now - timedelta(days=3))
    plant_sync(site, stores, "validator1", "blockchain-state", now - timedelta(minutes=3))
    rb = write_runbook(RUNBOOK)
    code, out, _ = cli("--site", site.path, "run", rb, "--yes", "--json")
    assert code == 1
    events = [json.loads(x) for x in out.splitlines()]
    assert {e["step"]: e["event"] for e in events if e["event"] in ("finished", "failed")} == {
        "preview": "finished",
        "apply": "failed",
    }
    failed = next(e for e in events if e["event"] == "failed")
    assert "is not a backup admin and may not delete backups" in failed["reason"]
    assert stores["primary"].path(old.object_key()).exists()  # type: ignore[attr-defined]
    assert asyncio.run(build_catalog(site, stores)).find(old.id).replicas
