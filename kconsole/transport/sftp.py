"""`SftpStore`: files on the DR backup host (or any node) over SFTP, on the transport's
pooled connections.

Every transfer lands under `NAME.partial` and is renamed into place only after its size
and SHA-256 check out, so a reader never sees half a backup under its real name.
asyncssh has had SFTP reads that silently came up short (ronf/asyncssh#814): nothing
here trusts a transfer it has not measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat as statmod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

import asyncssh

from kconsole.errors import OperationFailed
from kconsole.fsutil import fsync_dir
from kconsole.site import Node
from kconsole.transport.base import ConnectionLost
from kconsole.transport.ssh import SshTransport, node_from_spec

__all__ = ["SftpStore", "RemoteFile", "RemoteWriter", "Transferred", "Progress"]

Progress = Callable[[int, int], None]
"""`progress(done_bytes, total_bytes)`; for a put, the verification read counts in both."""

Verify = Literal["readback", "size"]
"""How a put is checked: read the remote file back and hash it, or only compare sizes."""

PIECE = 4 * 1024 * 1024
"""Bytes per read or write call; asyncssh splits each into parallel SFTP requests."""

PARTIAL = ".partial"


@dataclass(frozen=True)
class Transferred:
    """A verified transfer: where it landed, its size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class RemoteFile:
    """What `stat` tells about a remote path."""

    path: str
    size: int
    mtime: float
    is_dir: bool


class RemoteWriter:
    """A remote file being written; `write` as often as needed, inside `open_write`."""

    def __init__(self, handle: asyncssh.SFTPClientFile) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.size = 0
        """Bytes written so far."""
        self.result: Transferred | None = None
        """Set once the block has finished and the file is verified and in place."""

    async def write(self, data: bytes) -> None:
        """Append `data` (buffered to whole pieces, so each write is a parallel batch)."""
        if not data:
            return
        self._hash.update(data)
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        if self._pending_size >= PIECE:
            await self.flush()

    async def flush(self) -> None:
        """Send what is buffered."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        await self._handle.write(data, self.size)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        """SHA-256 of everything written."""
        return self._hash.hexdigest()


class SftpStore:
    """put / get / list / stat / remove / stream-write on remote hosts over SFTP."""

    def __init__(self, transport: SshTransport) -> None:
        self.transport = transport

    def target(self, node_or_host: Node | str) -> Node:
        """A node: given, named in the site, or `[user@]host[:port]`."""
        if isinstance(node_or_host, Node):
            return node_or_host
        known = self.transport.site.nodes.get(node_or_host)
        return known if known is not None else node_from_spec(node_or_host)

    # -- sessions ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(self, node_or_host: Node | str) -> AsyncIterator[asyncssh.SFTPClient]:
        """An SFTP session on the pooled connection (one channel while inside)."""
        node = self.target(node_or_host)
        async with self.transport.connection(node) as conn:
            try:
                sftp = await conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                if not conn.is_closed():
                    raise OperationFailed(f"{node.name} refused an SFTP session ({exc}).") from None
                # A stale pooled connection: nothing was sent yet, so reconnect once.
                self.transport.forget(node, conn)
                sftp = await self._retry_start(node)
            try:
                yield sftp
            except (asyncssh.ConnectionLost, ConnectionResetError, BrokenPipeError) as exc:
                self.transport.forget(node, conn)
                raise ConnectionLost(
                    node.name, "the node or the network closed it unexpectedly"
                ) from exc
            finally:
                sftp.exit()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sftp.wait_closed(), 5)

    async def _retry_start(self, node: Node) -> asyncssh.SFTPClient:
        async with self.transport.connection(node) as conn:
            try:
                return await conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                raise ConnectionLost(
                    node.name, f"no SFTP session could be opened ({exc})"
                ) from None

    # -- simple operations ------------------------------------------------------------

    async def listdir(self, node_or_host: Node | str, path: str) -> list[str]:
        """The names in the remote directory `path`, sorted, without `.` and `..`."""
        node = self.target(node_or_host)
        async with self.session(node) as sftp:
            with _failure(node, f"listing {path}"):
                names = await sftp.listdir(path)
        return sorted(str(n) for n in names if n not in (".", ".."))

    async def stat(self, node_or_host: Node | str, path: str) -> RemoteFile | None:
        """Size, mtime and kind of `path`, or None if it does not exist."""
        node = self.target(node_or_host)
        async with self.session(node) as sftp:
            try:
                attrs = await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None
            except asyncssh.SFTPError as exc:
                raise OperationFailed(
                    f"stat of {path} on {node.name} failed: {exc.reason}."
                ) from None
        return RemoteFile(
            path=path,
            size=attrs.size or 0,
            mtime=float(attrs.mtime or 0),
            is_dir=statmod.S_ISDIR(attrs.permissions or 0),
        )

    async def remove(
        self, node_or_host: Node | str, path: str, *, missing_ok: bool = False
    ) -> None:
        """Delete the remote file `path`."""
        node = self.target(node_or_host)
        async with self.session(node) as sftp:
            try:
                await sftp.remove(path)
            except asyncssh.SFTPNoSuchFile:
                if not missing_ok:
                    raise OperationFailed(f"{path} does not exist on {node.name}.") from None
            except asyncssh.SFTPError as exc:
                raise OperationFailed(
                    f"removing {path} on {node.name} failed: {exc.reason}."
                ) from None

    async def sha256(self, node_or_host: Node | str, path: str) -> Transferred:
        """Read `path` back and return its size and SHA-256."""
        node = self.target(node_or_host)
        async with self.session(node) as sftp:
            size, digest = await _read_hash(node, sftp, path, None, 0, 0)
        return Transferred(path, size, digest)

    # -- transfers --------------------------------------------------------------------

    async def put(
        self,
        node_or_host: Node | str,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        progress: Progress | None = None,
        verify: Verify = "readback",
        mode: int | None = 0o600,
    ) -> Transferred:
        """Upload `local_path` to `remote_path`, verified, then renamed into place.

        The remote file gets `mode` (None leaves the server's default) before it is renamed.
        """
        node = self.target(node_or_host)
        local = Path(local_path)
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise OperationFailed(f"cannot read {local}: {exc.strerror}.") from None
        total = size * (2 if verify == "readback" else 1)
        partial = remote_path + PARTIAL
        local_digest = asyncio.ensure_future(asyncio.to_thread(_hash_file, local))

        def on_progress(_src: bytes, _dst: bytes, done: int, _total: int) -> None:
            if progress is not None:
                progress(done, total)

        try:
            async with self.session(node) as sftp:
                try:
                    with _failure(node, f"uploading {local} to {partial}"):
                        await sftp.put(str(local), partial, progress_handler=on_progress)
                    await _set_mode(sftp, partial, mode)
                    sent_size, expected = await local_digest
                    if sent_size != size:
                        raise OperationFailed(f"{local} changed size while it was being uploaded.")
                    with _failure(node, f"stat of {partial}"):
                        landed = (await sftp.stat(partial)).size
                    if landed != size:
                        raise OperationFailed(
                            f"upload of {local} to {node.name} is incomplete: "
                            f"{landed} of {size} bytes arrived."
                        )
                    if verify == "readback":
                        _, actual = await _read_hash(node, sftp, partial, progress, size, total)
                        if actual != expected:
                            raise OperationFailed(
                                f"upload of {local} to {node.name} is corrupt: {remote_path} reads "
                                f"back with SHA-256 {actual}, the local file has {expected}."
                            )
                    await _rename_into_place(node, sftp, partial, remote_path)
                except BaseException:
                    await _discard(sftp, partial)
                    raise
        finally:
            if not local_digest.done():
                local_digest.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await local_digest
        return Transferred(remote_path, size, expected)

    async def get(
        self,
        node_or_host: Node | str,
        remote_path: str,
        local_path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        expected_sha256: str | None = None,
    ) -> Transferred:
        """Download `remote_path` to `local_path` (mode 0600), verified, then renamed into place.

        The bytes are hashed as they arrive, counted against the remote size, and the
        local file is read back and must hash the same; `expected_sha256` (from a
        manifest) is checked too when given.
        """
        node = self.target(node_or_host)
        local = Path(local_path)
        partial = local.with_name(local.name + PARTIAL)
        local.parent.mkdir(parents=True, exist_ok=True)
        async with self.session(node) as sftp:
            with _failure(node, f"stat of {remote_path}"):
                size = (await sftp.stat(remote_path)).size or 0
            digest = hashlib.sha256()
            received = 0
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    with _failure(node, f"reading {remote_path}"):
                        async with sftp.open(remote_path, "rb") as remote:
                            while data := cast(bytes, await remote.read(PIECE, received)):
                                digest.update(data)
                                await asyncio.to_thread(out.write, data)
                                received += len(data)
                                if progress is not None:
                                    progress(received, size)
                    await asyncio.to_thread(_flush_and_sync, out)
                got = digest.hexdigest()
                if received != size:
                    raise OperationFailed(
                        f"download of {remote_path} from {node.name} is incomplete: "
                        f"{received} of {size} bytes arrived."
                    )
                if expected_sha256 is not None and got != expected_sha256.lower():
                    raise OperationFailed(
                        f"{remote_path} on {node.name} has SHA-256 {got}, expected {expected_sha256}."
                    )
                on_disk_size, on_disk = await asyncio.to_thread(_hash_file, partial)
                if (on_disk_size, on_disk) != (received, got):
                    raise OperationFailed(
                        f"{partial} does not read back as written; check the local disk."
                    )
                os.replace(partial, local)
                fsync_dir(local.parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
        return Transferred(str(local), received, got)

    @contextlib.asynccontextmanager
    async def open_write(
        self,
        node_or_host: Node | str,
        remote_path: str,
        *,
        verify: Verify = "readback",
        mode: int | None = 0o600,
    ) -> AsyncIterator[RemoteWriter]:
        """Stream into `remote_path`: write to the yielded writer inside the block.

        When the block ends normally the file is measured (and read back), then renamed
        into place and `writer.result` is set; if it raises, the partial file is removed.
        The file is created with `mode` (None leaves the server's default).
        """
        node = self.target(node_or_host)
        partial = remote_path + PARTIAL
        async with self.session(node) as sftp:
            with _failure(node, f"creating {partial}"):
                handle = await sftp.open(partial, "wb", attrs=asyncssh.SFTPAttrs(permissions=mode))
            writer = RemoteWriter(handle)
            try:
                try:
                    yield writer
                    with _failure(node, f"writing {partial}"):
                        await writer.flush()
                        with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                            await handle.fsync()
                finally:
                    with contextlib.suppress(asyncssh.Error, OSError):
                        await handle.close()
                with _failure(node, f"stat of {partial}"):
                    landed = (await sftp.stat(partial)).size
                if landed != writer.size:
                    raise OperationFailed(
                        f"stream to {remote_path} on {node.name} is incomplete: "
                        f"{landed} of {writer.size} bytes arrived."
                    )
                if verify == "readback":
                    _, actual = await _read_hash(node, sftp, partial, None, 0, 0)
                    if actual != writer.sha256:
                        raise OperationFailed(
                            f"stream to {remote_path} on {node.name} is corrupt: it reads back with "
                            f"SHA-256 {actual}, {writer.sha256} was sent."
                        )
                await _rename_into_place(node, sftp, partial, remote_path)
                writer.result = Transferred(remote_path, writer.size, writer.sha256)
            except BaseException:
                await _discard(sftp, partial)
                raise


@contextlib.contextmanager
def _failure(node: Node, what: str) -> Iterator[None]:
    """Turn an SFTP error into one sentence naming the node and what was being done."""
    try:
        yield
    except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection):
        raise ConnectionLost(node.name, f"while {what}") from None
    except asyncssh.SFTPError as exc:
        raise OperationFailed(f"{what} on {node.name} failed: {exc.reason}.") from None


async def _read_hash(
    node: Node,
    sftp: asyncssh.SFTPClient,
    path: str,
    progress: Progress | None,
    base: int,
    total: int,
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with _failure(node, f"reading back {path}"):
        async with sftp.open(path, "rb") as fh:
            while data := cast(bytes, await fh.read(PIECE, size)):
                digest.update(data)
                size += len(data)
                if progress is not None:
                    progress(base + size, total)
            with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                await fh.fsync()
    return size, digest.hexdigest()


async def _set_mode(sftp: asyncssh.SFTPClient, path: str, mode: int | None) -> None:
    # Some SFTP servers (object-store gateways) have no modes; the data is encrypted anyway.
    if mode is not None:
        with contextlib.suppress(asyncssh.SFTPOpUnsupported, asyncssh.SFTPPermissionDenied):
            await sftp.chmod(path, mode)


async def _rename_into_place(
    node: Node, sftp: asyncssh.SFTPClient, partial: str, final: str
) -> None:
    with _failure(node, f"renaming {partial} to {final}"):
        try:
            await sftp.posix_rename(partial, final)
        except asyncssh.SFTPOpUnsupported:
            # Plain SFTP rename refuses to replace: make room first.
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(final)
            await sftp.rename(partial, final)


async def _discard(sftp: asyncssh.SFTPClient, path: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sftp.remove(path), 10)


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while data := fh.read(1024 * 1024):
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


def _flush_and_sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())
