"""The catalog, verify and prune on the lab: a local primary, the DR host over SFTP and the
S3 endpoint (moto, Object Lock on, versioned), with real backups made over SSH.

One lab for the module. Each test works on its own kind or node so the tests do not
depend on their order: validator1 and validator2's chain state are made over SSH by the
fixture; the corruption test damages validator1's cloud copy; the missing-replica test
owns validator2's keys; the prune test owns validator3's keys; the immutability test owns
system logs. Nothing waits on a clock: staleness is judged at a later `now`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from kconsole.audit import AuditLog
from kconsole.backups.catalog import build_catalog, live_heights, tier_summary
from kconsole.backups.create import CreateRequest, create_backup
from kconsole.backups.manifest import Manifest
from kconsole.backups.prune import plan_prune
from kconsole.backups.session import BackupSession
from kconsole.backups.stores import LocalStore, S3Store, Store
from kconsole.backups.verify import verify_backup
from kconsole.lab import Lab
from kconsole.runbook.coverage import expected_nodes
from kconsole.services import Services
from kconsole.site import Location, Site, load_site
from tests.catalogkit import plant
from tests.labfixture import running_lab

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def quiet(stream: str, text: str) -> None:
    pass


@dataclass
class World:
    """The lab, its site, one backup session, and the backups made over SSH."""

    lab: Lab
    site: Site
    session: BackupSession
    stores: dict[str, Store]
    made: dict[str, Manifest]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with running_lab(tmp_path_factory.mktemp("lab")) as lab:
        site = load_site(lab.site_path)
        services = Services.for_site(site)
        try:
            session = services.backups(site)
            stores = session.stores()
            made = {}
            for node in ("validator1", "validator2"):
                req = CreateRequest(
                    node=site.nodes[node],
                    kind="blockchain-state",
                    paths=["/var/lib/kaldrix/state"],
                    run_id="test",
                )
                made[node] = await create_backup(
                    site,
                    req,
                    transport=services.transport,
                    stores=stores,
                    key=session.current_key(),
                    emit=quiet,
                )
            yield World(lab, site, session, stores, made)
        finally:
            await services.close()


async def kconsole(w: World, *args: str) -> tuple[int, str, str]:
    """Run the CLI in a subprocess (it runs its own event loop) against the lab."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kconsole",
        "--site",
        str(w.lab.site_path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **w.lab.environ()},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode or 0, out.decode(), err.decode()


def s3_versions(w: World, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(versions, delete markers) of one key in the lab's bucket."""
    assert w.lab.s3 is not None
    client = w.lab.s3.client(internal=True)
    resp = client.list_object_versions(Bucket=w.site.locations["cloud"].bucket, Prefix=key)
    return (
        [v for v in resp.get("Versions", []) if v["Key"] == key],
        [m for m in resp.get("DeleteMarkers", []) if m["Key"] == key],
    )


async def test_catalog_across_all_three_locations(world: World) -> None:
    w = world
    legacy_key = "blockchain/state/blockchain_api3_20261120_143000.tar.gz.enc"
    await w.stores["dr"].write_bytes(legacy_key, b"Salted__" + bytes(48))
    catalog = await build_catalog(w.site, w.stores)
    assert catalog.errors == {} and catalog.locations == ["primary", "dr", "cloud"]
    for m in w.made.values():
        b = catalog.find(m.id)
        assert set(b.replicas) == {"primary", "dr", "cloud"} and b.status == "ok", b.reason
        assert {r.size for r in b.replicas.values()} == {m.ciphertext_size}
        paths = {loc: r.path for loc, r in b.replicas.items()}
        assert Path(paths["primary"]).is_file()
        assert paths["dr"] == f"sftp://backup-dr/backup/{m.object_key()}"
        assert paths["cloud"] == f"s3://kaldrix-backups/{m.object_key()}"
        assert b.chain_height and b.key_id == m.key_id
    legacy = catalog.find("blockchain_api3_20261120_143000.tar.gz.enc")
    assert (
        legacy.legacy and set(legacy.replicas) == {"dr"} and legacy.status == "stale"
    )  # api3's newest, days old
    code, out, err = await kconsole(w, "catalog", "--json", "--node", "validator1")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    rows = [x for x in lines if x["type"] == "backup" and x["kind"] == "blockchain-state"]
    assert {r["location"] for r in rows} == {"primary", "dr", "cloud"} and all(
        r["as_of"] for r in rows
    )
    fresh = next(x for x in lines if x["type"] == "freshness" and x["kind"] == "blockchain-state")
    assert fresh["newest"] == w.made["validator1"].id and isinstance(fresh["live_height"], int)


async def test_s3_listing_is_paginated(world: World) -> None:
    w = world
    full = await w.stores["cloud"].list()
    small = S3Store(w.site.locations["cloud"])
    small.page_size = 2
    pages: list[int] = []
    small.client().meta.events.register("before-call.s3.ListObjectsV2", lambda **_: pages.append(1))
    paged = await small.list()
    assert sorted(o.key for o in paged) == sorted(o.key for o in full) and len(full) >= 4
    assert len(pages) == -(-len(full) // 2)


async def test_freshness_live_heights_and_a_stale_tier(world: World) -> None:
    w = world
    catalog = await build_catalog(w.site, w.stores)
    heights = await live_heights(w.site)
    assert (
        isinstance(heights["validator1"], int) and heights["backup-dr"] is None
    )  # the DR host has no chain
    rows = {
        (r["kind"], r["node"]): r
        for r in catalog.freshness(w.site, heights, expected=expected_nodes(w.site))
    }
    v1 = rows[("blockchain-state", "validator1")]
    assert v1["status"] == "ok" and not v1["breached"] and v1["newest"] == w.made["validator1"].id
    assert (
        v1["block_lag"] is not None and v1["block_lag"] >= 0
    )  # the chain keeps growing after the backup
    assert rows[("transaction-logs", "api1")]["status"] == "none"
    # The same backups, judged an hour later: tier 1's 15-minute RPO is breached.
    later = await build_catalog(w.site, w.stores, now=catalog.as_of + timedelta(hours=1))
    assert later.find(w.made["validator1"].id).status == "stale"
    stale = {
        (r["kind"], r["node"]): r
        for r in later.freshness(w.site, heights, expected=expected_nodes(w.site))
    }
    assert stale[("blockchain-state", "validator1")]["breached"]
    assert stale[("blockchain-state", "validator1")]["loss_s"] >= 3600
    tiers = {
        t["tier"]: t
        for t in tier_summary(later.freshness(w.site, heights, expected=expected_nodes(w.site)))
    }
    assert tiers["critical"]["status"] != "ok" and tiers["critical"]["breached"] >= 2


async def test_verify_finds_a_corrupted_object(world: World) -> None:
    w = world
    target = w.made["validator1"]
    await w.lab.set_fault("corrupt=latest:validator1:blockchain-state@cloud")
    try:
        assert any(d.location == "cloud" and target.id in d.path for d in w.lab.damage.values())
        catalog = await build_catalog(w.site, w.stores)
        outcome = await verify_backup(
            w.site, catalog.find(target.id), w.stores, w.session.keyring(), quiet
        )
        assert not outcome.ok and outcome.checked == ["primary", "dr"]
        assert any(p.startswith("cloud:") and "corrupt" in p for p in outcome.problems), (
            outcome.problems
        )
        damaged = (await build_catalog(w.site, w.stores)).find(target.id)
        assert damaged.status == "missing-replica" and damaged.reason.startswith(
            "damaged copy in cloud"
        )
        # The lab rewrote the object without Object Lock: the immutability check names it.
        plan = await plan_prune(
            w.site,
            await build_catalog(w.site, w.stores),
            w.stores,
            kind="blockchain-state",
            node="validator1",
            location="cloud",
        )
        assert [(f.key, f.problem) for f in plan.lock_findings] == [
            (
                target.object_key(),
                "has no Object Lock mode, but the site requires immutable storage",
            )
        ]
        code, _, err = await kconsole(w, "verify", target.id)
        assert code == 1 and "failed verification" in err and target.id in err
    finally:
        await w.lab.clear_fault("corrupt")
    catalog = await build_catalog(w.site, w.stores)
    mended = await verify_backup(
        w.site, catalog.find(target.id), w.stores, w.session.keyring(), quiet
    )
    assert mended.ok and mended.complete


async def test_verify_finds_a_missing_replica(world: World) -> None:
    w = world
    now = datetime.now(UTC).replace(microsecond=0)
    m = await plant(w.site, w.stores, "validator2", "validator-keys", now - timedelta(minutes=2))
    await w.stores["dr"].delete(m.object_key())
    catalog = await build_catalog(w.site, w.stores)
    b = catalog.find(m.id)
    assert (
        b.status == "missing-replica"
        and b.missing == ["dr"]
        and set(b.replicas) == {"primary", "cloud"}
    )
    outcome = await verify_backup(w.site, b, w.stores, w.session.keyring(), quiet)
    assert outcome.ok and outcome.missing == ["dr"] and not outcome.complete
    code, out, err = await kconsole(w, "verify", m.id)
    assert code == 1
    assert (
        "dr: replica missing" in err
        and f"have a missing or damaged replica or could not be checked everywhere: {m.id}" in err
    )
    code, out, _ = await kconsole(
        w, "catalog", "--json", "--kind", "validator-keys", "--node", "validator2"
    )
    statuses = {
        json.loads(x).get("status") for x in out.splitlines() if json.loads(x)["type"] == "backup"
    }
    assert statuses == {"missing-replica"}


PRUNE = """
[runbook]
id = "prune-keys"
title = "Validator-key retention, previewed then applied"
rto = "1h"
rpo = "15m"

[[steps]]
id = "preview"
title = "Preview"
action = "backup.prune"
kind = "validator-keys"
dry_run = true

[[steps]]
id = "apply"
title = "Apply"
action = "backup.prune"
needs = ["preview"]
gate = "confirm"
kind = "validator-keys"
dry_run = false
"""


async def test_prune_dry_run_then_prune(world: World, tmp_path: Path) -> None:
    w = world
    now = datetime.now(UTC).replace(microsecond=0)
    old = [
        await plant(w.site, w.stores, "validator3", "validator-keys", now - timedelta(days=d))
        for d in (100, 95)
    ]
    keep = await plant(w.site, w.stores, "validator3", "validator-keys", now - timedelta(hours=1))
    rb = tmp_path / "prune-keys.toml"
    rb.write_text(PRUNE)
    code, out, err = await kconsole(w, "run", str(rb), "--yes", "--json")
    assert code == 0, out + err
    events = [json.loads(x) for x in out.splitlines()]
    preview = [e["text"] for e in events if e["step"] == "preview" and e["event"] == "output"]
    apply = [e["text"] for e in events if e["step"] == "apply" and e["event"] == "output"]
    assert any(line.startswith("retention of validator-keys: 90d00h") for line in preview)
    for m in old:
        for loc in ("primary", "dr", "cloud"):
            assert any(t.startswith(f"would delete {m.id} from {loc}") for t in preview), (
                m.id,
                loc,
            )
    cloud_line = next(t for t in preview if t.startswith(f"would delete {old[0].id} from cloud"))
    assert "S3 adds a delete marker" in cloud_line and "locked (COMPLIANCE until" in cloud_line
    assert f"keeping {keep.id}: newest good backup of validator-keys on validator3" in preview
    assert not any(keep.id in t for t in preview if "delete" in t)
    # Nothing went during the preview; the apply step shows the plan before deleting.
    first = next(i for i, t in enumerate(apply) if t.startswith(("deleted:", "delete marker:")))
    assert sum(t.startswith("deleting ") for t in apply[:first]) == 6
    assert (
        f"delete marker: {old[0].id} in cloud" in apply and f"deleted: {old[0].id} in dr" in apply
    )
    finished = {e["step"]: e for e in events if e["event"] == "finished"}
    assert finished["preview"]["data"]["dry_run"] and sorted(
        finished["preview"]["data"]["backups"]
    ) == sorted(m.id for m in old)
    assert (finished["apply"]["data"]["deleted"], finished["apply"]["data"]["delete_markers"]) == (
        8,
        4,
    )
    catalog = await build_catalog(w.site, w.stores)
    assert {b.id for b in catalog.select("validator-keys", "validator3")} == {keep.id}
    for m in old:
        assert not Path(w.stores["primary"].describe(m.object_key())).exists()
        versions, markers = s3_versions(w, m.object_key())
        assert (
            len(versions) == 1 and len(markers) == 1
        )  # the locked data stays behind a delete marker
        assert versions[0]["IsLatest"] is False
    deletions = [e for e in AuditLog(w.site.state_dir).read() if e["action"] == "backup.delete"]
    mine = [e for e in deletions if e["detail"]["backup"] in {m.id for m in old}]
    assert len(mine) == 12 and all(e["result"] == "ok" for e in mine)
    assert {e["detail"]["effect"] for e in mine if e["detail"]["location"] == "cloud"} == {
        "delete marker"
    }
    assert all(
        "COMPLIANCE until" in e["detail"]["lock"]
        for e in mine
        if e["detail"]["location"] == "cloud"
    )
    code, out, err = await kconsole(w, "audit", "verify")
    assert code == 0, err


async def test_objects_without_object_lock_are_reported(world: World, tmp_path: Path) -> None:
    w = world
    now = datetime.now(UTC).replace(microsecond=0)
    locked = await plant(w.site, w.stores, "api1", "system-logs", now - timedelta(hours=3))
    # The same kind of backup put in the cloud by something that ignores the site's lock rule.
    scratch = LocalStore(Location("scratch", "local", path=str(tmp_path / "scratch")))
    unlocked = await plant(
        w.site, {"scratch": scratch}, "api2", "system-logs", now - timedelta(hours=2)
    )
    assert w.lab.s3 is not None
    client = w.lab.s3.client(internal=True)
    for key in (unlocked.object_key(), unlocked.manifest_key()):
        client.put_object(
            Bucket=w.site.locations["cloud"].bucket, Key=key, Body=scratch.path(key).read_bytes()
        )
    catalog = await build_catalog(w.site, w.stores)
    plan = await plan_prune(w.site, catalog, w.stores, kind="system-logs")
    assert {(f.backup, f.key) for f in plan.lock_findings} == {
        (unlocked.id, unlocked.object_key()),
        (unlocked.id, unlocked.manifest_key()),
    }
    assert locked.id not in {f.backup for f in plan.lock_findings}
    rb = tmp_path / "logs.toml"
    rb.write_text(
        PRUNE.replace("validator-keys", "system-logs").split('[[steps]]\nid = "apply"')[0]
    )
    code, out, err = await kconsole(w, "run", str(rb), "--yes", "--json")
    assert code == 0, out + err  # reported, not failed: the backups themselves are fine
    events = [json.loads(x) for x in out.splitlines()]
    errors = [e["text"] for e in events if e["event"] == "output" and e.get("stream") == "stderr"]
    assert any(
        t.startswith("immutability: s3://kaldrix-backups/" + unlocked.object_key())
        and "has no Object Lock mode" in t
        for t in errors
    )
    finished = next(e for e in events if e["event"] == "finished")
    assert finished["summary"].endswith("2 objects lack the Object Lock the site requires")
    assert {u["key"] for u in finished["data"]["unlocked"]} == {
        unlocked.object_key(),
        unlocked.manifest_key(),
    }


async def test_verify_first_good_stops_at_the_first_good_copy_and_falls_back(
    world: World,
) -> None:
    """Before a restore one good copy is enough: the rest are not read; a bad first copy is
    reported as damaged and the next one is read."""
    w = world
    services = Services.for_site(w.site)
    try:
        req = CreateRequest(
            node=w.site.nodes["validator3"],
            kind="blockchain-state",
            paths=["/var/lib/kaldrix/state"],
            run_id="first-good",
        )
        manifest = await create_backup(
            w.site,
            req,
            transport=services.transport,
            stores=w.stores,
            key=w.session.current_key(),
            emit=quiet,
        )
    finally:
        await services.close()
    backup = (await build_catalog(w.site, w.stores)).find(manifest.id)
    assert list(backup.replicas) and set(backup.replicas) == set(w.stores)
    held = list(w.stores)
    ring = w.session.keyring()
    outcome = await verify_backup(
        w.site, backup, w.stores, ring, quiet, content="once", first_good=True
    )
    assert outcome.restorable and outcome.content_from_record
    assert outcome.checked == held[:1] and outcome.skipped == held[1:]
    first = w.stores[held[0]]
    assert isinstance(first, LocalStore)
    obj = first.path(backup.replicas[held[0]].key)
    data = bytearray(obj.read_bytes())
    data[7] ^= 0x01
    obj.write_bytes(bytes(data))
    outcome = await verify_backup(
        w.site, backup, w.stores, ring, quiet, content="once", first_good=True
    )
    assert outcome.restorable and "the copy is corrupt" in outcome.damaged[held[0]]
    assert outcome.checked == held[1:2] and outcome.skipped == held[2:]
