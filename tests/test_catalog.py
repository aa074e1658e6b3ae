"""The catalog on a small local site: joins, statuses, the index and its filters, the
manifest cache, freshness and data loss, live heights, verify's missing replicas, the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from kconsole.backups import catalog as catalog_module
from kconsole.backups.catalog import (
    CACHE_VERSION,
    build_catalog,
    live_heights,
    record_verification,
    tier_summary,
)
from kconsole.backups.manifest import Manifest
from kconsole.backups.stores import (
    SMALL_READ,
    LocalStore,
    ObjectInfo,
    Store,
    open_stores,
    read_small_file,
)
from kconsole.backups.verify import verify_backup
from kconsole.crypto import Keyring
from kconsole.errors import UsageError
from kconsole.lab.httpd import HttpServer, Request, Response
from kconsole.runbook.coverage import expected_nodes
from kconsole.site import Site
from tests.catalogkit import make_site, plant, utc

NOW = utc("2026-11-26T10:00:00")


async def quiet(stream: str, text: str) -> None:
    pass


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


async def test_joins_locations_and_reports_replicas_and_legacy(site: Site) -> None:
    stores = open_stores(site, None)
    m1 = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=5))
    m2 = await plant(
        site,
        {"primary": stores["primary"]},
        "validator2",
        "blockchain-state",
        NOW - timedelta(minutes=7),
    )
    legacy = Path(
        stores["dr"].describe("blockchain/state/blockchain_validator1_20261120_143000.tar.gz.enc")
    )
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"Salted__" + bytes(40))
    catalog = await build_catalog(site, stores, now=NOW)
    assert catalog.as_of == NOW and catalog.locations == ["primary", "dr"]
    b1 = catalog.find(m1.id)
    assert set(b1.replicas) == {"primary", "dr"} and b1.status == "ok" and b1.missing == []
    assert set(b1.manifests) == {"primary", "dr"}
    b2 = catalog.find(m2.id)
    assert b2.status == "missing-replica" and b2.missing == ["dr"] and "no copy in dr" in b2.reason
    old = catalog.find("blockchain_validator1_20261120_143000.tar.gz.enc")
    assert (
        old.legacy
        and old.key_id == "legacy"
        and old.kind == "blockchain-state"
        and old.status == "ok"
    )
    rows = catalog.rows()
    assert {r["location"] for r in rows if r["id"] == m1.id} == {"primary", "dr"}
    for r in rows:
        assert r["type"] == "backup" and r["as_of"] == "2026-11-26T10:00:00Z"
        assert {
            "id",
            "kind",
            "node",
            "location",
            "path",
            "size",
            "created",
            "age_s",
            "rpo_s",
            "status",
            "key_id",
            "chain_height",
        } <= set(r)
    row = next(r for r in rows if r["id"] == m1.id and r["location"] == "primary")
    assert row["age_s"] == 300 and row["rpo_s"] == 900 and row["chain_height"] == 1000
    assert Path(row["path"]).is_file() and row["size"] == m1.ciphertext_size
    with pytest.raises(UsageError, match="no backup"):
        catalog.find("validator9_blockchain-state_20261126T000000Z")


async def test_statuses_stale_failed_verify_and_latest_good(site: Site) -> None:
    stores = open_stores(site, None)
    older = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=2))
    newest = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=1))
    catalog = await build_catalog(site, stores, now=NOW)
    assert catalog.find(newest.id).status == "stale"  # newest good one is past the 15m RPO
    assert catalog.find(older.id).status == "ok"  # only the newest says the tier is stale
    record_verification(site, newest.id, False, "checksum mismatch")
    catalog = await build_catalog(site, stores, now=NOW)
    assert catalog.find(newest.id).status == "failed-verify"
    assert catalog.latest_good("blockchain-state", "validator1").id == older.id  # type: ignore[union-attr]
    assert catalog.find(older.id).status == "stale"


async def test_index_filters(site: Site) -> None:
    stores = open_stores(site, None)
    for i in range(4):
        await plant(
            site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=5 * i + 1)
        )
        await plant(
            site,
            {"primary": stores["primary"]},
            "validator2",
            "validator-keys",
            NOW - timedelta(minutes=15 * i + 1),
        )
    catalog = await build_catalog(site, stores, now=NOW)
    assert len(catalog.select()) == 8
    assert [b.node for b in catalog.select(kind="validator-keys")] == ["validator2"] * 4
    assert len(catalog.select(node="validator1")) == 4
    assert len(catalog.select(kind="blockchain-state", node="validator2")) == 0
    assert len(catalog.select(status="missing-replica")) == 4
    assert len(catalog.select(location="dr")) == 4
    times = [b.created for b in catalog.select()]
    assert times == sorted(times, reverse=True)
    assert {r["location"] for r in catalog.rows(location="dr")} == {"dr"}
    assert len(catalog.rows(kind="blockchain-state")) == 8
    assert catalog.groups() == [
        ("blockchain-state", "validator1"),
        ("validator-keys", "validator2"),
    ]


async def test_manifest_cache_makes_a_rebuild_read_nothing_new(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = open_stores(site, None)
    m = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=1))
    reads: list[int] = []
    original = LocalStore.read_many

    async def counting(
        self: LocalStore, keys: list[str], limit: int = 1
    ) -> dict[str, bytes | None]:
        reads.append(len(keys))
        return await original(self, keys, limit)

    monkeypatch.setattr(LocalStore, "read_many", counting)
    first = await build_catalog(site, stores, now=NOW)
    assert reads == [1, 1]
    second = await build_catalog(site, stores, now=NOW)
    assert reads == [1, 1]  # warm: every manifest came from the cache
    assert second.find(m.id).manifest == first.find(m.id).manifest
    cache = json.loads((site.state_dir / "catalog-cache.json").read_text())
    assert (
        cache["version"] == CACHE_VERSION
        and cache["as_of"] == "2026-11-26T10:00:00Z"
        and len(cache["manifests"]) == 2
    )
    # A changed manifest (new size/mtime) is read again.
    p = stores["dr"].path(m.manifest_key())  # type: ignore[attr-defined]
    p.write_bytes(p.read_bytes() + b"\n")
    await build_catalog(site, stores, now=NOW)
    assert reads == [1, 1, 1]


class _WaitingStore(Store):
    """A location whose listing finishes only once the other location's listing has begun."""

    def __init__(self, name: str, started: dict[str, asyncio.Event], other: str) -> None:
        self.name, self.started, self.other = name, started, other

    def describe(self, key: str) -> str:
        return f"{self.name}:{key}"

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        self.started[self.name].set()
        await self.started[self.other].wait()
        return []


async def test_locations_are_listed_concurrently(site: Site) -> None:
    started = {"a": asyncio.Event(), "b": asyncio.Event()}
    stores: dict[str, Store] = {
        "a": _WaitingStore("a", started, "b"),
        "b": _WaitingStore("b", started, "a"),
    }
    # Listed one after the other, each listing would wait for the other forever.
    catalog = await asyncio.wait_for(build_catalog(site, stores, now=NOW), 10)
    assert catalog.errors == {} and catalog.backups == []


async def test_an_unlistable_location_is_reported_not_guessed(site: Site) -> None:
    class Broken(LocalStore):
        async def list(self, prefix: str = "") -> list[ObjectInfo]:
            raise OSError("disk on fire")

    stores = open_stores(site, None)
    m = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=1))
    stores["dr"] = Broken(site.locations["dr"])
    catalog = await build_catalog(site, stores, now=NOW)
    assert catalog.errors == {"dr": "disk on fire"}
    assert catalog.find(m.id).status == "ok"  # not "missing" from a location nobody could read


async def test_freshness_and_data_loss(site: Site) -> None:
    stores = open_stores(site, None)
    await plant(
        site,
        stores,
        "validator1",
        "blockchain-state",
        NOW - timedelta(minutes=5),
        chain_height=5000,
    )
    await plant(
        site,
        stores,
        "validator2",
        "blockchain-state",
        NOW - timedelta(minutes=40),
        chain_height=4000,
    )
    catalog = await build_catalog(site, stores, now=NOW)
    rows = catalog.freshness(
        site, live={"validator1": 5100, "validator2": 4700}, expected=expected_nodes(site)
    )
    state = {(r["kind"], r["node"]): r for r in rows}
    v1 = state[("blockchain-state", "validator1")]
    assert (v1["status"], v1["age_s"], v1["loss_s"], v1["block_lag"], v1["breached"]) == (
        "ok",
        300,
        300,
        100,
        False,
    )
    v2 = state[("blockchain-state", "validator2")]
    assert (v2["status"], v2["loss_s"], v2["block_lag"], v2["breached"]) == (
        "stale",
        2400,
        700,
        True,
    )
    # bootstrap1 is backed up by the shipped blockchain-state runbook but has nothing: "none".
    b1 = state[("blockchain-state", "bootstrap1")]
    assert (b1["status"], b1["newest"], b1["loss_s"], b1["block_lag"]) == ("none", None, None, None)
    assert state[("transaction-logs", "validator1")]["status"] == "none"
    assert all(r["as_of"] == "2026-11-26T10:00:00Z" and r["type"] == "freshness" for r in rows)
    unknown = catalog.freshness(site, live={}, expected=expected_nodes(site))
    assert next(r for r in unknown if r["node"] == "validator1")["block_lag"] is None
    tiers = {t["tier"]: t for t in tier_summary(rows)}
    assert tiers["critical"]["status"] == "none" and tiers["critical"]["max_block_lag"] == 700
    assert tiers["critical"]["max_loss_s"] == 2400


def test_expected_nodes_come_from_the_backup_runbooks(site: Site) -> None:
    expected = expected_nodes(site)
    assert expected["blockchain-state"] == ["bootstrap1", "validator1", "validator2"]
    assert expected["validator-keys"] == ["validator1", "validator2"]
    assert expected["transaction-logs"] == ["validator1", "validator2"]  # the site has no api group


async def test_live_heights_from_health_urls(tmp_path: Path) -> None:
    async def handler(req: Request) -> Response:
        return Response.json(200, {"height": 1234, "state": "active"})

    server = HttpServer(handler)
    port = await server.start()
    dead = HttpServer(handler)
    dead_port = await dead.start()
    await dead.close()  # nothing listens there any more
    try:
        site = make_site(
            tmp_path,
            text=f"""
[site]
name = "heights"
[[nodes]]
name = "up"
host = "127.0.0.1"
health_url = "http://127.0.0.1:{port}/health"
[[nodes]]
name = "down"
host = "127.0.0.1"
health_url = "http://127.0.0.1:{dead_port}/health"
[[nodes]]
name = "nourl"
host = "127.0.0.1"
""",
        )
        assert await live_heights(site, timeout=5) == {"up": 1234, "down": None, "nourl": None}
        assert await live_heights(site, ["up"], timeout=5) == {"up": 1234}
    finally:
        await server.close()


async def test_verify_reports_missing_replica_and_corruption(site: Site) -> None:
    stores = open_stores(site, None)
    whole = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=1))
    half = await plant(
        site,
        {"primary": stores["primary"]},
        "validator2",
        "blockchain-state",
        NOW - timedelta(minutes=1),
    )
    assert site.keys_dir is not None
    ring = Keyring(site.keys_dir)
    catalog = await build_catalog(site, stores, now=NOW)
    ok = await verify_backup(site, catalog.find(whole.id), stores, ring, quiet)
    assert ok.ok and ok.complete and ok.checked == ["primary", "dr"]
    missing = await verify_backup(site, catalog.find(half.id), stores, ring, quiet)
    assert missing.ok and not missing.complete and missing.missing == ["dr"]
    assert "dr: replica missing" in missing.problems
    unchecked = await verify_backup(
        site, catalog.find(whole.id), stores, ring, quiet, unreachable={"dr": "timed out"}
    )
    assert unchecked.ok  # primary's copy is fine; dr is merely not checked
    obj = stores["dr"].path(whole.object_key())  # type: ignore[attr-defined]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x40
    obj.write_bytes(bytes(data))
    bad = await verify_backup(site, catalog.find(whole.id), stores, ring, quiet)
    assert (
        not bad.ok
        and bad.checked == ["primary"]
        and "dr:" in bad.problems[0]
        and list(bad.damaged) == ["dr"]
    )
    # Still restorable from primary: the catalog shows the damaged copy, not a failed backup.
    after = await build_catalog(site, stores, now=NOW)
    assert (
        after.find(whole.id).status == "missing-replica"
        and "damaged copy in dr" in after.find(whole.id).reason
    )
    assert after.latest_good("blockchain-state", "validator1") is not None
    # With the primary copy damaged too, nothing good is left: failed-verify.
    obj = stores["primary"].path(whole.object_key())  # type: ignore[attr-defined]
    obj.write_bytes(obj.read_bytes()[:-1] + b"!")
    worse = await verify_backup(site, after.find(whole.id), stores, ring, quiet)
    assert not worse.ok and worse.checked == [] and set(worse.damaged) == {"primary", "dr"}
    final = await build_catalog(site, stores, now=NOW)
    assert final.find(whole.id).status == "failed-verify"
    assert final.latest_good("blockchain-state", "validator1") is None


def test_cli_catalog_json_and_text(site: Site, cli) -> None:
    stores = open_stores(site, None)
    asyncio.run(plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=1)))
    code, out, err = cli("--site", site.path, "catalog", "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    backups = [x for x in lines if x["type"] == "backup"]
    fresh = [x for x in lines if x["type"] == "freshness"]
    assert len(backups) == 2 and {b["location"] for b in backups} == {"primary", "dr"}
    assert all("as_of" in x for x in lines)
    assert {(f["kind"], f["node"]) for f in fresh} >= {
        ("blockchain-state", "validator1"),
        ("validator-keys", "validator2"),
    }
    code, out, _ = cli(
        "--site", site.path, "catalog", "--kind", "blockchain-state", "--node", "validator1"
    )
    assert code == 0
    assert "as of" in out and "2 copies of 1 backups" in out and "tier critical:" in out
    assert "validator2" not in out
    code, out, _ = cli("--site", site.path, "catalog", "--json", "--location", "dr")
    assert {json.loads(x).get("location") for x in out.splitlines()} <= {"dr", None}
    code, _, err = cli("--site", site.path, "catalog", "--kind", "blockchain")
    assert code == 2 and "--kind must be one of" in err


def test_cli_verify_exit_1_names_missing_replicas(site: Site, cli) -> None:
    stores = open_stores(site, None)
    m = asyncio.run(
        plant(
            site,
            {"primary": stores["primary"]},
            "validator1",
            "blockchain-state",
            NOW - timedelta(minutes=1),
        )
    )
    code, out, err = cli("--site", site.path, "verify", m.id)
    assert code == 1
    assert "content ok, INCOMPLETE: dr: replica missing" in err
    assert (
        f"1 of 1 backups have a missing or damaged replica or could not be checked everywhere: {m.id}"
        in err
    )
    code, _, err = cli("--site", site.path, "verify", "nope")
    assert code == 2 and 'no backup "nope"' in err


async def test_the_cache_file_is_parsed_again_only_when_it_changed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = open_stores(site, None)
    m = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=1))
    parsed: list[int] = []
    original = catalog_module._parse_cache

    def counting(raw: bytes) -> dict[str, object]:
        parsed.append(len(raw))
        return original(raw)

    monkeypatch.setattr(catalog_module, "_parse_cache", counting)
    first = await build_catalog(site, stores, now=NOW)  # writes the cache
    second = await build_catalog(site, stores, now=NOW)  # finds the file as it wrote it
    assert parsed == [] and second.find(m.id).manifest == first.find(m.id).manifest
    cache = site.state_dir / "catalog-cache.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in site.state_dir.iterdir() if "catalog-cache" in p.name] == [
        cache.name
    ]  # renamed into place
    # Another process rewrote it: this one reads the new file, not what it remembers.
    data = json.loads(cache.read_bytes())
    for values in data["manifests"].values():
        values[catalog_module._FIELDS.index("chain_height")] = 4242
    cache.write_bytes(json.dumps(data).encode())
    third = await build_catalog(site, stores, now=NOW)
    assert len(parsed) == 1 and third.find(m.id).chain_height == 4242


async def test_a_build_leaves_the_garbage_collector_as_it_found_it(site: Site) -> None:
    stores = open_stores(site, None)
    await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=1))
    threshold = gc.get_threshold()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    await asyncio.gather(build_catalog(site, stores, now=NOW), build_catalog(site, stores, now=NOW))
    assert gc.isenabled() and gc.get_threshold() == threshold and gc.get_freeze_count() == 0
    gc.disable()
    try:
        await build_catalog(site, stores, now=NOW)
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.freeze()  # objects someone else froze stay frozen (those freed meanwhile leave the count)
    try:
        await build_catalog(site, stores, now=NOW)
        assert gc.get_freeze_count() > 0 and gc.isenabled()
    finally:
        gc.unfreeze()


def test_manifests_complete_older_and_newer_are_read_alike() -> None:
    m = Manifest(
        id="validator1_blockchain-state_20261126T095900Z",
        kind="blockchain-state",
        node="validator1",
        created="2026-11-26T09:59:00Z",
        paths=["/var/lib/kaldrix/state"],
        key_id="k" * 32,
        ciphertext_size=10,
        ciphertext_sha256="a" * 64,
        plaintext_size=20,
        plaintext_sha256="b" * 64,
        chain_height=7,
        run="r",
        duration_s=1.5,
        tool="t",
        extra={"note": "x"},
    )
    stored = m.to_dict()
    assert Manifest.from_json(m.to_json()) == m
    assert Manifest.from_dict({**stored, "written_by_a_newer_version": 1}) == m
    older = {k: v for k, v in stored.items() if k not in ("run", "tool", "extra")}
    assert Manifest.from_dict(older) == dataclasses.replace(m, run="", tool="", extra={})
    with pytest.raises(ValueError, match="incomplete manifest"):
        Manifest.from_dict({k: v for k, v in stored.items() if k != "key_id"})
    with pytest.raises(ValueError, match="not a kconsole backup manifest"):
        Manifest.from_dict({**stored, "format": "something-else/1"})


def test_read_small_file_reads_all_of_it(tmp_path: Path) -> None:
    for size in (0, 700, SMALL_READ, 2 * SMALL_READ + 3):
        f = tmp_path / f"f{size}"
        data = os.urandom(size)
        f.write_bytes(data)
        assert read_small_file(str(f)) == data
    with pytest.raises(FileNotFoundError):
        read_small_file(str(tmp_path / "missing"))


async def test_local_listing_walks_every_directory_and_skips_partial_and_hidden_files(
    site: Site,
) -> None:
    store = open_stores(site, None)["primary"]
    assert isinstance(store, LocalStore)
    assert await store.list() == []  # the location's directory does not exist yet
    files = {"a/b/one.kdx": b"1", "a/b/one.kdx.json": b"{}", "a/two.enc": b"22", "top": b"333"}
    for key, data in files.items():
        store.path(key).parent.mkdir(parents=True, exist_ok=True)
        store.path(key).write_bytes(data)
    store.path("a/b/three.kdx.partial").write_bytes(b"x")
    store.path("a/.hidden").write_bytes(b"x")
    os.symlink(store.path("top"), store.path("a/link"))
    listed = {o.key: o for o in await store.list()}
    assert set(listed) == {*files, "a/link"}
    for key in files:
        st = store.path(key).stat()
        assert listed[key] == ObjectInfo(key, st.st_size, st.st_mtime)
    assert listed["a/link"].size == 3  # a link is listed as what it points at
    assert {o.key for o in await store.list("a/b")} == {"a/b/one.kdx", "a/b/one.kdx.json"}
    assert await store.list("top") == []  # a file is not a directory to walk


def _record_many(site_path: str, worker: int, count: int) -> None:
    from kconsole.backups.catalog import record_verification
    from kconsole.site import load_site

    site = load_site(site_path)
    for i in range(count):
        record_verification(site, f"w{worker}-{i}", ok=True)


def test_verification_results_from_several_processes_are_all_kept(tmp_path: Path) -> None:
    """A cron verify and the console record at the same time: no result overwrites another."""
    import multiprocessing

    site = make_site(tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(site.path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    from kconsole.backups.catalog import load_verify_state

    assert len(load_verify_state(site)) == 160


async def test_a_listing_that_a_new_backup_overtook_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step stores a backup while another step's catalog listing is under way: that listing
    may predate the backup, so the session lists again instead of caching it."""
    from kconsole.backups import session as session_module

    site = make_site(tmp_path)
    session = session_module.BackupSession(site, transport=None)
    real = session_module.build_catalog
    calls = 0

    async def listing_overtaken_once(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        result = await real(*args, **kwargs)  # type: ignore[arg-type]
        if calls == 1:
            session.invalidate()  # backup.create finished meanwhile
        return result

    monkeypatch.setattr(session_module, "build_catalog", listing_overtaken_once)
    first = await session.catalog()
    assert calls == 2
    assert await session.catalog() is first and calls == 2  # the second listing was kept
