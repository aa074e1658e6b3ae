"""Bridges between blocking crypto/archive code and the async SSH transport."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator

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
