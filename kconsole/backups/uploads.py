"""Copies written while a backup is captured: the ciphertext goes to the DR host (SFTP) and
the bucket (S3 multipart) as it is produced, not after.

An `Upload` takes the ciphertext in order (`write`), then either `finish`es — the copy is
complete under its final name and checked where it lies — or is `abort`ed, leaving nothing
under the final name. Memory stays bounded: a write waits while its location is busy, which
slows the capture (the SSH window closes) rather than buffering.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import posixpath
from pathlib import Path
from typing import Any

from kconsole.backups.stores import (
    S3Store,
    SftpLocationStore,
    Store,
    s3_composite,
    transfer_timeout,
)
from kconsole.errors import OperationFailed

S3_STREAM_PART = 16 << 20
"""Bytes per part of a streamed S3 upload, for the first S3_PARTS_PER_STEP parts; each further
step of that many parts is one S3_STREAM_PART larger, so 10,000 parts (S3's limit) hold
about 880 GB."""
S3_PARTS_PER_STEP = 1000
ABORT_WAIT_S = 30.0
"""How long an abandoned S3 upload waits for the parts it has in flight before aborting."""
S3_PARTS_IN_FLIGHT = 4
"""Parts uploaded at once (each in its own thread): memory is at most this many parts."""


def stream_part_size(number: int) -> int:
    """The size of streamed part `number` (1-based); every part but the last is this big."""
    return S3_STREAM_PART * (1 + (number - 1) // S3_PARTS_PER_STEP)


class Upload:
    """A copy being written as the backup is captured."""

    async def write(self, data: bytes) -> None:
        """Append `data` (the next ciphertext, in order)."""
        raise NotImplementedError

    async def finish(self, staged: Path, sha256: str, size: int) -> dict[str, Any]:
        """Complete the copy once every byte was written: `staged` is the whole ciphertext
        (fsynced), `sha256` and `size` what the copy must be. Raises OperationFailed unless
        it landed whole; returns what the manifest should record about this copy."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Give up: nothing stays under the final name (bounded in time, never raises)."""


def open_upload(store: Store, key: str) -> Upload | None:
    """A streaming upload of `key` into `store`, or None where copying the finished file
    is as good (a local directory)."""
    if isinstance(store, SftpLocationStore):
        return SftpUpload(store, key)
    if isinstance(store, S3Store):
        return S3Upload(store, key)
    return None


class SftpUpload(Upload):
    """Written to `NAME.partial` on the host, renamed into place when complete, then checked
    by `sha256sum` on the host (or read back where the host runs no commands)."""

    def __init__(self, store: SftpLocationStore, key: str) -> None:
        self.store = store
        self.key = key
        self._stack = contextlib.AsyncExitStack()
        self._writer: Any = None

    async def _open(self) -> Any:
        if self._writer is None:
            path = self.store._path(self.key)
            await self.store._bounded(
                "creating its directory", self.store._mkdirs(posixpath.dirname(path)), 0
            )
            on_host = await self.store._hashes_on_host()
            self._writer = await self.store._bounded(
                f"creating {self.key}",
                self._stack.enter_async_context(
                    self.store.sftp.open_write(
                        self.store.target, path, verify="size" if on_host else "readback"
                    )
                ),
                0,
            )
        return self._writer

    async def write(self, data: bytes) -> None:
        writer = await self._open()
        await self.store._bounded(f"writing {self.key}", writer.write(data), len(data))

    async def finish(self, staged: Path, sha256: str, size: int) -> dict[str, Any]:
        writer = await self._open()
        # Leaving the block flushes, fsyncs, measures and renames the file into place (and
        # reads it back when the host cannot hash it).
        await self.store._bounded(f"completing {self.key}", self._stack.aclose(), size)
        if writer.sha256 != sha256 or writer.size != size:
            with contextlib.suppress(OperationFailed, OSError):
                await self.store.delete(self.key)
            raise OperationFailed(
                f"the copy sent to {self.store.describe(self.key)} is not the backup "
                f"({writer.size} of {size} bytes)."
            )
        if self.store._on_host:
            await self.store.confirm_at_rest(self.key, sha256, size)  # deletes a bad copy
        return {}

    async def abort(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._stack.__aexit__(OperationFailed, OperationFailed("aborted"), None), 30
            )


class S3Upload(Upload):
    """A multipart upload: parts of S3_STREAM_PART bytes sent as they fill, each with its
    SHA-256 (S3 refuses a part whose bytes do not match), S3_PARTS_IN_FLIGHT at a time, under
    the site's Object Lock. A backup smaller than one part is uploaded whole from the staged
    file when it ends."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._count = 0
        """Parts sent or being sent (the last one's number)."""
        self._etags: dict[int, str] = {}
        self._digests: dict[int, bytes] = {}
        """Part number -> ETag and SHA-256 digest, for the parts S3 took."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._gate = asyncio.Semaphore(S3_PARTS_IN_FLIGHT)
        self._failed: BaseException | None = None
        self._lock = store._lock_args()

    def _full_key(self) -> str:
        return self.store._key(self.key)

    async def write(self, data: bytes) -> None:
        self._raise_failure()
        self._buffer += data
        # A backup that never fills a part is uploaded whole when it ends (one part, S3's
        # plain SHA-256 checksum); the first full part starts the multipart upload.
        while len(self._buffer) >= (size := stream_part_size(self._count + 1)):
            part = bytes(self._buffer[:size])
            del self._buffer[:size]
            await self._send(part)

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    async def _send(self, part: bytes) -> None:
        if self._upload_id is None:
            answer = await self.store._call(
                f"starting the upload of {self.key}",
                self.store.client().create_multipart_upload,
                Bucket=self.store.location.bucket,
                Key=self._full_key(),
                ChecksumAlgorithm="SHA256",
                **self._lock,
            )
            self._upload_id = str(answer["UploadId"])
        self._count += 1
        number = self._count
        await self._gate.acquire()
        self._raise_failure()
        task = asyncio.ensure_future(self._part(number, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _part(self, number: int, data: bytes) -> None:
        client = self.store.client()

        def upload() -> tuple[dict[str, Any], bytes]:
            digest = hashlib.sha256(data).digest()
            answer = client.upload_part(
                Bucket=self.store.location.bucket,
                Key=self._full_key(),
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
            return answer, digest

        try:
            answer, digest = await self.store._call(
                f"uploading part {number} of {self.key}",
                upload,
                timeout=transfer_timeout(len(data), self.store.call_timeout, self.store.min_rate),
            )
            self._etags[number] = str(answer["ETag"])
            self._digests[number] = digest
        except BaseException as exc:  # noqa: BLE001 - the next write or finish raises it
            if self._failed is None:
                self._failed = exc
        finally:
            self._gate.release()

    async def finish(self, staged: Path, sha256: str, size: int) -> dict[str, Any]:
        self._raise_failure()
        if self._upload_id is None:
            # Smaller than one part: nothing was sent yet, the staged file goes whole.
            self._buffer.clear()
            await self.store.put_file(staged, self.key, sha256)
            return {}
        if self._buffer:
            await self._send(bytes(self._buffer))
            self._buffer.clear()
        if self._tasks:
            await asyncio.gather(*list(self._tasks))
        self._raise_failure()
        numbers = range(1, self._count + 1)
        composite = s3_composite([self._digests[n] for n in numbers])
        await self.store._call(
            f"completing the upload of {self.key}",
            self.store.client().complete_multipart_upload,
            Bucket=self.store.location.bucket,
            Key=self._full_key(),
            UploadId=self._upload_id,
            MultipartUpload={
                "Parts": [
                    {
                        "ETag": self._etags[n],
                        "PartNumber": n,
                        "ChecksumSHA256": base64.b64encode(self._digests[n]).decode(),
                    }
                    for n in numbers
                ]
            },
        )
        self._upload_id = None  # complete: from here on the object is deleted, not aborted
        try:
            await self.store.confirm_upload(self.key, size, composite, self._lock)
        except BaseException:
            with contextlib.suppress(OperationFailed, OSError):
                await self.store.delete(self.key)
            raise
        return {"s3_sha256": composite}

    async def abort(self) -> None:
        if self._tasks:
            # Parts still being sent would land after the abort (S3 then keeps them until
            # the abort is repeated): let them settle first, bounded.
            _, pending = await asyncio.wait(list(self._tasks), timeout=ABORT_WAIT_S)
            for task in pending:
                task.cancel()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(Exception):
                await self.store._call(
                    f"abandoning the upload of {self.key}",
                    self.store.client().abort_multipart_upload,
                    Bucket=self.store.location.bucket,
                    Key=self._full_key(),
                    UploadId=upload_id,
                    timeout=30,
                )
