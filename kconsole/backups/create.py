"""`backup.create`: remote tar streamed over SSH, encrypted on the fly, stored in every
location with a manifest. No plaintext ever touches a disk.

The ciphertext is staged once (in the primary local location, or the state directory) and,
as it is produced, streamed to the DR host and the bucket (`kconsole.backups.uploads`): one
pass over the data, memory bounded. When the capture ends the staged file is verified by a
full authenticated decrypt and archive walk while the copies are completed and checked where
they lie (size and SHA-256: `sha256sum` on the host, S3's checksums of the parts sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kconsole import __version__
from kconsole.backups.archive import verify_file
from kconsole.backups.manifest import (
    Manifest,
    backup_id,
    iso,
    object_key,
    path_allowed,
    sign_manifest,
)
from kconsole.backups.stores import LocalStore, Store
from kconsole.backups.uploads import Upload, open_upload
from kconsole.crypto import Encryptor, Key
from kconsole.errors import OperationFailed
from kconsole.fsutil import fsync_dir
from kconsole.health import HealthReader
from kconsole.site import Node, Site

Emit = Callable[[str, str], Awaitable[None]]


@dataclass
class CreateRequest:
    """What to back up and where."""

    node: Node
    kind: str
    paths: list[str]
    command: str = ""
    sudo: bool = True
    run_id: str = ""
    consistent: bool = False


async def chain_height(node: Node, health: HealthReader | None = None) -> int | None:
    """The node's chain height from its health URL, if it says (through the run's reader)."""
    if not node.health_url:
        return None
    reader = health or HealthReader()
    try:
        return (await reader.read(node.health_url, 5.0)).height
    finally:
        if health is None:
            await reader.close()


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
"""The first bytes of a zstd frame: how a capture's codec is told from its data."""

ZSTD_LEVEL = 1
"""zstd -1: several times faster than gzip -6 on chain state, and about as small."""


def capture_command(req: CreateRequest) -> str:
    """The remote command whose stdout is the backup: a tar compressed with zstd where the
    node has it (multi-threaded, level ZSTD_LEVEL), else with gzip as the plan's script does.
    The codec is told from the stream's first bytes and recorded in the manifest."""
    sudo = "sudo -n " if req.sudo else ""
    if req.command:
        return f"{sudo}{req.command}"
    rels = [shlex.quote(p.strip("/")) for p in req.paths]
    tar = f"{sudo}tar -C {shlex.quote(req.node.root or '/')}"
    files = f"-- {' '.join(rels)}"
    zstd = shlex.quote(f"zstd -{ZSTD_LEVEL} -T0 -q")
    return (
        f"if command -v zstd >/dev/null 2>&1; then {tar} -I {zstd} -cf - {files}; "
        f"else {tar} -czf - {files}; fi"
    )


async def _service(transport: Any, req: CreateRequest, verb: str, emit: Emit) -> None:
    sudo = "sudo -n " if req.sudo else ""
    res = await transport.run(
        req.node, f"{sudo}systemctl {verb} {shlex.quote(req.node.service)}", timeout=120
    )
    if res.exit_status != 0:
        raise OperationFailed(
            f"could not {verb} {req.node.service} on {req.node.name} for a consistent backup."
        )
    await emit(
        "stdout",
        f"{req.node.service} {'stopped' if verb == 'stop' else 'started'} on {req.node.name}",
    )


def check_request(req: CreateRequest) -> None:
    """Refuse paths a backup of this kind may not hold: verification refuses a manifest naming
    them (a restore would write there), so such a backup could never be restored."""
    for p in req.paths:
        why = path_allowed(req.kind, p)
        if why is not None:
            raise OperationFailed(f"cannot back up {why}.")


def _staging(site: Site, stores: dict[str, Store], key: str) -> tuple[Path, LocalStore | None]:
    for store in stores.values():
        if isinstance(store, LocalStore):
            return store.path(key), store
    return site.state_dir / "staging" / Path(key).name, None


class Tee:
    """The ciphertext, in blocks of BLOCK bytes, to every streaming upload at once: one task
    per location, each with at most DEPTH blocks queued, so a slow location slows the capture
    instead of filling memory. A location that fails stops receiving; `failed` says which."""

    BLOCK = 4 << 20
    DEPTH = 4

    def __init__(self, uploads: dict[str, Upload]) -> None:
        self.uploads = uploads
        self.failed: dict[str, str] = {}
        self._buffer = bytearray()
        self._queues: dict[str, asyncio.Queue[bytes | None]] = {
            n: asyncio.Queue(self.DEPTH) for n in uploads
        }
        self._tasks = [asyncio.ensure_future(self._pump(n)) for n in uploads]

    async def _pump(self, name: str) -> None:
        queue, upload = self._queues[name], self.uploads[name]
        while (block := await queue.get()) is not None:
            if name in self.failed:
                continue  # drained, so the capture never waits on a failed location
            try:
                await upload.write(block)
            except Exception as exc:  # noqa: BLE001 - any failure: the location is out
                # Whatever went wrong, this location stops taking blocks (its queue is
                # drained from here on), so the capture can never wait on it forever.
                self.failed[name] = _reason(exc)

    async def write(self, data: bytes) -> None:
        """Queue `data` for every location still taking it."""
        if not self.uploads:
            return
        self._buffer += data
        if len(self._buffer) >= self.BLOCK:
            await self._flush()

    async def _flush(self) -> None:
        block, self._buffer = bytes(self._buffer), bytearray()
        for name, queue in self._queues.items():
            if name not in self.failed:
                await queue.put(block)

    async def close(self) -> None:
        """Deliver what is buffered and wait until every location has taken it all."""
        if self._buffer:
            await self._flush()
        for queue in self._queues.values():
            await queue.put(None)
        await asyncio.gather(*self._tasks)

    async def abort(self) -> None:
        """Stop every location (nothing stays under its final name)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(u.abort() for u in self.uploads.values()))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).rstrip(".")
    if isinstance(exc, OperationFailed):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def create_backup(
    site: Site,
    req: CreateRequest,
    *,
    transport: Any,
    stores: dict[str, Store],
    key: Key,
    emit: Emit,
    health: HealthReader | None = None,
) -> Manifest:
    """Make one backup; returns its manifest once every location holds a verified copy."""
    if not stores:
        raise OperationFailed("the site has no [locations]; there is nowhere to store a backup.")
    check_request(req)
    created = datetime.now(UTC).replace(microsecond=0)
    bid = backup_id(req.node.name, req.kind, created)
    okey = object_key(req.kind, req.node.name, bid)
    final, primary = _staging(site, stores, okey)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    height = await chain_height(req.node, health)
    command = capture_command(req)
    await emit(
        "stdout", f"capturing {', '.join(req.paths) or req.command} from {req.node.name} as {bid}"
    )
    encryptor = Encryptor(key)
    gzipper = zlib.compressobj(6, zlib.DEFLATED, 31) if req.command else None
    t0 = time.monotonic()
    received = 0
    head = b""
    next_report = 64 << 20
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise OperationFailed(
            f"cannot stage the backup in {final.parent}: {exc.strerror}."
        ) from None
    out = os.fdopen(fd, "wb")
    # Every other location that can take the ciphertext as it comes does (SFTP, S3); the rest
    # get a copy of the staged file once it is complete.
    uploads: dict[str, Upload] = {}
    for name, store in stores.items():
        if store is not primary and (up := open_upload(store, okey)) is not None:
            uploads[name] = up
    tee = Tee(uploads)
    placed: dict[str, dict[str, Any]] = {}
    try:
        try:

            async def sink(data: bytes) -> None:
                nonlocal received, next_report, head
                if len(head) < len(ZSTD_MAGIC):
                    head += data[: len(ZSTD_MAGIC) - len(head)]
                received += len(data)
                if gzipper is not None:
                    data = gzipper.compress(data)
                sealed = encryptor.update(data)
                out.write(sealed)
                await tee.write(sealed)
                if tee.failed:
                    # One location refusing the copy fails the backup: stop capturing now
                    # rather than at the end of a long capture.
                    raise OperationFailed(_not_everywhere(bid, tee.failed))
                if received >= next_report:
                    next_report += 64 << 20
                    await emit("stdout", f"{received >> 20} MiB captured")

            if req.consistent:
                await _service(transport, req, "stop", emit)
            try:
                # No transport limit: a big capture runs as long as it needs; the step's own
                # timeout (cancellation) still stops it and the remote command with it.
                result = await transport.capture(req.node, command, sink, timeout=0)
            finally:
                if req.consistent:
                    await _service(transport, req, "start", emit)
            stderr = result.stderr.decode("utf-8", "replace").strip()
            if result.exit_status == 1 and not req.command:
                await emit(
                    "stderr",
                    "tar: files changed while they were read; this copy may be inconsistent "
                    "(stop the service first for a consistent one)",
                )
            elif result.exit_status != 0:
                last = stderr.splitlines()[-1] if stderr else f"exit {result.exit_status}"
                raise OperationFailed(f"capturing the backup on {req.node.name} failed: {last}.")
            if received == 0:
                raise OperationFailed(f"the capture on {req.node.name} produced no data.")
            if gzipper is not None:
                sealed = encryptor.update(gzipper.flush())
                out.write(sealed)
                await tee.write(sealed)
            sealed = encryptor.finalize()
            out.write(sealed)
            await tee.write(sealed)
            out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
            out.close()
            await tee.close()
            if tee.failed:
                raise OperationFailed(_not_everywhere(bid, tee.failed))
        except OSError as exc:
            raise OperationFailed(
                f"writing the backup to {final.parent} failed: {exc.strerror}."
            ) from None
        finally:
            if not out.closed:
                out.close()
        enc = encryptor.result
        assert enc is not None
        await emit(
            "stdout",
            f"captured {received >> 20} MiB in {time.monotonic() - t0:.1f}s; "
            f"{enc.ciphertext_size} bytes encrypted",
        )
        prefixes = [] if req.command else [p.strip("/") for p in req.paths]

        async def content() -> None:
            if not req.command:
                report = await asyncio.to_thread(verify_file, partial, key, False, prefixes, bid)
                await emit(
                    "stdout",
                    f"verified: {report.members} files, {enc.ciphertext_size} bytes encrypted",
                )

        errors: dict[str, str] = {}

        async def complete(name: str, store: Store) -> None:
            try:
                if name in uploads:
                    placed[name] = await uploads[name].finish(
                        partial, enc.ciphertext_sha256, enc.ciphertext_size
                    )
                elif store is not primary:
                    await store.put_file(partial, okey, enc.ciphertext_sha256)
                    placed[name] = {}
            except (OperationFailed, OSError) as exc:
                errors[name] = _reason(exc)

        # The content check of the staged file runs while the copies are completed.
        await asyncio.gather(content(), *(complete(n, s) for n, s in stores.items()))
        if errors:
            raise OperationFailed(_not_everywhere(bid, errors))
        copies = {n: info for n, info in placed.items() if info}
        manifest = Manifest(
            id=bid,
            kind=req.kind,
            node=req.node.name,
            created=iso(created),
            paths=list(req.paths),
            key_id=enc.key_id,
            ciphertext_size=enc.ciphertext_size,
            ciphertext_sha256=enc.ciphertext_sha256,
            plaintext_size=enc.plaintext_size,
            plaintext_sha256=enc.plaintext_sha256,
            content="stream" if req.command else "tar",
            compression="zstd" if head == ZSTD_MAGIC else "gzip",
            chain_height=height,
            run=req.run_id,
            duration_s=round(time.monotonic() - t0, 3),
            tool=f"kconsole {__version__}",
            extra=({"command": req.command} if req.command else {})
            | ({"copies": copies} if copies else {}),
        )
        manifest = sign_manifest(manifest, key.master)
        placed_now, placed = set(placed), {}  # store_backup owns them from here
        await store_backup(manifest, partial, stores, primary, emit, placed=placed_now)
        if not req.command:
            # The content was verified as written (authenticated decrypt and tar walk above)
            # and every copy was checked by size and SHA-256: a verify step need not decrypt
            # it again (`content = "once"`).
            from kconsole.backups.catalog import record_verification

            record_verification(site, bid, True, content_sha256=enc.ciphertext_sha256)
        return manifest
    except BaseException:
        await _abandon(tee, placed, okey, stores, emit)
        raise
    finally:
        # The staged file (a `.partial` name, never listed) goes whatever happened; the
        # primary's copy is a hard link to it, made just before its manifest is written.
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _not_everywhere(bid: str, errors: dict[str, str]) -> str:
    problems = "; ".join(f"{n}: {why}" for n, why in errors.items())
    return f"backup {bid} is not in every location: {problems}."


async def _abandon(
    tee: Tee, placed: dict[str, dict[str, Any]], okey: str, stores: dict[str, Store], emit: Emit
) -> None:
    """After a failure before the manifests: stop the streams and delete the copies already
    complete (bounded; what cannot be deleted is left for the catalog to report)."""
    with contextlib.suppress(Exception):
        await tee.abort()
    await _remove_copies([okey], {n: stores[n] for n in placed}, emit)


CLEANUP_TIMEOUT_S = 30.0
"""How long removing a failed backup's copy from one location may take."""


async def store_backup(
    manifest: Manifest,
    staged: Path,
    stores: dict[str, Store],
    primary: LocalStore | None,
    emit: Emit,
    placed: set[str] | None = None,
) -> None:
    """Put the verified ciphertext `staged` and its manifest in every location (the object is
    already in the locations in `placed`: only its manifest is written there).

    A copy appears under its final name only with its manifest: the primary's is linked into
    place just before its manifest is written, and wherever the manifest could not be written
    (an error, a timeout, the step cancelled) the object and any manifest are deleted again,
    bounded in time. What cannot be deleted then (the location is down) stays as an orphan,
    which the catalog reports and `backup.prune` removes.
    """
    okey, mkey = manifest.object_key(), manifest.manifest_key()
    sha = manifest.ciphertext_sha256
    errors: list[str] = []
    complete: set[str] = set()

    async def replicate(name: str, store: Store) -> None:
        try:
            if name in (placed or ()):
                pass
            elif store is primary:
                final = primary.path(okey)
                final.unlink(missing_ok=True)
                os.link(staged, final)
                fsync_dir(final.parent)
            else:
                await store.put_file(staged, okey, sha)
            await store.write_bytes(mkey, manifest.to_json())
            complete.add(name)
            await emit("stdout", f"stored in {name}: {store.describe(okey)}")
        except OperationFailed as exc:
            errors.append(f"{name}: {str(exc).rstrip('.')}")
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror or exc}")

    try:
        await asyncio.gather(*(replicate(n, s) for n, s in stores.items()))
    finally:
        left = {n: s for n, s in stores.items() if n not in complete}
        if left:
            await _remove_copies([okey, mkey], left, emit)
    if errors:
        raise OperationFailed(
            f"backup {manifest.id} is not in every location: {'; '.join(errors)}."
        )


async def _remove_copies(keys: list[str], stores: dict[str, Store], emit: Emit) -> None:
    """Delete `keys` in order (the object, then its manifest) from locations where a backup
    did not complete; each bounded, failures reported (the catalog will list what stays as
    orphans)."""

    async def one(name: str, store: Store) -> None:
        for key in keys:
            try:
                await asyncio.wait_for(store.delete(key), CLEANUP_TIMEOUT_S)
            except (OperationFailed, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await emit(
                        "stderr",
                        f"could not remove the incomplete copy {store.describe(key)} "
                        f"({str(exc).rstrip('.') or 'no answer'}); the catalog lists it as an "
                        "orphan and backup.prune removes it",
                    )
                return

    await asyncio.gather(*(one(n, s) for n, s in stores.items()))
