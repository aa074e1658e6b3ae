"""Backups against a real OpenSSH sshd on loopback: create, catalog, verify, restore
byte for byte, corruption and hostile archives refused; ssh.exec and ssh.stream."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kconsole.backups.catalog import build_catalog
from kconsole.backups.create import CreateRequest, create_backup
from kconsole.backups.manifest import Manifest, backup_id, iso, object_key
from kconsole.backups.restore import restore_backup
from kconsole.backups.stores import open_stores
from kconsole.backups.verify import verify_backup
from kconsole.crypto import Encryptor, Keyring, keygen
from kconsole.errors import OperationFailed
from kconsole.site import Location, Site
from kconsole.transport.ssh import SshTransport
from tests.sshd import Sshd, sshd_server  # noqa: F401 - fixture

STATE = "var/lib/kaldrix/state"


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def lab_site(sshd_server: Sshd, tmp_path: Path) -> Iterator[Site]:  # noqa: F811
    root = tmp_path / "node1"
    state = root / STATE
    (state / "blocks").mkdir(parents=True)
    for i in range(20):
        (state / "blocks" / f"{i:06d}.blk").write_bytes(os.urandom(4096 + i))
    (state / "height").write_text("1234\n")
    keys = tmp_path / "keys"
    keygen(keys / "backup_20261101.key")
    base = sshd_server.site()
    node = dataclasses.replace(base.nodes["node1"], root=str(root))
    site = dataclasses.replace(
        base,
        state_dir=tmp_path / "state",
        nodes={"node1": node},
        keys_dir=keys,
        locations={"primary": Location("primary", "local", path=str(tmp_path / "backups"))},
    )
    yield site


async def noop_emit(stream: str, text: str) -> None:
    pass


async def make_backup(site: Site, transport: SshTransport) -> Manifest:
    ring = Keyring(site.keys_dir)  # type: ignore[arg-type]
    req = CreateRequest(
        node=site.nodes["node1"],
        kind="blockchain-state",
        paths=["/" + STATE],
        sudo=False,
        run_id="r1",
    )
    return await create_backup(
        site,
        req,
        transport=transport,
        stores=open_stores(site, transport),
        key=ring.current(),
        emit=noop_emit,
    )


async def test_create_verify_restore_byte_for_byte(lab_site: Site) -> None:
    transport = SshTransport(lab_site, use_ssh_config=False)
    try:
        root = Path(lab_site.nodes["node1"].root)
        before = tree(root / STATE)
        manifest = await make_backup(lab_site, transport)
        assert manifest.key_id == Keyring(lab_site.keys_dir).current().key_id  # type: ignore[arg-type]
        # The node is this machine: zstd where it has it (CI installs it), gzip otherwise.
        assert manifest.compression == ("zstd" if shutil.which("zstd") else "gzip")
        stores = open_stores(lab_site, transport)
        catalog = await build_catalog(lab_site, stores)
        backup = catalog.find(manifest.id)
        assert backup.replicas["primary"].size == manifest.ciphertext_size
        stored = Path(backup.replicas["primary"].path).read_bytes()
        assert b"1234" not in stored  # encrypted at rest
        outcome = await verify_backup(
            lab_site, backup, stores, Keyring(lab_site.keys_dir), noop_emit
        )  # type: ignore[arg-type]
        assert outcome.ok, outcome.problems
        # Damage the live state, then restore.
        (root / STATE / "blocks" / "000003.blk").unlink()
        (root / STATE / "height").write_text("0\n")
        (root / STATE / "junk").write_text("x")
        report = await restore_backup(
            lab_site,
            lab_site.nodes["node1"],
            backup,
            transport=transport,
            stores=stores,
            keyring=Keyring(lab_site.keys_dir),
            run_id="r2",  # type: ignore[arg-type]
            emit=noop_emit,
            sudo=False,
        )
        assert report.members > 20
        assert tree(root / STATE) == before
        assert (root / (STATE + ".pre-restore") / "junk").exists()
        assert not list(root.glob(".kconsole-restore-*"))
    finally:
        await transport.close()


async def test_corrupted_object_is_caught(lab_site: Site) -> None:
    transport = SshTransport(lab_site, use_ssh_config=False)
    try:
        manifest = await make_backup(lab_site, transport)
        stores = open_stores(lab_site, transport)
        obj = Path(stores["primary"].describe(manifest.object_key()))
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0x01
        obj.write_bytes(bytes(data))
        backup = (await build_catalog(lab_site, stores)).find(manifest.id)
        ring = Keyring(lab_site.keys_dir)  # type: ignore[arg-type]
        outcome = await verify_backup(lab_site, backup, stores, ring, noop_emit)
        assert not outcome.ok
        assert "the copy is corrupt" in outcome.problems[0]
        assert (await build_catalog(lab_site, stores)).find(manifest.id).status == "failed-verify"
        with pytest.raises(OperationFailed, match="no good copy"):
            await restore_backup(
                lab_site,
                lab_site.nodes["node1"],
                backup,
                transport=transport,
                stores=stores,
                keyring=ring,
                run_id="r3",
                emit=noop_emit,
                sudo=False,
            )
    finally:
        await transport.close()


async def test_hostile_archive_never_reaches_the_node(lab_site: Site, tmp_path: Path) -> None:
    """A backup whose tar escapes its paths is refused before that member reaches the node,
    and what was unpacked before it is removed with the staging directory."""
    transport = SshTransport(lab_site, use_ssh_config=False)
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in (
                (f"{STATE}/ok", b"fine"),
                (f"{STATE}/../../../../etc/evil", b"pwned"),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        key = Keyring(lab_site.keys_dir).current()  # type: ignore[arg-type]
        enc = Encryptor(key)
        blob = enc.update(buf.getvalue()) + enc.finalize()
        assert enc.result is not None
        from datetime import UTC, datetime

        created = datetime(2026, 11, 1, tzinfo=UTC)
        bid = backup_id("node1", "blockchain-state", created)
        stores = open_stores(lab_site, transport)
        await stores["primary"].write_bytes(object_key("blockchain-state", "node1", bid), blob)
        m = Manifest(
            bid,
            "blockchain-state",
            "node1",
            iso(created),
            ["/" + STATE],
            key.key_id,
            len(blob),
            enc.result.ciphertext_sha256,
            enc.result.plaintext_size,
            enc.result.plaintext_sha256,
        )
        await stores["primary"].write_bytes(m.manifest_key(), m.to_json())
        backup = (await build_catalog(lab_site, stores)).find(bid)
        root = Path(lab_site.nodes["node1"].root)
        before = tree(root)
        with pytest.raises(OperationFailed, match="escapes the restore directory"):
            await restore_backup(
                lab_site,
                lab_site.nodes["node1"],
                backup,
                transport=transport,
                stores=stores,
                keyring=Keyring(lab_site.keys_dir),
                run_id="r4",
                emit=noop_emit,
                sudo=False,
            )  # type: ignore[arg-type]
        assert tree(root) == before
        assert not list(root.glob(".kconsole-restore-*"))
    finally:
        await transport.close()


def test_runbook_ssh_exec_and_stream_against_sshd(lab_site: Site, tmp_path: Path, cli) -> None:
    """The CLI runs ssh.exec and ssh.stream steps on a real sshd."""
    import tomli_w

    node = lab_site.nodes["node1"]
    site_file = tmp_path / "site.toml"
    site_file.write_text(
        tomli_w.dumps(
            {
                "site": {"name": "sshd", "state_dir": str(tmp_path / "state2")},
                "ssh": {
                    "user": lab_site.ssh.user,
                    "identity": str(lab_site.ssh.identity),
                    "known_hosts": str(lab_site.ssh.known_hosts),
                    "connect_timeout": "10s",
                },
                "nodes": [
                    {
                        "name": "node1",
                        "host": node.host,
                        "port": node.port,
                        "root": node.root,
                        "groups": ["validator"],
                    }
                ],
            }
        )
    )
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    rb = tmp_path / "rb.toml"
    rb.write_text(
        textwrap.dedent(f"""
        [runbook]
        id = "sshd-check"
        title = "sshd check"
        rto = "5m"

        [[steps]]
        id = "hello"
        action = "ssh.exec"
        for_each = "group:validator"
        command = "echo hello from {{node}}; cat {{node.root}}/{STATE}/height"
        expect = {{ stdout = "1234" }}

        [[steps]]
        id = "send"
        action = "ssh.stream"
        node = "node1"
        source = "{payload}"
        command = "sha256sum"
        needs = ["hello"]
        expect = {{ stdout = "{digest}" }}
    """)
    )
    code, out, err = cli("--site", site_file, "run", rb, "--yes")
    assert code == 0, out + err
    assert "hello from node1" in out


async def test_verify_once_checks_copies_at_rest_after_create_verified_the_content(
    lab_site: Site,
) -> None:
    """backup.create verified the content as written; a `content = "once"` verify checks each
    copy's SHA-256 and skips the decrypt, but a copy that differs is still caught."""
    from kconsole.backups.catalog import content_verified

    transport = SshTransport(lab_site, use_ssh_config=False)
    try:
        manifest = await make_backup(lab_site, transport)
        assert content_verified(lab_site, manifest.id, manifest.ciphertext_sha256)
        assert not content_verified(lab_site, manifest.id, "0" * 64)  # another ciphertext
        stores = open_stores(lab_site, transport)
        backup = (await build_catalog(lab_site, stores)).find(manifest.id)
        ring = Keyring(lab_site.keys_dir)  # type: ignore[arg-type]
        said: list[str] = []

        async def emit(stream: str, text: str) -> None:
            said.append(text)

        outcome = await verify_backup(lab_site, backup, stores, ring, emit, content="once")
        assert outcome.complete and outcome.content_from_record and outcome.members == 0
        assert sorted(outcome.checked) == sorted(backup.replicas)
        assert "content verified when it was written" in said[-1]
        assert "size and SHA-256 checked: primary: SHA-256 of the local file" in said[-1]
        full = await verify_backup(lab_site, backup, stores, ring, noop_emit)
        assert full.complete and not full.content_from_record and full.members > 20
        obj = Path(stores["primary"].describe(manifest.object_key()))
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0x01
        obj.write_bytes(bytes(data))
        bad = await verify_backup(lab_site, backup, stores, ring, noop_emit, content="once")
        assert "the copy is corrupt" in bad.damaged["primary"]
    finally:
        await transport.close()
