"""Helpers for catalog, prune, metrics and schedule tests: a small site with local
locations, and real (encrypted, verifiable) backups planted at chosen times through the
Store interface, so the same helper serves a local site and the lab's sftp and s3."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import tarfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from kconsole.backups.manifest import (
    Manifest,
    backup_id,
    iso,
    manifest_key,
    object_key,
    sign_manifest,
)
from kconsole.backups.stores import LocalStore, Store
from kconsole.crypto import Encryptor, Key, keygen, read_key_file
from kconsole.site import Site, load_site

SITE = """
[site]
name = "catalog-unit"
state_dir = "state"

[[nodes]]
name = "bootstrap1"
host = "127.0.0.1"
groups = ["bootstrap"]

[[nodes]]
name = "validator1"
host = "127.0.0.1"
groups = ["validator"]

[[nodes]]
name = "validator2"
host = "127.0.0.1"
groups = ["validator"]

[locations.primary]
type = "local"
path = "backups"

[locations.dr]
type = "local"
path = "dr"

[keys]
dir = "keys"
current = "backup_20261101.key"

[tiers.critical]
rpo = "15m"
rto = "1h"
kinds = ["blockchain-state", "validator-keys"]
retention = "24h"

[tiers.important]
rpo = "1h"
rto = "4h"
kinds = ["transaction-logs"]
retention = "30d"

[tiers.standard]
rpo = "24h"
rto = "8h"
kinds = ["system-logs"]
"""


def make_site(tmp_path: Path, extra: str = "", text: str = SITE) -> Site:
    """The unit site in `tmp_path` (two local locations, a key), plus `extra` TOML."""
    (tmp_path / "site.toml").write_text(text + textwrap.dedent(extra))
    if not (tmp_path / "keys" / "backup_20261101.key").exists():
        keygen(tmp_path / "keys" / "backup_20261101.key")
    return load_site(tmp_path / "site.toml")


def site_key(site: Site) -> Key:
    """The site's current key."""
    assert site.keys_dir is not None
    return read_key_file(site.keys_dir / site.current_key)


def tar_payload(kind: str, node: str, when: datetime) -> bytes:
    """A small gzipped tar of what a backup of `kind` holds."""
    path = {
        "validator-keys": "etc/kaldrix/validator_keys.json",
        "transaction-logs": "var/log/kaldrix/transactions/tx.log",
    }.get(kind, "var/lib/kaldrix/state/index.json")
    body = json.dumps({"node": node, "kind": kind, "at": iso(when)}).encode()
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        info = tarfile.TarInfo(path)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


PATHS = {
    "validator-keys": ["/etc/kaldrix/validator_keys.json"],
    "transaction-logs": ["/var/log/kaldrix/transactions"],
}


async def plant(
    site: Site,
    stores: dict[str, Store],
    node: str,
    kind: str,
    when: datetime,
    chain_height: int | None = 1000,
    duration_s: float = 1.5,
) -> Manifest:
    """Store a real backup of `kind` from `node`, made at `when`, in every store given, its
    manifest signed as `backup.create` signs it (the lab requires signed manifests)."""
    plain = tar_payload(kind, node, when)
    key = site_key(site)
    enc = Encryptor(key)
    cipher = enc.update(plain) + enc.finalize()
    result = enc.result
    assert result is not None
    bid = backup_id(node, kind, when)
    m = Manifest(
        id=bid,
        kind=kind,
        node=node,
        created=iso(when),
        paths=PATHS.get(kind, ["/var/lib/kaldrix/state"]),
        key_id=result.key_id,
        ciphertext_size=result.ciphertext_size,
        ciphertext_sha256=result.ciphertext_sha256,
        plaintext_size=result.plaintext_size,
        plaintext_sha256=result.plaintext_sha256,
        chain_height=chain_height,
        run="test",
        duration_s=duration_s,
        tool="tests",
    )
    m = sign_manifest(m, key.master)
    staging = site.state_dir / "plant"
    staging.mkdir(parents=True, exist_ok=True)
    src = staging / f"{bid}.kdx"
    src.write_bytes(cipher)
    try:
        for store in stores.values():
            await store.put_file(src, object_key(kind, node, bid), result.ciphertext_sha256)
            await store.write_bytes(manifest_key(kind, node, bid), m.to_json())
            if isinstance(store, LocalStore):
                t = when.timestamp()
                for key in (object_key(kind, node, bid), manifest_key(kind, node, bid)):
                    os.utime(store.path(key), (t, t))
    finally:
        src.unlink(missing_ok=True)
    return m


def plant_sync(
    site: Site, stores: dict[str, Store], node: str, kind: str, when: datetime, **kw: object
) -> Manifest:
    """`plant` from synchronous test code."""
    return asyncio.run(plant(site, stores, node, kind, when, **kw))  # type: ignore[arg-type]


def utc(text: str) -> datetime:
    """`2026-11-26T10:00:00` as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
