"""Issue 9, class 6: slow or failing storage never hangs the console or leaves debris. On the
lab with its S3 endpoint answering slowly (`s3=slow:S`) or not at all (`s3=down`): a backup
run fails within its bounds and returns (the audit checkpoint upload included), leaves no
object under a final name without its manifest in the locations that worked, and what a
failure does leave (an orphan) is listed by the catalog and removed by prune, dry run first.
Against the real sshd, an SFTP write to a host that stops answering is bounded too."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kconsole.backups.catalog import ORPHAN_AGE_S, build_catalog
from kconsole.backups.manifest import MANIFEST_SUFFIX, OBJECT_SUFFIX
from kconsole.backups.prune import apply_prune, plan_prune
from kconsole.backups.stores import (
    S3Store,
    SftpLocationStore,
    Store,
    bounded_call,
    open_store,
)
from kconsole.errors import OperationFailed
from kconsole.site import Location, load_site
from kconsole.transport.ssh import SshTransport
from tests.lablive import LiveLab, live_lab
from tests.sshd import Sshd, sshd_server  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("slowlab")) as running:
        yield running


@pytest.fixture
def env(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The lab's variables, and S3 requests bounded at 3 s."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    # Bounds the size of the test, not of production (60 s a request there): the fault
    # delays every S3 answer far beyond either.
    monkeypatch.setattr(S3Store, "call_timeout", 3.0)
    yield
    lab.fault("clear")


def backup_runbook(tmp_path: Path, node: str) -> Path:
    p = tmp_path / "rb.toml"
    p.write_text(
        textwrap.dedent(f"""
        [runbook]
        id = "slow-storage"
        title = "Backup to slow storage"
        rto = "5m"

        [[steps]]
        id = "backup"
        action = "backup.create"
        node = "{node}"
        kind = "blockchain-state"
        paths = ["/var/lib/kaldrix/state"]
        timeout = "2m"
        """)
    )
    return p


def stranded(directory: Path) -> list[str]:
    """Objects under their final name with no manifest beside them."""
    return [
        str(p)
        for p in directory.rglob(f"*{OBJECT_SUFFIX}")
        if not p.with_name(p.name[: -len(OBJECT_SUFFIX)] + MANIFEST_SUFFIX).exists()
    ]


@pytest.mark.parametrize("fault", ["s3=slow:120", "s3=down"])
def test_a_backup_to_slow_s3_fails_bounded_and_leaves_no_debris(
    cli, lab: LiveLab, env: None, tmp_path: Path, fault: str
) -> None:
    node = "api2" if fault.startswith("s3=slow") else "api3"
    lab.fault("set", fault)
    t0 = time.monotonic()
    code, out, err = cli(
        "--site", lab.site, "run", backup_runbook(tmp_path, node), "--json", "--yes"
    )
    took = time.monotonic() - t0
    assert code == 1, out + err
    failed = [json.loads(line) for line in out.splitlines() if '"failed"' in line]
    reason = next(e["reason"] for e in failed if e.get("event") == "failed")
    assert "cloud" in reason and "not in every location" in reason and "\n" not in reason
    # Without the bounds the slow endpoint holds a request 120 s, retried, and the audit
    # checkpoint after the run as long again; with them the run is over in a fraction.
    assert took < 100, f"the run took {took:.0f} s"
    print(f"{fault}: {took:.1f} s: {reason}")
    assert stranded(lab.dir / "backups" / "blockchain-state" / node) == []
    dr = [p for p in (lab.dir / "nodes").glob("backup-dr*")]  # the DR host's sandbox
    for root in dr:
        assert stranded(root) == []


async def test_orphans_are_listed_and_pruned_dry_run_first(lab: LiveLab, env: None) -> None:
    """Debris as a failure on a down endpoint leaves it: an object with no manifest in the
    primary and in the bucket. The catalog lists each once it is older than ORPHAN_AGE_S; the
    prune plan names them, nothing goes until it is applied, then both are gone."""
    site = load_site(lab.site)
    stores: dict[str, Store] = {
        name: open_store(loc, site, None)
        for name, loc in site.locations.items()
        if loc.type in ("local", "s3")
    }
    key = "blockchain-state/api1/api1_blockchain-state_20261101T000000Z.kdx"
    blob = os.urandom(4096)
    for store in stores.values():
        await store.write_bytes(key, blob)
    now = datetime.now(UTC) + timedelta(seconds=ORPHAN_AGE_S + 60)
    young = await build_catalog(site, stores, now=datetime.now(UTC))
    assert [o for o in young.orphans if o.key == key] == []  # might still be being stored
    catalog = await build_catalog(site, stores, now=now)
    found = sorted(o.location for o in catalog.orphans if o.key == key)
    assert found == sorted(stores)
    plan = await plan_prune(site, catalog, stores, node="api1", now=now, check_locks=False)
    # Only this test's debris: other tests on the same lab may leave their own for api1.
    doomed = [d for d in plan.deletions if d.orphan and d.keys == [key]]
    assert sorted(d.location for d in doomed) == sorted(stores)
    assert all("orphaned object" in d.reason for d in doomed)
    assert "orphaned objects" in plan.summary(dry_run=True)
    assert sorted(
        o.location for o in (await build_catalog(site, stores, now=now)).orphans if o.key == key
    ) == sorted(stores)
    plan.deletions = doomed  # only the orphans: the lab's real backups are other tests' data
    admin = site.access.admin[0] if site.access.configured else "anyone"

    async def quiet(stream: str, text: str) -> None:
        pass

    result = await apply_prune(site, plan, stores, actor=admin, emit=quiet, catalog=catalog)
    assert result.failed == []
    after = await build_catalog(site, stores, now=now)
    assert [o for o in after.orphans if o.key == key] == []


async def test_a_call_that_never_answers_is_given_up() -> None:
    """The bound itself: a blocking call that never returns is abandoned at its deadline, in
    a daemon thread nothing waits for at exit."""
    import threading

    never = threading.Event()
    with pytest.raises(TimeoutError):
        await bounded_call(never.wait, timeout=0.2)
    stuck = [t for t in threading.enumerate() if t.name == "kconsole-store-call"]
    assert stuck and all(t.daemon for t in stuck)
    never.set()


async def test_sshd_an_sftp_upload_past_its_bound_is_abandoned_without_debris(
    sshd_server: Sshd,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The link stalls mid-upload (the progress hook holds the console for 4 s) past a
    1.5 s bound: the upload is given up with one sentence, and neither the partial nor the
    final name is left on the real sshd's side."""
    base = sshd_server.site()
    loc = Location("dr", "sftp", path=str(tmp_path / "dr"), node="node1")
    site = dataclasses.replace(base, state_dir=tmp_path / "state", locations={"dr": loc})
    transport = SshTransport(site, use_ssh_config=False)
    store = open_store(loc, site, transport)
    src = tmp_path / "object.kdx"
    src.write_bytes(os.urandom(4 << 20))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    stalled: list[int] = []

    def stall(done: int, total: int) -> None:
        if not stalled:
            stalled.append(done)
            time.sleep(4.0)

    try:
        await store.put_file(src, "blockchain-state/node1/first.kdx", digest)  # connected
        monkeypatch.setattr(SftpLocationStore, "call_timeout", 1.5)
        monkeypatch.setattr(SftpLocationStore, "min_rate", 1e12)  # the size adds nothing
        with pytest.raises(OperationFailed, match="did not finish within"):
            await store.put_file(src, "blockchain-state/node1/x.kdx", digest, progress=stall)
        assert stalled
        left = sorted(p.name for p in (tmp_path / "dr").rglob("*") if p.is_file())
        assert left == ["first.kdx"]
    finally:
        await transport.close()


def test_catalog_lists_orphans(cli, lab: LiveLab, env: None) -> None:
    """`kconsole catalog` names an old object without a manifest after the copies, and
    `--json` has it as an `"orphan"` line; a young one may still be being stored: not listed."""
    base = lab.dir / "backups" / "blockchain-state" / "api1"
    old = base / "api1_blockchain-state_20261102T000000Z.kdx"
    young = base / "api1_blockchain-state_20261103T000000Z.kdx"
    for p in (old, young):
        p.write_bytes(os.urandom(512))
    hours_ago = time.time() - ORPHAN_AGE_S - 3600
    os.utime(old, (hours_ago, hours_ago))
    try:
        code, out, err = cli(
            "--site", lab.site, "catalog", "--node", "api1", "--location", "primary"
        )
        assert code == 0, err
        assert "1 orphaned objects (left by a backup that failed" in out
        assert f"  {old} (512 bytes; no manifest beside it)" in out and str(young) not in out
        code, out, err = cli("--site", lab.site, "catalog", "--json", "--kind", "blockchain-state")
        orphans = [json.loads(line) for line in out.splitlines() if '"orphan"' in line]
        assert [(o["location"], o["key"], o["size"]) for o in orphans] == [
            ("primary", "blockchain-state/api1/api1_blockchain-state_20261102T000000Z.kdx", 512)
        ]
    finally:
        old.unlink()
        young.unlink()


async def test_an_unfinished_multipart_upload_is_an_orphan_and_prune_aborts_it(
    lab: LiveLab, env: None
) -> None:
    """A console killed while it streamed a backup to S3 leaves a multipart upload begun and
    never completed: the catalog lists it as a staging orphan once it is old enough, and
    applying the prune aborts it (the bucket then holds no part of it)."""
    site = load_site(lab.site)
    cloud = next(n for n, loc in site.locations.items() if loc.type == "s3")
    store = open_store(site.locations[cloud], site, None)
    assert isinstance(store, S3Store)
    s3, bucket = store.client(), site.locations[cloud].bucket
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")  # the capture began just now
    key = f"blockchain-state/api2/api2_blockchain-state_{stamp}.kdx"
    up = s3.create_multipart_upload(Bucket=bucket, Key=store._key(key))["UploadId"]
    s3.upload_part(
        Bucket=bucket, Key=store._key(key), UploadId=up, PartNumber=1, Body=os.urandom(1024)
    )
    stores: dict[str, Store] = {cloud: store}
    now = datetime.now(UTC) + timedelta(seconds=ORPHAN_AGE_S + 60)
    young = await build_catalog(site, stores, now=datetime.now(UTC))
    assert [o for o in young.orphans if o.key.startswith(key)] == []
    catalog = await build_catalog(site, stores, now=now)
    found = [o for o in catalog.orphans if o.key == key + ".partial"]
    assert [o.what for o in found] == ["a staging file left by an interrupted write"]
    plan = await plan_prune(site, catalog, stores, node="api2", now=now, check_locks=True)
    doomed = [d for d in plan.deletions if d.orphan and d.keys == [key + ".partial"]]
    assert len(doomed) == 1
    plan.deletions = doomed
    admin = site.access.admin[0] if site.access.configured else "anyone"

    async def quiet(stream: str, text: str) -> None:
        pass

    result = await apply_prune(site, plan, stores, actor=admin, emit=quiet, catalog=catalog)
    assert result.failed == []
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u for u in uploads if u["UploadId"] == up] == []
