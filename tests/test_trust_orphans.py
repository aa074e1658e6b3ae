"""Trust boundaries, class 6 (debris): what a process killed with SIGKILL leaves in a
location, and a manifest whose object is gone, are reported by the catalog as orphans after
the same age rule as an object without a manifest, and `backup.prune` removes them, dry run
first."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

from textual.widgets import DataTable

from kconsole.backups.catalog import (
    ORPHAN_AGE_S,
    ORPHAN_MANIFEST,
    ORPHAN_STAGING,
    build_catalog,
)
from kconsole.backups.prune import apply_prune, plan_prune
from kconsole.backups.stores import LocalStore, is_staging_name, open_store, open_stores
from kconsole.site import Location
from kconsole.transport.ssh import SshTransport
from screens.catalog_source import EngineCatalog
from tests.catalogkit import make_site, plant, utc
from tests.sshd import Sshd, sshd_server  # noqa: F401 - fixture
from tests.tui_support import make_console, settle, type_text, wait_for

NOW = utc("2026-11-26T10:00:00")

CHILD = textwrap.dedent("""
    import asyncio, hashlib, sys, time
    from pathlib import Path
    from kconsole.backups.stores import open_stores
    from kconsole.site import load_site

    store = open_stores(load_site(Path(sys.argv[1])), None)["primary"]
    src, marker = Path(sys.argv[2]), Path(sys.argv[3])
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    def stall(done, total):
        if not marker.exists():
            marker.write_text(str(done))
            time.sleep(600)  # killed here, mid-copy

    asyncio.run(store.put_file(
        src, "blockchain-state/validator1/validator1_blockchain-state_20261126T000000Z.kdx",
        digest, stall))
""")


async def quiet(stream: str, text: str) -> None:
    pass


def test_staging_names() -> None:
    assert is_staging_name("x.kdx.partial") and is_staging_name(".x.kdx.json.ab12.tmp")
    assert not is_staging_name("x.kdx") and not is_staging_name("notes.tmp")


async def test_a_kill_9_staging_file_and_a_manifest_without_object_are_orphans(
    tmp_path: Path,
) -> None:
    """A real SIGKILL mid-copy into the primary leaves `NAME.kdx.partial`; an atomic write
    killed before its rename leaves `.NAME.XXXX.tmp`; a backup whose object was deleted
    leaves its manifest. None is listed while young; old, each is an orphan saying what it
    is, prune's dry run plans them and deletes nothing, applying deletes exactly them."""
    site = make_site(tmp_path)
    stores = open_stores(site, None)
    primary = stores["primary"]
    assert isinstance(primary, LocalStore)
    src = tmp_path / "object.bin"
    src.write_bytes(os.urandom(3 << 20))  # several copy pieces: the hook runs mid-copy
    marker = tmp_path / "copying"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "site.toml"), str(src), str(marker)],
        env={**os.environ},
    )
    try:
        for _ in range(600):  # waits for the child's own signal, not for a time
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the copy never started"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    partials = sorted(primary.root.rglob("*.partial"))
    assert len(partials) == 1, partials
    tmp = partials[0].parent / ".validator1_blockchain-state_20261126T010000Z.kdx.json.x1y2.tmp"
    tmp.write_bytes(b'{"id": "half a manifest')
    gone = await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=1))
    primary.path(gone.object_key()).unlink()
    kept = await plant(site, stores, "validator2", "blockchain-state", NOW - timedelta(hours=1))

    young = await build_catalog(site, stores, now=NOW - timedelta(hours=1))
    assert [o for o in young.orphans if o.location == "primary"] == []
    old = NOW.timestamp() - ORPHAN_AGE_S - 60
    for p in (partials[0], tmp):
        os.utime(p, (old, old))
    os.utime(primary.path(gone.manifest_key()), (old, old))

    catalog = await build_catalog(site, stores, now=NOW)
    found = {(o.location, o.key, o.what) for o in catalog.orphans}
    rel = str(partials[0].relative_to(primary.root))
    assert found == {
        ("primary", rel, ORPHAN_STAGING),
        ("primary", str(tmp.relative_to(primary.root)), ORPHAN_STAGING),
        ("primary", gone.manifest_key(), ORPHAN_MANIFEST),
    }
    assert not any(b.id.endswith(".partial") for b in catalog.backups)

    plan = await plan_prune(site, catalog, stores, now=NOW, check_locks=False)
    doomed = sorted(k for d in plan.deletions if d.orphan for k in d.keys)
    assert doomed == sorted(k for _, k, _ in found)
    assert all(d.orphan for d in plan.deletions)  # nothing past retention here
    assert partials[0].exists() and tmp.exists()  # planning is a dry run
    result = await apply_prune(site, plan, stores, actor="alice", emit=quiet, catalog=catalog)
    assert result.failed == []
    assert not partials[0].exists() and not tmp.exists()
    assert not primary.path(gone.manifest_key()).exists()
    assert primary.path(gone.manifest_key()).parent.exists()
    for store in stores.values():  # the other backup and the DR copies are untouched
        assert store.path(kept.object_key()).exists()  # type: ignore[attr-defined]
        assert store.path(gone.object_key()).exists() == (store is not primary)  # type: ignore[attr-defined]
    after = await build_catalog(site, stores, now=NOW)
    assert after.orphans == []


async def test_the_catalog_screen_shows_orphans_from_the_engine_catalog(tmp_path: Path) -> None:
    """The console's Catalog screen on the engine's own catalog of a local location holding
    an old `.partial` a killed copy left: the status line says there are orphans, the row
    is listed after the backups as `orphan`, and `status:orphan` filters to it."""
    console = make_console(
        tmp_path, site_extra='\n[locations.primary]\ntype = "local"\npath = "backups"\n'
    )
    app = console.app
    app.catalog = EngineCatalog(app.site, app.services)
    debris = tmp_path / "backups" / "blockchain-state" / "validator1"
    debris.mkdir(parents=True)
    partial = debris / "validator1_blockchain-state_20261126T000000Z.kdx.partial"
    partial.write_bytes(b"x" * 2048)
    old = time.time() - ORPHAN_AGE_S - 3600
    os.utime(partial, (old, old))
    async with app.run_test(size=(120, 32)) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await wait_for(pilot, lambda: app.catalog_reading is not None, "the catalog")
        await settle(pilot)
        status = str(app.screen.query_one("#catalog-status").render())
        assert "(of 0 copies and 1 orphans" in status
        assert "1 ORPHANS" in status and "backup.prune removes them" in status
        table = app.screen.query_one("#backups", DataTable)
        assert table.row_count == 1
        row = [str(c) for c in table.get_row_at(0)]
        assert row[1:4] == ["blockchain-state", "validator1", "primary"]
        assert row[5] == "! orphan" and row[7] == partial.name
        await pilot.press("slash")
        await type_text(pilot, "status:orphan")
        await settle(pilot)
        assert table.row_count == 1
        await type_text(pilot, " node:validator2")
        await settle(pilot)
        assert table.row_count == 0


async def test_sshd_staging_files_in_an_sftp_location_are_orphans(
    sshd_server: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same through the real OpenSSH sshd's SFTP: a `.partial` transfer and a `.tmp`
    file in an SFTP location, old, are listed as staging orphans and pruned over SFTP."""
    loc = Location("dr", "sftp", path=str(tmp_path / "dr"), node="node1")
    site = dataclasses.replace(
        sshd_server.site(), state_dir=tmp_path / "state", locations={"dr": loc}
    )
    transport = SshTransport(site, use_ssh_config=False)
    stores = {"dr": open_store(loc, site, transport)}
    d = tmp_path / "dr" / "blockchain-state" / "node1"
    d.mkdir(parents=True)
    left = [d / "node1_blockchain-state_20261126T000000Z.kdx.partial", d / ".x.kdx.json.ab.tmp"]
    old = NOW.timestamp() - ORPHAN_AGE_S - 60
    for p in left:
        p.write_bytes(b"x" * 100)
        os.utime(p, (old, old))
    try:
        catalog = await build_catalog(site, stores, now=NOW)
        assert sorted((o.key, o.what) for o in catalog.orphans) == sorted(
            (str(p.relative_to(tmp_path / "dr")), ORPHAN_STAGING) for p in left
        )
        plan = await plan_prune(site, catalog, stores, now=NOW, check_locks=False)
        assert len(plan.deletions) == 2 and all(p.exists() for p in left)
        result = await apply_prune(site, plan, stores, actor="alice", emit=quiet, catalog=catalog)
        assert result.failed == [] and not any(p.exists() for p in left)
    finally:
        await transport.close()
