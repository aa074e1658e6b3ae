"""`crypto.encrypt`, `crypto.decrypt`, `crypto.rekey`, `crypto.keygen`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.audit import AuditLog
from kconsole.errors import OperationFailed
from kconsole.site import BACKUP_KINDS


class CryptoEncrypt(Action):
    """Encrypt a local file in the native authenticated format."""

    name = "crypto.encrypt"
    help = "Encrypt a local file (KDXENC v1) with the site's current key or a key file."
    fields: ClassVar[dict[str, Field]] = {
        "input": Field("text", required=True),
        "output": Field("text", required=True),
        "key": Field("text", help="key file; default the site's current key"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Encrypt; the output appears only when complete."""
        from kconsole.crypto import encrypt_file, read_key_file

        key = (
            read_key_file(ctx.values["key"])
            if ctx.values.get("key")
            else ctx.services.backups(ctx.site).current_key()
        )
        result = await asyncio.to_thread(
            encrypt_file, key, ctx.values["input"], ctx.values["output"]
        )
        return ActionResult(
            exit_code=0,
            summary=f"encrypted with key {result.key_id[:8]}",
            data={"key_id": result.key_id, "sha256": result.ciphertext_sha256},
        )


class CryptoDecrypt(Action):
    """Decrypt a native or legacy file; the key is found by the file's key id."""

    name = "crypto.decrypt"
    help = "Decrypt a native (by key id, from the keyring) or legacy openssl file."
    fields: ClassVar[dict[str, Field]] = {
        "input": Field("text", required=True),
        "output": Field("text", required=True),
        "key": Field("text", help="key file; default: the site keyring, by key id"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Decrypt; a failed decrypt leaves no output file."""
        from kconsole.crypto import (
            decrypt_file,
            decrypt_legacy_file,
            detect_format,
            read_key_file,
        )

        keys = (
            read_key_file(ctx.values["key"])
            if ctx.values.get("key")
            else ctx.services.backups(ctx.site).keyring()
        )
        src, dst = ctx.values["input"], ctx.values["output"]
        fmt = await asyncio.to_thread(detect_format, src)
        if fmt == "openssl-legacy":
            await ctx.emit("stderr", f"{src} is legacy, unauthenticated (openssl aes-256-cbc)")
            res = await asyncio.to_thread(decrypt_legacy_file, keys, src, dst)
            return ActionResult(
                exit_code=0,
                summary="decrypted (legacy, unauthenticated)",
                data={"key_id": res.key_id},
            )
        if fmt is None:
            raise OperationFailed(f"{src} is neither a kconsole nor an openssl-encrypted file.")
        native = await asyncio.to_thread(decrypt_file, keys, src, dst)
        return ActionResult(
            exit_code=0,
            summary=f"decrypted with key {native.key_id[:8]}",
            data={"key_id": native.key_id},
        )


class CryptoKeygen(Action):
    """Generate a new backup key in the site keyring (0600); it becomes the current key
    (the keyring's CURRENT marker), so later backups and `crypto.rekey` use it."""

    name = "crypto.keygen"
    help = "Generate a new backup key in the site's key directory (mode 0600)."
    admin_only = "write a key into the site's key directory"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field(
            "text", help="file name in the keyring, default backup_{now:%Y%m%d_%H%M%S}.key"
        ),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Write the key; the audit log records its id, never its value."""
        from kconsole.crypto import keygen
        from kconsole.site import current_user

        ctx.site.access.require_admin(ctx.user or current_user(), self.admin_only)
        if ctx.site.keys_dir is None:
            raise OperationFailed("the site has no [keys] dir to put a new key in.")
        name = ctx.values.get("name") or f"backup_{ctx.services.clock.now():%Y%m%d_%H%M%S}.key"
        if "/" in name or not name.endswith(".key"):
            raise OperationFailed(f"key name {name!r} must be a plain file name ending in .key.")
        key = await asyncio.to_thread(keygen, Path(ctx.site.keys_dir) / name)
        from kconsole.backups.session import make_current

        make_current(ctx.site, name)
        AuditLog(ctx.site.state_dir).append(
            ctx.user, "key.generate", name, key_id=key.key_id, run=ctx.run_id
        )
        await ctx.emit("stdout", f"new key {name}, key id {key.key_id}")
        return ActionResult(
            exit_code=0, summary=f"key {key.key_id[:8]} in {name}", data={"key_id": key.key_id}
        )


class CryptoRekey(Action):
    """Re-encrypt backups to the current key (after a key compromise), in every location."""

    name = "crypto.rekey"
    help = "Re-encrypt backups that use an older key to the site's current key."
    destructive = True
    admin_only = "re-encrypt backups"
    fields: ClassVar[dict[str, Field]] = {
        "kind": Field("str", choices=BACKUP_KINDS),
        "location": Field("str"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Re-encrypt each backup not yet under the current key; legacy files are reported."""
        from kconsole.backups.rekey import rekey_backup
        from kconsole.site import current_user

        ctx.site.access.require_admin(ctx.user or current_user(), self.admin_only)
        session = ctx.services.backups(ctx.site)
        catalog = await session.catalog(refresh=True)
        current = session.current_key()
        keyring = session.keyring()
        stores = session.stores([ctx.values["location"]] if ctx.values.get("location") else None)
        done = skipped = 0
        for backup in catalog.select(ctx.values.get("kind")):
            if backup.legacy:
                await ctx.emit(
                    "stderr",
                    f"{backup.id}: legacy file left as it is (rekey writes native backups only)",
                )
                skipped += 1
                continue
            if backup.key_id == current.key_id:
                continue
            await rekey_backup(ctx.site, backup, stores, keyring, current, ctx.emit)
            done += 1
        session.invalidate()
        AuditLog(ctx.site.state_dir).append(
            ctx.user,
            "backup.rekey",
            ctx.values.get("kind") or "all",
            to_key=current.key_id,
            count=done,
            run=ctx.run_id,
        )
        return ActionResult(
            exit_code=0,
            summary=f"{done} backups re-encrypted to key {current.key_id[:8]}"
            + (f", {skipped} legacy left" if skipped else ""),
            data={"rekeyed": done},
        )
