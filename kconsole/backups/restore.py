"""`backup.restore`: fetch, verify, decrypt and stream a backup into an empty staging
directory on the node, then swap it in, keeping the previous state for rollback.

The key is the one the backup names (its key id, found in the site keyring), never
"today's" key. Nothing reaches the node before the whole backup has been decrypted,
authenticated and walked locally, member by member, with every path confined to what
the backup is meant to hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import posixpath
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kconsole.backups.archive import ArchiveReport, checked_tar_chunks
from kconsole.backups.catalog import Backup
from kconsole.backups.pipeline import ChunkPipe, threaded_chunks
from kconsole.backups.stores import LocalStore, Store, hash_file
from kconsole.backups.trust import check_backup, confined_paths
from kconsole.crypto import Keyring
from kconsole.errors import OperationFailed
from kconsole.site import Node, Site

Emit = Callable[[str, str], Awaitable[None]]

LEGACY_PATHS = {
    "blockchain-state": ["var/lib/kaldrix/state"],
    "validator-keys": ["etc/kaldrix/validator_keys.json", "etc/kaldrix/tls"],
    "transaction-logs": ["var/log/kaldrix/transactions"],
    "full-system": ["etc/kaldrix", "var/lib/kaldrix", "var/log/kaldrix"],
    "archive": ["etc/kaldrix", "var/lib/kaldrix", "var/log/kaldrix"],
}
PRE_RESTORE = ".pre-restore"


class RestoreFailed(OperationFailed):
    """The node's side of a restore failed (staging, extraction): not the copy's fault."""


@dataclass
class RestoreReport:
    """What a restore did."""

    backup: str
    node: str
    replica: str
    members: int
    plaintext_size: int
    key_id: str
    paths: list[str]


def backup_paths(backup: Backup) -> list[str]:
    """The relative paths a backup holds (what restore may write), each checked against what
    its kind may hold: OperationFailed for a manifest naming anything else."""
    if backup.manifest is not None:
        return confined_paths(backup, backup.manifest.paths)
    return LEGACY_PATHS.get(backup.kind, [])


def swap_script(root: str, staging: str, paths: list[str]) -> str:
    """The shell script that swaps the extracted `paths` from `staging` into `root`.

    First every path's directory is resolved on the node (symlinks followed) and must stay
    inside the root; then each live path is moved to `*.pre-restore` and the restored one
    moved in. If any step fails, everything moved so far is put back, the staging directory
    is removed, and it exits 1 with the reason on stderr. A hang-up does not interrupt it.
    """
    q = shlex.quote
    base = root.rstrip("/")
    lines = [
        # A few renames, finished once begun: a dropped SSH session (SIGHUP, or SIGPIPE on
        # writing its reason) must not stop it half-way, between moving the live state
        # aside and moving the restored one in.
        "trap '' HUP PIPE",
        f"R=$(realpath -e -- {q(root)}) || {{ echo 'the node root is missing' >&2; exit 1; }}",
    ]
    undo: list[str] = []
    for i, rel in enumerate(paths):
        live = f"{base}/{rel}"
        lines.append(f"m{i}=0; p{i}=0")
        undo[:0] = [
            f'if [ "$p{i}" = 1 ]; then rm -rf -- {q(live)}; fi',
            f'if [ "$m{i}" = 1 ]; then mv -- {q(live + PRE_RESTORE)} {q(live)}; fi',
        ]
    lines.append(
        f'fail() {{ echo "$1" >&2; {"; ".join([*undo, f"rm -rf -- {q(staging)}"])}; exit 1; }}'
    )
    for rel in paths:
        live = f"{base}/{rel}"
        lines.append(
            f"d=$(realpath -m -- {q(posixpath.dirname(live))}); "
            f'case "$d/" in "${{R%/}}"/*) ;; *) fail {q(f"/{rel} resolves outside the node root")};; esac'
        )
    for i, rel in enumerate(paths):
        live, old, new = q(f"{base}/{rel}"), q(f"{base}/{rel}{PRE_RESTORE}"), q(f"{staging}/{rel}")
        what = q(f"cannot move /{rel} aside")
        lines.append(
            f"if [ -e {live} ] || [ -L {live} ]; then "
            f"{{ rm -rf -- {old} && mv -- {live} {old}; }} || fail {what}; m{i}=1; fi"
        )
        lines.append(
            f'{{ mkdir -p -- "$(dirname -- {live})" && mv -- {new} {live}; }} '
            f"|| fail {q(f'cannot move the restored /{rel} into place')}; p{i}=1"
        )
    lines.append(f"rm -rf -- {q(staging)}")
    return "\n".join(lines) + "\n"


async def checked_copy(
    site: Site, backup: Backup, name: str, store: Store, purpose: str
) -> tuple[Path, bool]:
    """A local file holding the replica of `backup` in location `name`, its SHA-256 checked
    against the manifest: (path, whether it is a temporary download to remove after)."""
    replica = backup.replicas[name]
    expected = backup.manifest.ciphertext_sha256 if backup.manifest else None
    if isinstance(store, LocalStore):
        path = store.path(replica.key)
        if expected:
            _, got = await asyncio.to_thread(hash_file, path)
            if got != expected:
                raise OperationFailed(
                    f"{path} has SHA-256 {got[:12]}..., its manifest says "
                    f"{expected[:12]}...: the copy is corrupt"
                )
        return path, False
    staging = site.state_dir / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    local = staging / f"{backup.id}.{name}.{purpose}"
    await store.get_file(replica.key, local, expected)
    return local, True


async def fetch_verified(
    site: Site, backup: Backup, stores: dict[str, Store], emit: Emit
) -> tuple[Path, str, bool]:
    """A local copy of the ciphertext that matches the manifest: (path, location, is_temporary).

    Replicas are tried fastest first; a corrupted or unreachable one is reported and the
    next is tried, so a damaged primary falls back to the DR copy.
    """
    problems: list[str] = []
    for name, store in stores.items():
        if name not in backup.replicas:
            continue
        try:
            if not isinstance(store, LocalStore):
                await emit("stdout", f"fetching {backup.id} from {name}")
            path, temporary = await checked_copy(site, backup, name, store, "fetch")
            return path, name, temporary
        except (OperationFailed, OSError) as exc:
            problems.append(f"{name}: {str(exc).rstrip('.')}")
            await emit("stderr", f"replica in {name} unusable: {str(exc).rstrip('.')}")
    raise OperationFailed(
        f"no good copy of {backup.id}: {'; '.join(problems) or 'it has no replicas'}."
    )


async def restore_backup(
    site: Site,
    node: Node,
    backup: Backup,
    *,
    transport: Any,
    stores: dict[str, Store],
    keyring: Keyring,
    run_id: str,
    emit: Emit,
    sudo: bool = True,
    require_stopped: bool = True,
) -> RestoreReport:
    """Restore `backup` into `node` (it may be another node's backup: a rebuild)."""
    sudo_p = "sudo -n " if sudo else ""
    check_backup(site, backup, keyring)  # nothing a refused manifest says is used
    if backup.manifest is not None and backup.manifest.content != "tar":
        raise OperationFailed(
            f"{backup.id} is a log stream, not a file archive; it cannot be restored into a node."
        )
    if backup.manifest is not None and backup.manifest.key_id not in keyring:
        raise OperationFailed(
            f"{backup.id} was encrypted with key {backup.manifest.key_id}, which is not in "
            f"the keyring {keyring.name}; restore that key file first."
        )
    paths = backup_paths(backup)
    if not paths:
        raise OperationFailed(
            f"kconsole does not know which paths a legacy {backup.kind} backup holds."
        )
    if require_stopped:
        check = await transport.run(
            node, f"systemctl is-active {shlex.quote(node.service)}", timeout=30
        )
        if check.stdout.decode("utf-8", "replace").strip() == "active":
            raise OperationFailed(
                f"{node.service} is still running on {node.name}; stop it before restoring."
            )
    root = node.root or "/"
    staging = f"{root.rstrip('/')}/.kconsole-restore-{run_id}"
    q_staging = shlex.quote(staging)
    staged = False
    expect = backup.manifest.plaintext_sha256 if backup.manifest else None
    expect_ct = backup.manifest.ciphertext_sha256 if backup.manifest else None
    problems: list[str] = []
    report: ArchiveReport | None = None
    replica = ""
    try:
        # Copies fastest first. A local copy is read once: hashed against its manifest,
        # decrypted, decompressed and checked as it streams into the node; a remote one is
        # downloaded and checked first. A copy found bad on the way (its hash, its
        # authentication, its archive) is reported, the staging directory emptied, and the
        # next copy streamed.
        for name, store in stores.items():
            if name not in backup.replicas:
                continue
            local: Path | None = None
            temporary = False
            pipe: ChunkPipe | None = None
            feeder: asyncio.Future[None] | None = None
            try:
                key = backup.replicas[name].key
                if isinstance(store, LocalStore):
                    local = store.path(key)
                elif store.streams and expect_ct:
                    # Read as it arrives, hashed with the rest of the stream: no local copy.
                    pipe = ChunkPipe()
                    feeder = asyncio.ensure_future(pipe.feed(store.chunks(key)))
                else:
                    await emit("stdout", f"fetching {backup.id} from {name}")
                    local, temporary = await checked_copy(site, backup, name, store, "fetch")
                staged = True
                prep = await transport.run(
                    node,
                    f"{sudo_p}rm -rf {q_staging} && {sudo_p}mkdir -p {q_staging}",
                    timeout=120,
                )
                if prep.exit_status != 0:
                    raise RestoreFailed(
                        f"cannot create the staging directory {staging} on {node.name}: "
                        f"{prep.stderr.decode('utf-8', 'replace').strip()}."
                    )
                # One pass: decrypt, decompress and check every member before its bytes go
                # on, into the staging directory; authentication, the plaintext SHA-256 and
                # the file's SHA-256 end with the stream, and only a stream that ended
                # cleanly is swapped in (the finally below removes the staging directory
                # otherwise).
                extract = f"{sudo_p}tar --no-same-owner -xf - -C {q_staging}"
                await emit("stdout", f"streaming into {node.name}:{staging} from {name}")
                walked: list[ArchiveReport] = []
                source: Path | Callable[[], BinaryIO]
                if pipe is not None:
                    source = pipe.as_file
                else:
                    assert local is not None
                    source = local
                result = await transport.stream_in(
                    node,
                    extract,
                    threaded_chunks(
                        functools.partial(
                            checked_tar_chunks,
                            source,
                            keyring,
                            backup.legacy,
                            paths,
                            backup.id,
                            expect,
                            walked,
                            ciphertext_sha256=expect_ct,
                        )
                    ),
                    timeout=0,
                )
                if result.exit_status != 0 or not walked:
                    err = result.stderr.decode("utf-8", "replace").strip().splitlines()
                    raise RestoreFailed(
                        f"extracting {backup.id} on {node.name} failed: "
                        f"{err[-1] if err else 'tar exit ' + str(result.exit_status)}."
                    )
                report, replica = walked[0], name
                break
            except RestoreFailed:
                raise  # the node's side failed: another copy would fail the same way
            except (OperationFailed, OSError) as exc:
                why = str(exc).rstrip(".")
                problems.append(f"{name}: {why}")
                await emit("stderr", f"replica in {name} unusable: {why}")
            finally:
                if pipe is not None:
                    pipe.stop()
                if feeder is not None:
                    feeder.cancel()
                    await asyncio.gather(feeder, return_exceptions=True)
                if temporary and local is not None:
                    local.unlink(missing_ok=True)
        if report is None:
            if not problems:
                raise OperationFailed(
                    f"{backup.id} has no copy in {', '.join(stores) or 'any location'}"
                    f" (its copies: {', '.join(sorted(backup.replicas)) or 'none'})."
                )
            raise OperationFailed(f"no good copy of {backup.id}: {'; '.join(problems)}.")
        await emit(
            "stdout",
            f"verified {backup.id} from {replica} as it streamed: {report.members} files, "
            f"key {report.key_id}",
        )
        script = swap_script(root, staging, paths)
        done = await transport.run(node, f"{sudo_p}sh -c {shlex.quote(script)}", timeout=300)
        staged = False  # the script removes the staging directory, whatever happens
        if done.exit_status != 0:
            raise OperationFailed(
                f"swapping the restored files into place on {node.name} failed: "
                f"{done.stderr.decode('utf-8', 'replace').strip()}; everything it had moved "
                "is back in place."
            )
        await emit(
            "stdout",
            f"restored {', '.join('/' + p for p in paths)} on {node.name}; previous state kept "
            f"as *{PRE_RESTORE}",
        )
        return RestoreReport(
            backup.id,
            node.name,
            replica,
            report.members,
            report.plaintext_size,
            report.key_id,
            paths,
        )
    finally:
        if staged:
            # Failed or cancelled between creating the staging directory and the swap: remove
            # it (bounded), so no `.kconsole-restore-*` is left on the node.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(
                    transport.run(node, f"{sudo_p}rm -rf {q_staging}", timeout=60), 90
                )
