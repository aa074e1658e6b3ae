"""`backup.create`, `backup.restore`, `backup.verify`, `backup.prune`."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.backups.selector import BackupSelector, parse_selector, pick
from kconsole.errors import OperationFailed
from kconsole.site import BACKUP_KINDS

if TYPE_CHECKING:
    from kconsole.backups.catalog import Backup


def _transport(ctx: StepContext) -> object:
    if ctx.services.transport is None:
        raise OperationFailed("no SSH transport is configured for this run.")
    return ctx.services.transport


def _selector(wanted: str) -> BackupSelector:
    try:
        return parse_selector(wanted)
    except ValueError as exc:
        raise OperationFailed(f"backup {wanted!r}: {exc}.") from None


async def resolve_backup(
    ctx: StepContext, wanted: str, kind: str, node: str, location: str | None = None
) -> Backup:
    """A catalog Backup: an id, the "latest" good one of `kind` from `node`, or the newest
    good one made "before:TIME" (with a copy in `location` when one is given)."""
    session = ctx.services.backups(ctx.site)
    catalog = await session.catalog()
    selector = _selector(wanted)
    if selector.backup_id:
        return catalog.find(selector.backup_id)
    found = pick(catalog, selector, kind, node, location)
    if found is None:
        when = "" if selector.before is None else f" {selector.describe()}"
        where = f"; unreachable locations: {', '.join(catalog.errors)}" if catalog.errors else ""
        place = f"in {location}" if location else "in any location"
        raise OperationFailed(f"there is no good {kind} backup of {node}{when} {place}{where}.")
    return found


class BackupCreate(Action):
    """Capture paths from a node, encrypt on the fly, store in every location with a manifest."""

    name = "backup.create"
    help = "Back up paths of a node: remote tar -> encrypt -> every location, with a manifest."
    needs_node = True
    fields: ClassVar[dict[str, Field]] = {
        "kind": Field("str", required=True, choices=BACKUP_KINDS),
        "paths": Field(
            "list", help="absolute paths on the node, e.g. /var/lib/kaldrix/state (or give command)"
        ),
        "command": Field("command", help="instead of tar: a command whose stdout is the backup"),
        "locations": Field("list", help="location names; default every location"),
        "sudo": Field("bool", default=True, help="run the capture under sudo -n"),
        "consistent": Field(
            "bool", help="stop the service around the capture for a consistent copy"
        ),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Create the backup."""
        from kconsole.backups.create import CreateRequest, create_backup

        node = ctx.require_node()
        session = ctx.services.backups(ctx.site)
        if not ctx.values.get("paths") and not ctx.values.get("command"):
            raise OperationFailed(f"step {ctx.step.id}: backup.create needs paths or command.")
        req = CreateRequest(
            node=node,
            kind=ctx.values["kind"],
            paths=list(ctx.values.get("paths") or []),
            command=ctx.values.get("command") or "",
            sudo=bool(ctx.values.get("sudo", True)),
            run_id=ctx.run_id,
            consistent=bool(ctx.values.get("consistent")),
        )
        manifest = await create_backup(
            ctx.site,
            req,
            transport=_transport(ctx),
            stores=session.stores(ctx.values.get("locations")),
            key=session.current_key(),
            emit=ctx.emit,
            health=ctx.services.health,
        )
        session.invalidate()
        return ActionResult(
            exit_code=0,
            summary=f"{manifest.id} ({manifest.ciphertext_size} bytes, key {manifest.key_id[:8]})",
            data={
                "backup": manifest.id,
                "size": manifest.ciphertext_size,
                "key_id": manifest.key_id,
                "chain_height": manifest.chain_height,
            },
        )


class BackupRestore(Action):
    """Fetch, verify, decrypt and stream a backup into a staging directory, then swap it in."""

    name = "backup.restore"
    help = "Restore a backup into a node: verify, decrypt, extract to staging, swap."
    needs_node = True
    destructive = True
    fields: ClassVar[dict[str, Field]] = {
        "backup": Field(
            "text",
            default="latest",
            help='backup id, "latest" good one, or "before:TIME" (newest good one made before TIME)',
        ),
        "kind": Field("str", choices=BACKUP_KINDS, default="blockchain-state"),
        "location": Field("str", help="location to fetch from; default the fastest holding it"),
        "source_node": Field("text", help="restore another node's backup (default this node's)"),
        "sudo": Field("bool", default=True),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Restore the backup."""
        from kconsole.backups.restore import restore_backup

        node = ctx.require_node()
        session = ctx.services.backups(ctx.site)
        source = ctx.values.get("source_node") or node.name
        location = ctx.values.get("location") or None
        backup = await resolve_backup(
            ctx,
            str(ctx.values.get("backup") or "latest"),
            ctx.values.get("kind") or "blockchain-state",
            source,
            location,
        )
        stores = session.stores([location] if location else None)
        report = await restore_backup(
            ctx.site,
            node,
            backup,
            transport=_transport(ctx),
            stores=stores,
            keyring=session.keyring(),
            run_id=ctx.run_id,
            emit=ctx.emit,
            sudo=bool(ctx.values.get("sudo", True)),
        )
        return ActionResult(
            exit_code=0,
            summary=f"restored {report.backup} from {report.replica} ({report.members} files)",
            data={
                "backup": report.backup,
                "replica": report.replica,
                "members": report.members,
                "key_id": report.key_id,
                "bytes": report.plaintext_size,
            },
        )


class BackupVerify(Action):
    """Check backups end to end without writing plaintext anywhere."""

    name = "backup.verify"
    help = "Verify backups: checksum, authenticated decrypt, gzip layers, tar walk."
    fields: ClassVar[dict[str, Field]] = {
        "backup": Field("text", help='backup id, "latest", "before:TIME" or "all" (default all)'),
        "kind": Field("str", choices=BACKUP_KINDS),
        "location": Field("str"),
        "require": Field(
            "str",
            choices=("every", "one"),
            default="every",
            help='"every" replica must verify, or "one" good copy is enough (before a restore)',
        ),
        "content": Field(
            "str",
            choices=("always", "once"),
            default="always",
            help='"once": skip the decrypt and archive walk when they already passed for this '
            "ciphertext (as backup.create records); each copy's size and SHA-256 is still checked",
        ),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Verify; a bad backup fails the step, naming each (and with require = "every", so
        does a replica that is missing or damaged)."""
        from kconsole.backups.verify import verify_backup, verify_failure

        session = ctx.services.backups(ctx.site)
        # The run's catalog is current: create, prune and rekey invalidate it when they change it.
        catalog = await session.catalog()
        wanted = str(ctx.values.get("backup") or "all")
        kind = ctx.values.get("kind")
        node = ctx.node.name if ctx.node else None
        if wanted == "all":
            targets = catalog.select(kind, node)
        elif wanted == "latest" or wanted.startswith("before:"):
            selector = _selector(wanted)
            targets = [
                b
                for b in (
                    pick(catalog, selector, k, n)
                    for k, n in sorted({(b.kind, b.node) for b in catalog.select(kind, node)})
                )
                if b
            ]
        else:
            targets = [catalog.find(wanted)]
        if not targets:
            what = " ".join(x for x in (kind, "backup of" if node else "backups", node) if x)
            if wanted.startswith("before:"):
                what += f" {_selector(wanted).describe()}"
            where = f" (unreachable: {', '.join(catalog.errors)})" if catalog.errors else ""
            raise OperationFailed(f"there is no {what} to verify in any location{where}.")
        stores = session.stores([ctx.values["location"]] if ctx.values.get("location") else None)
        keyring = session.keyring()
        bad: list[str] = []
        why: dict[str, str] = {}
        incomplete: list[str] = []
        for backup in targets:
            outcome = await verify_backup(
                ctx.site,
                backup,
                stores,
                keyring,
                ctx.emit,
                unreachable={n: e for n, e in catalog.errors.items() if n in stores},
                content=str(ctx.values.get("content") or "always"),
                first_good=ctx.values.get("require") == "one",
            )
            if not outcome.restorable:
                bad.append(backup.id)
                why[backup.id] = outcome.problems[0] if outcome.problems else ""
            elif not outcome.complete:
                incomplete.append(backup.id)  # a damaged, missing or unchecked replica
        if bad or incomplete:
            session.invalidate()  # verdicts changed: the next look at the catalog relists
        if ctx.values.get("require") == "one" and incomplete and not bad:
            # A restore needs one good copy; the damaged or missing replicas are for the
            # backup runbooks to repair, not a reason to leave a node down.
            await ctx.emit("stderr", verify_failure([], incomplete, len(targets)))
            incomplete = []
        if bad or incomplete:
            raise OperationFailed(verify_failure(bad, incomplete, len(targets), why=why))
        return ActionResult(
            exit_code=0, summary=f"{len(targets)} backups verified", data={"verified": len(targets)}
        )


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
        """Plan, show the plan, then (unless a dry run) delete what it lists, auditing each deletion."""
        from kconsole.backups.prune import apply_prune, plan_prune
        from kconsole.config import parse_duration
        from kconsole.site import current_user

        raw = ctx.values.get("retention")
        try:
            retention = parse_duration(raw) if raw not in (None, "") else None
        except ValueError as exc:
            raise OperationFailed(f"bad retention for {ctx.step.id}: {exc}.") from None
        dry_run = bool(ctx.values.get("dry_run", True))
        user = ctx.user or current_user()
        if not dry_run:
            ctx.site.access.require_admin(user, "delete backups")
        session = ctx.services.backups(ctx.site)
        location = ctx.values.get("location") or None
        stores = session.stores([location] if location else None)
        catalog = await session.catalog(refresh=True)
        plan = await plan_prune(
            ctx.site,
            catalog,
            stores,
            kind=ctx.values.get("kind") or None,
            node=ctx.node.name if ctx.node else None,
            location=location,
            retention=retention,
        )
        for stream, line in plan.lines(dry_run):
            await ctx.emit(stream, line)
        data = {"dry_run": dry_run, **plan.as_data()}
        problems = []
        if not dry_run and plan.deletions:
            result = await apply_prune(
                ctx.site, plan, stores, actor=user, emit=ctx.emit, catalog=catalog
            )
            session.invalidate()
            data.update(
                deleted=result.deleted,
                delete_markers=result.markers,
                failed=result.failed,
                deletions=[d.as_json() for d in plan.deletions],
            )
            if result.failed:
                problems.append(
                    f"{len(result.failed)} copies could not be deleted: {', '.join(result.failed[:5])}"
                )
        # Objects lacking the Object Lock the site requires are reported (stderr lines, the
        # summary, `unlocked` in the data), not failed on: the backups themselves are fine, and a
        # failed retention step would tell the team a backup failed.
        if problems:
            raise OperationFailed("; ".join(problems))
        return ActionResult(exit_code=0, summary=plan.summary(dry_run), data=data)
