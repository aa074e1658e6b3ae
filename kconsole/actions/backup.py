"""`backup.create`, `backup.restore`, `backup.verify`, `backup.prune`."""

from __future__ import annotations

from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed
from kconsole.site import BACKUP_KINDS


def _unavailable(name: str) -> OperationFailed:
    return OperationFailed(f"{name} is not available in this build of kconsole.")


class BackupCreate(Action):
    """Capture paths from a node, encrypt on the fly, store in every location with a manifest."""

    name = "backup.create"
    help = "Back up paths of a node: remote tar -> encrypt -> every location, with a manifest."
    needs_node = True
    fields: ClassVar[dict[str, Field]] = {
        "kind": Field("str", required=True, choices=BACKUP_KINDS),
        "paths": Field("list", required=True, help="absolute paths on the node, e.g. /var/lib/kaldrix/state"),
        "command": Field("command", help="instead of tar: a command whose stdout is the backup"),
        "locations": Field("list", help="location names; default every location"),
        "consistent": Field("bool", help="stop the service around the capture for a consistent copy"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Create the backup."""
        raise _unavailable(self.name)


class BackupRestore(Action):
    """Fetch, verify, decrypt and stream a backup into a staging directory, then swap it in."""

    name = "backup.restore"
    help = "Restore a backup into a node: verify, decrypt, extract to staging, swap."
    needs_node = True
    destructive = True
    fields: ClassVar[dict[str, Field]] = {
        "backup": Field("text", default="latest", help='backup id, or "latest" good one'),
        "kind": Field("str", choices=BACKUP_KINDS, default="blockchain-state"),
        "location": Field("str", help="location to fetch from; default the fastest holding it"),
        "source_node": Field("text", help="restore another node's backup (default this node's)"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Restore the backup."""
        raise _unavailable(self.name)


class BackupVerify(Action):
    """Check backups end to end without writing plaintext anywhere."""

    name = "backup.verify"
    help = "Verify backups: checksum, authenticated decrypt, gzip layers, tar walk."
    fields: ClassVar[dict[str, Field]] = {
        "backup": Field("text", help='backup id, "latest", or "all" (default all)'),
        "kind": Field("str", choices=BACKUP_KINDS),
        "location": Field("str"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Verify."""
        raise _unavailable(self.name)


class BackupPrune(Action):
    """Apply retention: show what would go first, never delete the newest good backup."""

    name = "backup.prune"
    help = "Delete backups past retention (dry run first)."
    destructive = True
    fields: ClassVar[dict[str, Field]] = {
        "kind": Field("str", choices=BACKUP_KINDS),
        "retention": Field("duration", help="override the tier's retention"),
        "dry_run": Field("bool", default=True),
        "location": Field("str"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Prune."""
        raise _unavailable(self.name)
