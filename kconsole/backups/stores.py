"""The places backups are kept: a local directory, an SFTP host, an S3 bucket.

All three speak one small async interface (`Store`) so create, restore, verify, prune
and the catalog never care which is which. Every upload and download is checked by size
and SHA-256; nothing appears under its final name before it is complete.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import configparser
import contextlib
import hashlib
import os
import posixpath
import shlex
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kconsole.backups.manifest import OBJECT_SUFFIX, parse_id
from kconsole.config import format_duration
from kconsole.errors import OperationFailed, UsageError
from kconsole.fsutil import atomic_write, fsync_dir
from kconsole.site import Location, Site

Progress = Callable[[int, int], None]
PIECE = 1 << 20
SMALL_READ = 1 << 16
STREAM_PIECE = 4 << 20
"""Bytes per read when a remote copy is streamed (restore)."""
S3_MULTIPART = 64 << 20
"""Objects from this size up go to S3 in parts (boto3's multipart threshold as kconsole sets it)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored file (slots: a listing makes one per file, 200,000 for a large catalog)."""

    key: str
    size: int
    mtime: float


def safe_key(key: str) -> str:
    """A relative key with no `..`; UsageError otherwise (keys come from manifests and users)."""
    norm = posixpath.normpath(key.lstrip("/"))
    if norm.startswith("..") or norm in (".", "") or "\x00" in norm:
        raise UsageError(f"backup path {key!r} is not inside its location.")
    return norm


async def bounded_call(fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a daemon thread, awaited for at most `timeout` seconds
    (TimeoutError after that). Unlike `asyncio.to_thread`, a call that never answers (a slow
    or hung endpoint) cannot hold up the process at exit: nothing waits for the thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if done.done():
            return  # given up on already
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def work() -> None:
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting task
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="kconsole-store-call", daemon=True).start()
    return await asyncio.wait_for(done, timeout)


def transfer_timeout(size: int, floor: float, rate: float) -> float:
    """Seconds to allow for moving `size` bytes: `floor`, plus the size at the slowest `rate`
    (bytes/s) a location is still considered working at."""
    return floor + size / rate


def hash_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a local file, streamed."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(PIECE):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def s3_part_size(size: int) -> int:
    """The part size kconsole uploads `size` bytes to S3 with (0: one part): at least 64 MiB,
    and big enough to stay under S3's 10,000-part limit."""
    return 0 if size < S3_MULTIPART else max(S3_MULTIPART, -(-size // 9000))


def s3_sha256(path: Path, part: int) -> str:
    """The SHA-256 checksum S3 reports for `path` uploaded in parts of `part` bytes (0: one
    part): base64 of the SHA-256, or for multipart the composite, base64 of the SHA-256 of
    the parts' SHA-256s followed by "-" and the number of parts."""
    if not part:
        return base64.b64encode(bytes.fromhex(hash_file(path)[1])).decode()
    digests = []
    with path.open("rb") as fh:
        while data := fh.read(part):
            digests.append(hashlib.sha256(data).digest())
    return s3_composite(digests)


def s3_composite(digests: Sequence[bytes]) -> str:
    """S3's composite SHA-256 checksum of a multipart object from its parts' SHA-256 digests,
    in part order: base64 of the SHA-256 of the digests, "-", the number of parts."""
    combined = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    return f"{combined}-{len(digests)}"


def read_small_file(path: str) -> bytes:
    """The whole of a small local file (a manifest), read straight from its descriptor.

    For a file of a few hundred bytes, the buffered file object `open()` builds costs more
    than the read, and so does a 1 MiB read buffer, which malloc maps and unmaps afresh for
    every file in a worker thread; 64 KiB reads cost neither (measured: bench/bench_catalog.py).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, SMALL_READ):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


PARTIAL_UPLOAD = ".partial"
"""How an unfinished S3 multipart upload of KEY is listed: `KEY.partial`, a staging name."""

STAGING_SUFFIXES = (".partial", ".tmp")
"""Name endings of files being written: `NAME.partial` (object copies, SFTP transfers) and
`.NAME.XXXX.tmp` (`kconsole.fsutil.atomic_write`). A listing includes them so that one left
by a killed process can be found; nothing reads them as backups."""


def is_staging_name(name: str) -> bool:
    """Whether a file's base name is a staging name (see STAGING_SUFFIXES)."""
    return name.endswith(".partial") or (name.startswith(".") and name.endswith(".tmp"))


def _list_dir(path: str, rel: str, files: list[ObjectInfo], subdirs: list[tuple[str, str]]) -> None:
    """Add the files of one local directory (keys under `rel`) to `files` and its
    subdirectories to `subdirs`. Hidden files are left out, except the staging names an
    interrupted write leaves behind (`is_staging_name`), which the catalog reports as orphans.

    The directory is scanned through a descriptor, so each file's stat looks up one name
    rather than its whole path (measured: bench/bench_catalog.py).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        for e in list(os.scandir(fd)):
            name = e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append((os.path.join(path, name), rel + name + "/"))
                elif not name.startswith(".") or is_staging_name(name):
                    st = e.stat()
                    files.append(ObjectInfo(rel + name, st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue
    finally:
        os.close(fd)


class Store:
    """Interface of a backup location."""

    location: Location

    def describe(self, key: str) -> str:
        """Where `key` is, as an operator would write it."""
        raise NotImplementedError

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under `prefix`, recursively."""
        raise NotImplementedError

    async def read_bytes(self, key: str) -> bytes:
        """A small object (a manifest) whole."""
        raise NotImplementedError

    async def read_many(self, keys: Sequence[str], limit: int = 16) -> dict[str, bytes | None]:
        """Many small objects (manifests): key -> bytes, or None for one that cannot be read."""
        sem = asyncio.Semaphore(limit)

        async def one(key: str) -> tuple[str, bytes | None]:
            async with sem:
                try:
                    return key, await self.read_bytes(key)
                except (OperationFailed, OSError):
                    return key, None

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def write_bytes(self, key: str, data: bytes) -> None:
        """A small object, atomically."""
        raise NotImplementedError

    async def put_file(
        self, local: Path, key: str, sha256: str, progress: Progress | None = None
    ) -> None:
        """Upload `local` as `key`; fail unless it landed whole with this SHA-256."""
        raise NotImplementedError

    async def get_file(
        self, key: str, local: Path, sha256: str | None = None, progress: Progress | None = None
    ) -> None:
        """Download `key` to `local` (0600); fail unless it matches `sha256` when given."""
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        """Remove `key` (S3 with versioning keeps older versions)."""
        raise NotImplementedError

    streams = False
    """Whether `chunks` reads a copy as it arrives (a remote location)."""

    def chunks(self, key: str) -> AsyncIterator[bytes]:
        """The bytes of `key` in order, as they arrive, each read bounded in time (only where
        `streams`); nothing is checked here: the reader hashes them against the manifest."""
        raise NotImplementedError

    async def check_at_rest(
        self, key: str, sha256: str, size: int, recorded: dict[str, Any] | None = None
    ) -> str | None:
        """Check the copy of `key` against `sha256` and `size` where it lies, without moving
        its bytes here: how it was checked, or None when this location cannot (the caller
        reads the copy back instead). `recorded` is what the manifest recorded about this
        copy when it was written (an S3 composite checksum). A copy that was checked and does
        not match raises OperationFailed."""
        return None

    async def close(self) -> None:
        """Release connections."""


class LocalStore(Store):
    """A directory on the console's machine (the plan's primary location)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.root = Path(location.path)
        self._root_text = str(self.root)
        self._prefix = os.path.join(self._root_text, "")
        """The root with a trailing separator: a key's file is one concatenation away."""

    def path(self, key: str) -> Path:
        """The file of `key`."""
        return self.root / safe_key(key)

    def _file(self, key: str) -> str:
        """The file of `key` as a string: the catalog describes every replica and reads every
        new manifest, and a Path costs 10x more than this, os.path.join twice as much."""
        return self._prefix + safe_key(key)

    def describe(self, key: str) -> str:
        return self._file(key)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            rel0 = safe_key(prefix) + "/" if prefix else ""
            out: list[ObjectInfo] = []
            # scandir and string keys: a catalog of 100,000 backups is 200,000 files here.
            stack = [(os.path.join(self._root_text, rel0), rel0)]
            while stack:
                path, rel = stack.pop()
                _list_dir(path, rel, out, stack)
            return out

        return await asyncio.to_thread(walk)

    async def read_bytes(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except OSError as exc:
            raise OperationFailed(f"cannot read {self.describe(key)}: {exc.strerror}.") from None

    async def read_many(self, keys: Sequence[str], limit: int = 1) -> dict[str, bytes | None]:
        # One thread reading in turn: a thread hop per file costs more than reading a manifest,
        # and several threads only fight over the GIL (measured: bench/bench_catalog.py).
        def read() -> dict[str, bytes | None]:
            out: dict[str, bytes | None] = {}
            for key in keys:
                try:
                    out[key] = read_small_file(self._file(key))
                except (OSError, UsageError):
                    out[key] = None
            return out

        return await asyncio.to_thread(read)

    async def write_bytes(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(atomic_write, self.path(key), data, 0o600)
        except OSError as exc:
            raise OperationFailed(f"cannot write {self.describe(key)}: {exc.strerror}.") from None

    async def put_file(
        self, local: Path, key: str, sha256: str, progress: Progress | None = None
    ) -> None:
        dest = self.path(key)

        def copy() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            digest = hashlib.sha256()
            total = local.stat().st_size
            done = 0
            try:
                with local.open("rb") as src, open(partial, "wb") as out:
                    os.fchmod(out.fileno(), 0o600)
                    while chunk := src.read(PIECE):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                    out.flush()
                    os.fsync(out.fileno())
                if digest.hexdigest() != sha256:
                    raise OperationFailed(f"{local} changed while it was copied to {dest}.")
                os.replace(partial, dest)
                fsync_dir(dest.parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise

        if local.resolve() == dest.resolve():
            return
        try:
            await asyncio.to_thread(copy)
        except OSError as exc:
            raise OperationFailed(f"cannot write {dest}: {exc.strerror}.") from None

    async def get_file(
        self, key: str, local: Path, sha256: str | None = None, progress: Progress | None = None
    ) -> None:
        src = self.path(key)

        def copy() -> None:
            partial = local.with_name(local.name + ".partial")
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(src, partial)
                os.chmod(partial, 0o600)
                _, got = hash_file(partial)
                if sha256 and got != sha256:
                    raise OperationFailed(
                        f"{src} has SHA-256 {got}, its manifest says {sha256}: the object is corrupt."
                    )
                os.replace(partial, local)
            except BaseException:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise

        try:
            await asyncio.to_thread(copy)
        except FileNotFoundError:
            raise OperationFailed(f"{src} does not exist.") from None
        except OSError as exc:
            raise OperationFailed(f"cannot copy {src}: {exc.strerror}.") from None

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(key).unlink)


class SftpLocationStore(Store):
    """A directory on a host reached over SFTP (the plan's DR site)."""

    call_timeout = 60.0
    """Seconds a write may take on top of its size at `min_rate` (the same bound as S3)."""
    min_rate = float(1 << 20)

    def __init__(self, location: Location, site: Site, transport: Any) -> None:
        from kconsole.transport.sftp import SftpStore

        self.location = location
        self.sftp = SftpStore(transport)
        if location.node:
            self.target: Any = site.node(location.node)
        else:
            spec = location.host if location.port == 22 else f"{location.host}:{location.port}"
            self.target = spec
        self.root = location.path.rstrip("/") or "/"
        self._on_host: bool | None = None

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, safe_key(key))

    def describe(self, key: str) -> str:
        host = self.target.name if hasattr(self.target, "name") else self.target
        return f"sftp://{host}{self._path(key)}"

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        out: list[ObjectInfo] = []
        async with self.sftp.session(self.target) as sftp:
            import asyncssh

            async def walk(path: str) -> None:
                try:
                    entries = await sftp.readdir(path)
                except asyncssh.SFTPNoSuchFile:
                    return
                subdirs = []
                for e in entries:
                    name = str(e.filename)
                    if name in (".", ".."):
                        continue
                    full = posixpath.join(path, name)
                    if e.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                        subdirs.append(full)
                    else:
                        out.append(
                            ObjectInfo(
                                posixpath.relpath(full, self.root),
                                e.attrs.size or 0,
                                float(e.attrs.mtime or 0),
                            )
                        )
                # Sibling directories (kind/node) are listed concurrently on the one SFTP session.
                await asyncio.gather(*(walk(d) for d in subdirs))

            await walk(base)
        return out

    async def read_bytes(self, key: str) -> bytes:
        async with self.sftp.session(self.target) as sftp:
            try:
                size = (await sftp.stat(self._path(key))).size or 0
                async with sftp.open(self._path(key), "rb") as fh:
                    got: bytes | str = await fh.read()
            except Exception as exc:  # noqa: BLE001 - asyncssh error classes vary
                raise OperationFailed(f"cannot read {self.describe(key)}: {exc}.") from None
        data = got if isinstance(got, bytes) else got.encode()
        # asyncssh reads have come up short on some servers (ronf/asyncssh#814): measure.
        if len(data) != size:
            raise OperationFailed(
                f"reading {self.describe(key)} came up short ({len(data)} of {size} bytes)."
            )
        return data

    async def read_many(self, keys: Sequence[str], limit: int = 16) -> dict[str, bytes | None]:
        # One SFTP session for all of them: requests are pipelined on its channel.
        if not keys:
            return {}
        sem = asyncio.Semaphore(limit)
        async with self.sftp.session(self.target) as sftp:

            async def one(key: str) -> tuple[str, bytes | None]:
                async with sem:
                    try:
                        async with sftp.open(self._path(key), "rb") as fh:
                            data: bytes | str = await fh.read()
                    except Exception:  # noqa: BLE001 - asyncssh error classes vary; the key is unreadable
                        return key, None
                return key, data if isinstance(data, bytes) else data.encode()

            return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def write_bytes(self, key: str, data: bytes) -> None:
        async def write() -> None:
            await self._mkdirs(posixpath.dirname(self._path(key)))
            async with self.sftp.open_write(self.target, self._path(key)) as writer:
                await writer.write(data)

        await self._bounded(f"writing {key}", write(), len(data))

    async def _bounded(self, what: str, work: Awaitable[Any], size: int) -> Any:
        """`work`, given up after the time `size` bytes may take (the partial file is removed
        by the transfer itself when it is cancelled)."""
        limit = transfer_timeout(size, self.call_timeout, self.min_rate)
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise OperationFailed(
                f"SFTP location {self.location.name}: {what} did not finish within "
                f"{format_duration(limit)}; the host is down or too slow."
            ) from None

    async def _mkdirs(self, path: str) -> None:
        async with self.sftp.session(self.target) as sftp:
            with contextlib.suppress(Exception):
                await sftp.makedirs(path, exist_ok=True)

    async def put_file(
        self, local: Path, key: str, sha256: str, progress: Progress | None = None
    ) -> None:
        size = local.stat().st_size
        # When the host can hash its own disk, the upload is checked by `sha256sum` there
        # instead of reading every byte back over SFTP (half the traffic).
        on_host = await self._hashes_on_host()

        async def put() -> Any:
            await self._mkdirs(posixpath.dirname(self._path(key)))
            return await self.sftp.put(
                self.target,
                local,
                self._path(key),
                progress=progress,
                verify="size" if on_host else "readback",
            )

        done = await self._bounded(f"uploading {key}", put(), size)
        if done.sha256 != sha256:
            await self.delete(key)
            raise OperationFailed(f"{local} changed while it was copied to {self.describe(key)}.")
        if on_host:
            await self.confirm_at_rest(key, sha256, size)

    async def confirm_at_rest(self, key: str, sha256: str, size: int) -> None:
        """Check a copy just written (and measured by size) with `sha256sum` on the host; where
        the host's shell cannot see it, read it back after all and stop asking this host. A
        copy that does not match is deleted and OperationFailed raised."""
        try:
            how = await self.check_at_rest(key, sha256, size)
            if how is None:
                self._on_host = False
                back = await self._bounded(
                    f"reading back {key}", self.sftp.sha256(self.target, self._path(key)), size
                )
                got = back.sha256
                if got != sha256:
                    raise OperationFailed(
                        f"{self.describe(key)} reads back with SHA-256 {got[:12]}..., the "
                        f"local file has {sha256[:12]}...: the upload is corrupt."
                    )
        except BaseException:
            with contextlib.suppress(OperationFailed, OSError):
                await self.delete(key)
            raise

    async def _hashes_on_host(self) -> bool:
        """Whether the host runs `sha256sum` for us (asked once per store)."""
        if self._on_host is None:
            try:
                done = await self._bounded(
                    "asking the host for sha256sum",
                    self.sftp.transport.run(
                        self.sftp.target(self.target),
                        "sha256sum --version",
                        timeout=self.call_timeout,
                    ),
                    0,
                )
                self._on_host = done.exit_status == 0
            except OperationFailed:
                self._on_host = False
        return self._on_host

    async def get_file(
        self, key: str, local: Path, sha256: str | None = None, progress: Progress | None = None
    ) -> None:
        await self.sftp.get(
            self.target, self._path(key), local, progress=progress, expected_sha256=sha256
        )

    streams = True

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        import asyncssh

        path = self._path(key)
        async with self.sftp.session(self.target) as sftp:
            try:
                fh = await self._bounded(f"opening {key}", sftp.open(path, "rb"), 0)
            except asyncssh.SFTPError as exc:
                raise OperationFailed(f"cannot read {self.describe(key)}: {exc.reason}.") from None
            async with fh:
                offset = 0
                while True:
                    try:
                        data = await self._bounded(
                            f"reading {key}", fh.read(STREAM_PIECE, offset), STREAM_PIECE
                        )
                    except asyncssh.SFTPError as exc:
                        raise OperationFailed(
                            f"reading {self.describe(key)} failed: {exc.reason}."
                        ) from None
                    if not data:
                        return
                    offset += len(data)
                    yield data if isinstance(data, bytes) else data.encode()

    async def delete(self, key: str) -> None:
        await self._bounded(
            f"deleting {key}", self.sftp.remove(self.target, self._path(key), missing_ok=True), 0
        )

    async def check_at_rest(
        self, key: str, sha256: str, size: int, recorded: dict[str, Any] | None = None
    ) -> str | None:
        """`sha256sum` run on the host over SSH (the host reads its own disk); None when the
        host runs no commands for us (an SFTP-only account) or has no `sha256sum`."""
        if self._on_host is False:
            return None  # this host already could not hash one of our files
        node = self.sftp.target(self.target)
        path = self._path(key)
        command = f"sha256sum -- {shlex.quote(path)}"
        rooted = node.path(path)
        if rooted != path:
            # The shell sees the SFTP path as it is, or, where the SFTP server is chrooted to
            # the node's root (the lab's sandbox), under that root.
            command = (
                f'f={shlex.quote(path)}; [ -e "$f" ] || f={shlex.quote(rooted)}; sha256sum -- "$f"'
            )
        limit = transfer_timeout(size, self.call_timeout, self.min_rate)
        done = await self.sftp.transport.run(node, command, timeout=limit)
        fields = done.stdout.split()
        if done.exit_status != 0 or not fields or len(fields[0]) != 64:
            self._on_host = False
            return None
        got = fields[0].decode("ascii", "replace").lower()
        if got != sha256:
            raise OperationFailed(
                f"{self.describe(key)} has SHA-256 {got[:12]}... on the host, its manifest says "
                f"{sha256[:12]}...: the copy is corrupt"
            )
        return "SHA-256 computed on the host by sha256sum"


class S3Store(Store):
    """A bucket and prefix on an S3-compatible endpoint (the plan's tertiary location)."""

    page_size = 1000
    """Keys per ListObjectsV2 page (S3's maximum); the listing follows continuation tokens."""
    call_timeout = 60.0
    """Seconds any one request may take, retries included (a manifest, a checkpoint, a HEAD);
    then the operation fails instead of waiting on a slow endpoint."""
    list_timeout = 600.0
    """Seconds a whole listing may take (a large bucket is many pages)."""
    min_rate = float(1 << 20)
    """Bytes/s below which an upload or download is given up (1 MiB/s), on top of call_timeout."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.prefix = location.prefix.strip("/")
        self._client: Any = None

    def client(self) -> Any:
        """The boto3 client, built once; credentials from the site's file or the default chain."""
        if self._client is None:
            from botocore.config import Config

            cfg = Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=32,
            )
            self._client = s3_client(self.location, cfg)
        return self._client

    def _key(self, key: str) -> str:
        k = safe_key(key)
        return f"{self.prefix}/{k}" if self.prefix else k

    def _rel(self, full: str) -> str:
        """A bucket key as a key inside this location (the prefix taken off)."""
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def describe(self, key: str) -> str:
        return f"s3://{self.location.bucket}/{self._key(key)}"

    async def _call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        limit = self.call_timeout if timeout is None else timeout
        try:
            return await bounded_call(fn, *args, timeout=limit, **kwargs)
        except TimeoutError:
            raise OperationFailed(
                f"S3 location {self.location.name}: {what} got no answer within "
                f"{format_duration(limit)}; the endpoint is down or too slow."
            ) from None
        except Boto3Error as exc:  # S3UploadFailedError and friends wrap the real cause
            cause = str(exc).split(": ", 1)[-1].rstrip(".")
            raise OperationFailed(
                f"S3 location {self.location.name}: {what} failed: {cause}."
            ) from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise OperationFailed(
                f"S3 location {self.location.name}: {what} failed: "
                f"{err.get('Code', '?')} {err.get('Message', '')}".rstrip()
                + "."
            ) from None
        except BotoCoreError as exc:
            raise OperationFailed(
                f"S3 location {self.location.name}: {what} failed: {exc}."
            ) from None

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            paginator = self.client().get_paginator("list_objects_v2")
            full = self._key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
            out = []
            for page in paginator.paginate(
                Bucket=self.location.bucket,
                Prefix=full,
                PaginationConfig={"PageSize": self.page_size},
            ):
                for obj in page.get("Contents", []):
                    rel = self._rel(obj["Key"])
                    out.append(ObjectInfo(rel, int(obj["Size"]), obj["LastModified"].timestamp()))
            out.extend(self._unfinished_uploads(full))
            return out

        return list(await self._call("listing", run, timeout=self.list_timeout))

    def _unfinished_uploads(self, full: str) -> builtins.list[ObjectInfo]:
        """Multipart uploads begun under `full` and never completed nor aborted (a console
        killed while it streamed a backup), listed as `KEY.partial` staging names: the
        catalog reports them as orphans once they are old enough, and deleting that name
        aborts them. A server that cannot list them lists none."""
        from botocore.exceptions import BotoCoreError, ClientError

        found = []
        try:
            paginator = self.client().get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=full):
                for up in page.get("Uploads", []):
                    rel = self._rel(up["Key"])
                    began = up["Initiated"].timestamp()
                    # The backup id in the key says when its capture began; an upload cannot
                    # be older (moto reports a fixed date in 2010 for every upload).
                    name = posixpath.basename(rel)
                    named = parse_id(name.removesuffix(OBJECT_SUFFIX))
                    if name.endswith(OBJECT_SUFFIX) and named is not None:
                        began = max(began, named[2].timestamp())
                    found.append(ObjectInfo(rel + PARTIAL_UPLOAD, 0, began))
        except (BotoCoreError, ClientError):
            return []
        return found

    async def _abort_uploads(self, key: str) -> None:
        """Abort every unfinished multipart upload of `key`."""

        def run() -> None:
            client = self.client()
            full = self._key(key)
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.location.bucket, Prefix=full
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Key"] == full:
                        client.abort_multipart_upload(
                            Bucket=self.location.bucket, Key=full, UploadId=up["UploadId"]
                        )

        await self._call(f"abandoning the unfinished uploads of {key}", run)

    async def read_bytes(self, key: str) -> bytes:
        resp = await self._call(
            f"reading {key}",
            self.client().get_object,
            Bucket=self.location.bucket,
            Key=self._key(key),
        )
        return bytes(await self._call(f"reading {key}", resp["Body"].read))

    def _lock_args(self) -> dict[str, Any]:
        if not self.location.object_lock:
            return {}
        days = self.location.retention_days or 30
        return {
            "ObjectLockMode": "COMPLIANCE",
            "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=days),
        }

    async def write_bytes(self, key: str, data: bytes) -> None:
        await self._call(
            f"writing {key}",
            self.client().put_object,
            Bucket=self.location.bucket,
            Key=self._key(key),
            Body=data,
            ChecksumAlgorithm="SHA256",
            **self._lock_args(),
        )

    async def put_file(
        self, local: Path, key: str, sha256: str, progress: Progress | None = None
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        size = local.stat().st_size
        sent = 0

        def cb(n: int) -> None:
            nonlocal sent
            sent += n
            if progress:
                progress(sent, size)

        # Big backups: parts of at least size/9000 so we stay under S3's 10,000-part limit.
        part = s3_part_size(size)
        chunk = part or S3_MULTIPART
        # What S3's own SHA-256 checksum of this object must be: for a multipart upload the
        # composite over these parts, kept beside the whole SHA-256 so a later check at rest
        # can compare S3's checksum without reading the object back.
        s3_sum = await asyncio.to_thread(s3_sha256, local, part)
        # A single-part upload runs in the bounded call's own thread, so a hung endpoint holds
        # nothing at exit; multipart ones keep their parallel parts (s3transfer's threads).
        cfg = TransferConfig(
            multipart_threshold=S3_MULTIPART,
            multipart_chunksize=chunk,
            max_concurrency=4,
            use_threads=size >= S3_MULTIPART,
        )
        lock = self._lock_args()
        # Over the threshold boto3 sends the lock headers on CreateMultipartUpload, which S3
        # applies to the completed object; moto (the lab) drops them, see _lock_after_upload.
        extra = {
            "Metadata": {"sha256": sha256, "s3-sha256": s3_sum},
            "ChecksumAlgorithm": "SHA256",
            **lock,
        }
        await self._call(
            f"uploading {key}",
            self.client().upload_file,
            str(local),
            self.location.bucket,
            self._key(key),
            ExtraArgs=extra,
            Callback=cb,
            Config=cfg,
            timeout=transfer_timeout(size, self.call_timeout, self.min_rate),
        )
        await self.confirm_upload(key, size, s3_sum, lock, sha256)

    async def confirm_upload(
        self,
        key: str,
        size: int,
        s3_sum: str,
        lock: dict[str, Any],
        sha256: str | None = None,
    ) -> None:
        """Check an object just uploaded: its size, S3's SHA-256 checksum against `s3_sum`
        (the plain or composite checksum computed from the bytes sent), the whole SHA-256 in
        its metadata when given, and its Object Lock (put on afterwards where the upload could
        not carry it). OperationFailed otherwise."""
        head = await self.head(key)
        meta_sha = head.get("Metadata", {}).get("sha256")
        if int(head["ContentLength"]) != size or (sha256 is not None and meta_sha != sha256):
            raise OperationFailed(
                f"{self.describe(key)} did not land whole ({head['ContentLength']} of {size} bytes)."
            )
        stored = _s3_checksum(head)
        if stored is not None and stored != s3_sum.split("-")[0]:
            raise OperationFailed(
                f"{self.describe(key)} landed with S3 SHA-256 checksum {stored}, the local file's "
                f"is {s3_sum}: the upload is corrupt."
            )
        if lock and not head.get("ObjectLockMode"):
            head = await self._lock_after_upload(key, head, lock)
        if self.location.object_lock and not head.get("ObjectLockMode"):
            raise OperationFailed(
                f"{self.describe(key)} was stored without Object Lock, which this site requires."
            )

    async def _lock_after_upload(
        self, key: str, head: dict[str, Any], lock: dict[str, Any]
    ) -> dict[str, Any]:
        """Put the retention on the version just written when the upload did not carry it.

        S3 applies lock headers sent with CreateMultipartUpload (and a bucket's default
        retention) to the completed object; some S3-compatible servers, moto among them,
        apply neither to multipart uploads. PutObjectRetention on that version works on
        both, and the head that follows is what decides, so the check stays the same.
        """
        version = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        await self._call(
            f"locking {key}",
            self.client().put_object_retention,
            Bucket=self.location.bucket,
            Key=self._key(key),
            Retention={
                "Mode": lock["ObjectLockMode"],
                "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
            },
            **version,
        )
        return dict(
            await self._call(
                f"checking {key}",
                self.client().head_object,
                Bucket=self.location.bucket,
                Key=self._key(key),
                **version,
            )
        )

    async def get_file(
        self, key: str, local: Path, sha256: str | None = None, progress: Progress | None = None
    ) -> None:
        partial = local.with_name(local.name + ".partial")
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            from boto3.s3.transfer import TransferConfig

            size = int((await self.head(key)).get("ContentLength", 0))
            await self._call(
                f"downloading {key}",
                self.client().download_file,
                self.location.bucket,
                self._key(key),
                str(partial),
                Config=TransferConfig(use_threads=size >= 64 << 20),
                timeout=transfer_timeout(size, self.call_timeout, self.min_rate),
            )
            os.chmod(partial, 0o600)
            _, got = await asyncio.to_thread(hash_file, partial)
            if sha256 and got != sha256:
                raise OperationFailed(
                    f"{self.describe(key)} has SHA-256 {got}, its manifest says {sha256}: "
                    "the object is corrupt."
                )
            os.replace(partial, local)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    streams = True

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        resp = await self._call(
            f"reading {key}",
            self.client().get_object,
            Bucket=self.location.bucket,
            Key=self._key(key),
        )
        body = resp["Body"]
        limit = transfer_timeout(STREAM_PIECE, self.call_timeout, self.min_rate)
        try:
            while data := await self._call(
                f"reading {key}", body.read, STREAM_PIECE, timeout=limit
            ):
                yield bytes(data)
        finally:
            with contextlib.suppress(Exception):
                body.close()

    async def delete(self, key: str) -> None:
        if key.endswith(PARTIAL_UPLOAD):
            # The staging name of an unfinished multipart upload (see `list`): abort it.
            await self._abort_uploads(key[: -len(PARTIAL_UPLOAD)])
            return
        await self._call(
            f"deleting {key}",
            self.client().delete_object,
            Bucket=self.location.bucket,
            Key=self._key(key),
        )

    async def head(self, key: str) -> dict[str, Any]:
        """The object's metadata (lock mode, retention, version, S3's SHA-256 checksum)."""
        return dict(
            await self._call(
                f"checking {key}",
                self.client().head_object,
                Bucket=self.location.bucket,
                Key=self._key(key),
                ChecksumMode="ENABLED",
            )
        )

    async def read_versions(
        self, key: str, limit: int = 8
    ) -> builtins.list[tuple[datetime, bytes]]:
        """Every stored version of `key` (when it was written, its bytes), newest first; just
        the current one on an unversioned bucket. Reads `limit` versions at a time."""
        full = self._key(key)

        def listing() -> builtins.list[tuple[str, datetime]]:
            paginator = self.client().get_paginator("list_object_versions")
            found = []
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=full):
                for v in page.get("Versions", []):
                    if v["Key"] == full:
                        found.append((str(v["VersionId"]), v["LastModified"]))
            return sorted(found, key=lambda item: item[1], reverse=True)

        versions = await self._call(f"listing the versions of {key}", listing)
        gate = asyncio.Semaphore(limit)

        async def one(version_id: str, when: datetime) -> tuple[datetime, bytes]:
            async with gate:
                resp = await self._call(
                    f"reading {key}",
                    self.client().get_object,
                    Bucket=self.location.bucket,
                    Key=full,
                    VersionId=version_id,
                )
                return when, bytes(await self._call(f"reading {key}", resp["Body"].read))

        return list(await asyncio.gather(*(one(v, w) for v, w in versions)))

    async def versioning(self) -> str:
        """The bucket's versioning status: "Enabled", "Suspended" or "" (never enabled)."""
        resp = await self._call(
            "reading the bucket's versioning",
            self.client().get_bucket_versioning,
            Bucket=self.location.bucket,
        )
        return str(resp.get("Status", ""))

    async def delete_current(self, key: str) -> dict[str, Any]:
        """Delete `key` without naming a version (never a locked version by id): on a versioned
        bucket S3 adds a delete marker and keeps the data; returns S3's answer."""
        resp = await self._call(
            f"deleting {key}",
            self.client().delete_object,
            Bucket=self.location.bucket,
            Key=self._key(key),
        )
        return {k: v for k, v in dict(resp).items() if k != "ResponseMetadata"}

    async def check_at_rest(
        self, key: str, sha256: str, size: int, recorded: dict[str, Any] | None = None
    ) -> str | None:
        """S3's own SHA-256 checksum of the object (HeadObject with ChecksumMode), which S3
        computed from the bytes it received; None for an object stored without one.

        One part: the checksum is the SHA-256 of the whole object, compared with the
        manifest's. Multipart: it is a composite (the SHA-256 of the parts' SHA-256s); it is
        compared with the composite kconsole computed from the local ciphertext (whose
        SHA-256 is the manifest's) when it uploaded it and stored in the object's metadata,
        so it proves S3 holds the bytes that were uploaded, part by part, not a fresh hash
        of the whole object. Neither reads the object's bytes.
        """
        head = await self.head(key)
        stored = _s3_checksum(head)
        if stored is None:
            return None
        if int(head.get("ContentLength", -1)) != size:
            raise OperationFailed(
                f"{self.describe(key)} holds {head.get('ContentLength')} bytes, its manifest says "
                f"{size}: the copy is corrupt"
            )
        whole = base64.b64encode(bytes.fromhex(sha256)).decode()
        if stored == whole:
            return "SHA-256 checked by S3's checksum"
        meta = head.get("Metadata", {})
        composite = str(meta.get("s3-sha256", ""))
        streamed = str((recorded or {}).get("s3_sha256", ""))
        if "-" in streamed:
            # Written while it was captured: the composite of the parts as they were sent is
            # in the (signed) manifest.
            total, parts = streamed.split("-", 1)
            if stored == total:
                return (
                    f"S3's composite checksum of {parts} parts matched the one the manifest "
                    "recorded as they were sent"
                )
            raise OperationFailed(
                f"{self.describe(key)} has S3 composite checksum {stored}, its manifest "
                f"recorded {total}: the copy is corrupt"
            )
        if "-" in composite:
            total, parts = composite.split("-", 1)
            if meta.get("sha256") == sha256 and stored == total:
                return (
                    f"S3's composite checksum of {parts} parts matched the one computed from "
                    "the ciphertext at upload"
                )
            raise OperationFailed(
                f"{self.describe(key)} has S3 composite checksum {stored}, {total} was uploaded "
                "for this manifest: the copy is corrupt"
            )
        if not composite and size >= S3_MULTIPART:
            return None  # multipart, from before composites were recorded: read it back
        raise OperationFailed(
            f"{self.describe(key)} has S3 SHA-256 checksum {stored}, its manifest says "
            f"{whole}: the copy is corrupt"
        )


def _s3_checksum(head: dict[str, Any]) -> str | None:
    """S3's SHA-256 checksum in a HeadObject answer, without a composite's "-parts" tail."""
    value = head.get("ChecksumSHA256")
    return str(value).split("-")[0] if value else None


def s3_client(location: Location, config: Any) -> Any:
    """A boto3 S3 client for `location` with botocore `config`: credentials from the
    location's file (which must be 0600), its profile, or the default chain."""
    import boto3

    kwargs: dict[str, Any] = {"region_name": location.region or "us-east-1"}
    if location.endpoint_url:
        kwargs["endpoint_url"] = location.endpoint_url
    if location.credentials_file:
        kwargs.update(read_credentials(Path(location.credentials_file), location.profile))
    session = (
        boto3.session.Session(profile_name=location.profile or None)
        if location.profile and not location.credentials_file
        else boto3.session.Session()
    )
    return session.client("s3", config=config, **kwargs)


def read_credentials(path: Path, profile: str = "") -> dict[str, str]:
    """Access keys from an AWS shared-credentials file; it must be private (0600)."""
    try:
        mode = path.stat().st_mode & 0o077
    except FileNotFoundError:
        raise UsageError(f"S3 credentials file {path} not found.") from None
    if mode:
        raise UsageError(f"S3 credentials file {path} is readable by others; run chmod 600 {path}.")
    parser = configparser.ConfigParser()
    parser.read(path)
    section = profile or "default"
    if section not in parser:
        raise UsageError(f"S3 credentials file {path} has no [{section}] section.")
    s = parser[section]
    out = {
        "aws_access_key_id": s.get("aws_access_key_id", ""),
        "aws_secret_access_key": s.get("aws_secret_access_key", ""),
    }
    if s.get("aws_session_token"):
        out["aws_session_token"] = s["aws_session_token"]
    return out


def open_store(location: Location, site: Site, transport: Any) -> Store:
    """The Store for a site location."""
    if location.type == "local":
        return LocalStore(location)
    if location.type == "sftp":
        if transport is None:
            raise OperationFailed(
                f"location {location.name} needs SSH, and no transport is configured."
            )
        return SftpLocationStore(location, site, transport)
    return S3Store(location)


def open_stores(site: Site, transport: Any) -> dict[str, Store]:
    """Every location of the site, in file order (local first is the fastest to read)."""
    order = {"local": 0, "sftp": 1, "s3": 2}
    locs = sorted(site.locations.values(), key=lambda loc: order[loc.type])
    return {loc.name: open_store(loc, site, transport) for loc in locs}
