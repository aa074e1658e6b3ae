"""`transfer.copy`: copy a file between local paths and site locations, verified by SHA-256."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.backups.stores import hash_file
from kconsole.errors import OperationFailed


def split_target(ctx: StepContext, spec: str) -> tuple[Any, str]:
    """(store or None, key or local path) for `LOCATION:PATH` or a plain local path."""
    name, sep, rest = spec.partition(":")
    if sep and name in ctx.site.locations:
        return ctx.services.backups(ctx.site).stores([name])[name], rest
    return None, spec


class TransferCopy(Action):
    """Copy between locations; every copy is checked by size and SHA-256."""

    name = "transfer.copy"
    help = "Copy a file between local paths and locations (LOCATION:PATH), verified by SHA-256."
    fields: ClassVar[dict[str, Field]] = {
        "source": Field("text", required=True, help="LOCATION:PATH or a local path"),
        "dest": Field("text", required=True, help="LOCATION:PATH or a local path"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Fetch to a local staging file if needed, then upload; verified end to end."""
        src_store, src = split_target(ctx, ctx.values["source"])
        dst_store, dst = split_target(ctx, ctx.values["dest"])
        staged: Path | None = None
        try:
            if src_store is None:
                local = Path(src)
                if not local.is_file():
                    raise OperationFailed(f"{local} does not exist.")
            else:
                staged = ctx.site.state_dir / "staging" / f"transfer-{ctx.run_id}-{Path(src).name}"
                await src_store.get_file(src, staged)
                local = staged
            size, sha = await asyncio.to_thread(hash_file, local)
            if dst_store is None:
                from kconsole.backups.stores import LocalStore
                from kconsole.site import Location

                target = Path(dst)
                await LocalStore(Location("copy", "local", str(target.parent))).put_file(
                    local, target.name, sha
                )
                where = str(target)
            else:
                await dst_store.put_file(local, dst, sha)
                where = dst_store.describe(dst)
            await ctx.emit("stdout", f"copied {size} bytes to {where} (sha256 {sha[:12]}...)")
            return ActionResult(
                exit_code=0, summary=f"{size} bytes to {where}", data={"sha256": sha, "size": size}
            )
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
