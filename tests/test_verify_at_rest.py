"""Copies checked where they lie: S3's own SHA-256 checksum (whole, or the composite of a
multipart upload) and `sha256sum` run on the SFTP host, against moto's S3 server and a real
OpenSSH sshd; a changed copy is still caught, and the verdict names how each was checked."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kconsole.backups import stores as stores_mod
from kconsole.backups.catalog import build_catalog
from kconsole.backups.stores import S3Store, hash_file, open_stores
from kconsole.backups.verify import verify_backup
from kconsole.crypto import Keyring
from kconsole.errors import OperationFailed
from kconsole.site import Location, Site
from kconsole.transport.ssh import SshTransport
from tests.sshd import Sshd, sshd_server  # noqa: F401 - fixture
from tests.test_backup_sshd import lab_site, make_backup  # noqa: F401 - fixture

BUCKET = "at-rest"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


async def test_s3_whole_and_composite_checksums_checked_without_reading_back(
    s3_endpoint: str, s3_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Multipart from 5 MiB (S3's smallest part) so three parts stay small in the test.
    monkeypatch.setattr(stores_mod, "S3_MULTIPART", 5 << 20)
    store = S3Store(Location("offsite", "s3", bucket=BUCKET, endpoint_url=s3_endpoint))
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(os.urandom(1000))
    big.write_bytes(os.urandom(11 << 20))
    for path in (small, big):
        size, sha = hash_file(path)
        await store.put_file(path, path.name, sha)
        how = await store.check_at_rest(path.name, sha, size)
        if path is small:
            assert how == "SHA-256 checked by S3's checksum"
        else:
            assert how == (
                "S3's composite checksum of 3 parts matched the one computed from the "
                "ciphertext at upload"
            )
    # The same key rewritten with other bytes (the metadata claims the old hash): caught.
    size, sha = hash_file(big)
    head = await store.head("big")
    store.client().put_object(
        Bucket=BUCKET,
        Key="big",
        Body=os.urandom(size),
        Metadata=head["Metadata"],
        ChecksumAlgorithm="SHA256",
    )
    with pytest.raises(OperationFailed, match="the copy is corrupt"):
        await store.check_at_rest("big", sha, size)
    # An object stored without a checksum cannot be checked at rest: the caller reads it back.
    store.client().put_object(Bucket=BUCKET, Key="plain", Body=b"x")
    assert await store.check_at_rest("plain", "0" * 64, 1) is None


@pytest.fixture
def three_sites(lab_site: Site, s3_endpoint: str, s3_env: None, tmp_path: Path) -> Site:  # noqa: F811
    locations = dict(lab_site.locations)
    locations["dr"] = Location("dr", "sftp", node="node1", path=str(tmp_path / "dr"))
    locations["offsite"] = Location(
        "offsite", "s3", bucket=BUCKET, prefix=tmp_path.name, endpoint_url=s3_endpoint
    )
    return dataclasses.replace(lab_site, locations=locations)


async def test_verify_checks_sftp_and_s3_copies_at_rest_and_says_how(three_sites: Site) -> None:
    site = three_sites
    transport = SshTransport(site, use_ssh_config=False)
    try:
        manifest = await make_backup(site, transport)
        stores = open_stores(site, transport)
        backup = (await build_catalog(site, stores)).find(manifest.id)
        assert sorted(backup.replicas) == ["dr", "offsite", "primary"]
        ring = Keyring(site.keys_dir)  # type: ignore[arg-type]
        said: list[str] = []

        async def emit(stream: str, text: str) -> None:
            said.append(text)

        for content in ("once", "always"):
            outcome = await verify_backup(site, backup, stores, ring, emit, content=content)
            assert outcome.complete, outcome.problems
            assert outcome.methods == {
                "primary": "SHA-256 of the local file",
                "dr": "SHA-256 computed on the host by sha256sum",
                "offsite": "SHA-256 checked by S3's checksum",
            }
            assert "dr: SHA-256 computed on the host by sha256sum" in said[-1]
        assert not list((site.state_dir / "staging").glob("*.verify"))  # nothing downloaded
        # A copy changed on the DR host is caught by the hash the host computes.
        remote = Path(stores["dr"].describe(manifest.object_key()).split("node1", 1)[1])
        data = bytearray(remote.read_bytes())
        data[len(data) // 2] ^= 0x01
        remote.write_bytes(bytes(data))
        bad = await verify_backup(site, backup, stores, ring, emit, content="once")
        assert "the copy is corrupt" in bad.damaged["dr"]
        assert bad.restorable and not bad.complete
    finally:
        await transport.close()
