"""Bridges between blocking crypto/archive code and the async SSH transport."""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO, cast

_DONE = object()


async def threaded_chunks(
    make: Callable[[], Iterator[bytes]], depth: int = 8
) -> AsyncIterator[bytes]:
    """Run a blocking chunk generator in a thread and yield its chunks here, with
    back-pressure (at most `depth` chunks in flight). An error in the generator is
    raised here; leaving early stops the thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            try:
                fut.result(timeout=0.5)
                return
            except TimeoutError:
                fut.cancel()

    def work() -> None:
        try:
            for chunk in make():
                if stop.is_set():
                    return
                put(chunk)
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer
            put(exc)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        while not queue.empty():
            queue.get_nowait()
        with contextlib.suppress(Exception):
            await worker


class ChunkPipe(io.RawIOBase):
    """A blocking reader, for a worker thread, of chunks an async task delivers (`feed`):
    a remote copy read over SFTP or from S3 becomes a file the decryptor can read, with at
    most `depth` chunks in flight. An error in the source is raised to the reader; `stop`
    (the reader is gone) ends the feeding."""

    def __init__(self, depth: int = 8) -> None:
        super().__init__()
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._chunk = memoryview(b"")
        self._eof = False
        self._stopped = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._chunk and not self._eof:
            item = self._queue.get()
            if item is _DONE:
                self._eof = True
            elif isinstance(item, BaseException):
                raise item
            else:
                assert isinstance(item, bytes)
                self._chunk = memoryview(item)
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def as_file(self) -> BinaryIO:
        """This pipe, typed as the binary file it reads like."""
        return cast(BinaryIO, self)

    def stop(self) -> None:
        """The reader is done (or gone): feeding stops."""
        self._stopped.set()

    async def _put(self, item: object) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                pass
            with contextlib.suppress(queue.Full):
                await loop.run_in_executor(None, self._queue.put, item, True, 0.25)
                return

    async def feed(self, source: AsyncIterator[bytes]) -> None:
        """Deliver `source` to the reader, then the end (or the source's error)."""
        try:
            async for chunk in source:
                if self._stopped.is_set():
                    return
                if chunk:
                    await self._put(chunk)
        except Exception as exc:  # noqa: BLE001 - delivered to the reader
            await self._put(exc)
            return
        await self._put(_DONE)
