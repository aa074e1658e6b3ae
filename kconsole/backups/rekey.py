"""Re-encrypting a backup to a new key: decrypt and encrypt in one stream, verify the new
object, then replace it in every location (the manifest last, so a reader never sees a
manifest that does not match its object)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from kconsole.backups.archive import verify_file
from kconsole.backups.catalog import Backup
from kconsole.backups.manifest import sign_manifest
from kconsole.backups.restore import backup_paths, fetch_verified
from kconsole.backups.stores import Store
from kconsole.crypto import Decryptor, Encryptor, Key, Keyring
from kconsole.errors import OperationFailed
from kconsole.site import Site

Emit = Callable[[str, str], Awaitable[None]]


def _reencrypt(src: Path, dst: Path, keyring: Keyring, key: Key) -> tuple[int, str, int, str]:
    dec = Decryptor(keyring, name=src.name)
    enc = Encryptor(key)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
        while data := fin.read(1 << 20):
            fout.write(enc.update(dec.update(data)))
        fout.write(enc.update(dec.finalize()))
        fout.write(enc.finalize())
        fout.flush()
        os.fsync(fout.fileno())
    assert enc.result is not None
    r = enc.result
    return r.ciphertext_size, r.ciphertext_sha256, r.plaintext_size, r.plaintext_sha256


async def rekey_backup(
    site: Site, backup: Backup, stores: dict[str, Store], keyring: Keyring, key: Key, emit: Emit
) -> None:
    """Replace every replica of `backup` with one encrypted to `key`."""
    assert backup.manifest is not None
    local, _, temporary = await fetch_verified(site, backup, stores, emit)
    out = site.state_dir / "staging" / f"{backup.id}.rekey"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        size, sha, pt_size, pt_sha = await asyncio.to_thread(_reencrypt, local, out, keyring, key)
        if pt_sha != backup.manifest.plaintext_sha256:
            raise OperationFailed(
                f"{backup.id}: the plaintext changed while re-encrypting; nothing replaced."
            )
        if backup.manifest.content == "tar":
            await asyncio.to_thread(verify_file, out, key, False, backup_paths(backup), backup.id)
        manifest = replace(
            backup.manifest,
            key_id=key.key_id,
            ciphertext_size=size,
            ciphertext_sha256=sha,
            plaintext_size=pt_size,
            extra={**backup.manifest.extra, "rekeyed_from": backup.manifest.key_id},
        )
        manifest = sign_manifest(manifest, key.master)
        for name in backup.replicas:
            if name not in stores:
                continue
            store = stores[name]
            await store.put_file(out, backup.replicas[name].key, sha)
            await store.write_bytes(manifest.manifest_key(), manifest.to_json())
        await emit(
            "stdout",
            f"{backup.id}: re-encrypted from key {backup.manifest.key_id[:8]} to {key.key_id[:8]}",
        )
    finally:
        out.unlink(missing_ok=True)
        if temporary:
            local.unlink(missing_ok=True)
