"""The tee that streams a backup's ciphertext to every location as it is captured: in order,
memory bounded by back-pressure, and a failing location named and no longer waited on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kconsole.backups.create import Tee
from kconsole.backups.pipeline import ChunkPipe
from kconsole.backups.uploads import S3_STREAM_PART, Upload, stream_part_size
from kconsole.errors import OperationFailed

BLOCK = Tee.BLOCK


class Recording(Upload):
    def __init__(self, name: str, gate: asyncio.Event | None = None, fail_at: int = -1) -> None:
        self.name = name
        self.gate = gate
        self.fail_at = fail_at
        self.blocks: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if len(self.blocks) == self.fail_at:
            raise OperationFailed("the location refused the write")
        if self.gate is not None:
            await self.gate.wait()
        self.blocks.append(data)

    async def finish(self, staged: Path, sha256: str, size: int) -> dict[str, Any]:
        return {}


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_every_location_gets_the_bytes_in_order_in_whole_blocks() -> None:
    a, b = Recording("a"), Recording("b")
    tee = Tee({"a": a, "b": b})
    sent = b""
    for i in range(40):
        piece = bytes([i]) * (BLOCK // 7)
        sent += piece
        await tee.write(piece)
    await tee.close()
    assert b"".join(a.blocks) == sent == b"".join(b.blocks)
    assert all(len(x) >= BLOCK for x in a.blocks[:-1])
    assert tee.failed == {}


async def test_a_slow_location_holds_the_capture_back_instead_of_filling_memory() -> None:
    gate = asyncio.Event()
    slow = Recording("slow", gate)
    tee = Tee({"slow": slow})

    async def produce() -> None:
        for _ in range(Tee.DEPTH + 6):
            await tee.write(b"x" * BLOCK)

    producer = asyncio.ensure_future(produce())
    await settle()
    # One block being written, DEPTH queued, the producer waiting on the next.
    assert not producer.done()
    assert tee._queues["slow"].qsize() == Tee.DEPTH
    gate.set()
    await producer
    await tee.close()
    assert len(slow.blocks) == Tee.DEPTH + 6


async def test_a_failing_location_is_named_and_never_waited_on_again() -> None:
    good, bad = Recording("good"), Recording("bad", fail_at=1)
    tee = Tee({"good": good, "bad": bad})
    for _ in range(Tee.DEPTH * 3):
        await tee.write(b"y" * BLOCK)
    await tee.close()
    assert tee.failed == {"bad": "the location refused the write"}
    assert len(good.blocks) == Tee.DEPTH * 3 and len(bad.blocks) == 1


def test_streamed_s3_parts_stay_within_s3s_limits() -> None:
    # Every part but the last at least S3's 5 MiB minimum; 10,000 parts hold over 800 GB.
    assert stream_part_size(1) == S3_STREAM_PART >= 5 << 20
    assert stream_part_size(1000) == S3_STREAM_PART
    assert stream_part_size(1001) == 2 * S3_STREAM_PART
    assert sum(stream_part_size(n) for n in range(1, 10_001)) > 800 << 30


async def test_an_unexpected_error_in_a_location_never_hangs_the_capture() -> None:
    class Broken(Recording):
        async def write(self, data: bytes) -> None:
            raise RuntimeError("the SFTP channel closed")

    tee = Tee({"broken": Broken("broken")})
    for _ in range(Tee.DEPTH * 3):
        await tee.write(b"z" * BLOCK)
    await tee.close()
    assert tee.failed == {"broken": "RuntimeError: the SFTP channel closed"}


async def _pieces(n: int, fail: bool = False):  # type: ignore[no-untyped-def]
    for i in range(n):
        await asyncio.sleep(0)
        yield bytes([i]) * 1000
    if fail:
        raise OperationFailed("the DR host went away")


async def test_a_remote_copy_reads_in_order_through_the_pipe() -> None:
    pipe = ChunkPipe(depth=2)
    feeder = asyncio.ensure_future(pipe.feed(_pieces(20)))
    got = await asyncio.to_thread(pipe.as_file().read)
    await feeder
    assert got == b"".join(bytes([i]) * 1000 for i in range(20))


async def test_a_failing_remote_copy_raises_in_the_reader() -> None:
    pipe = ChunkPipe(depth=2)
    feeder = asyncio.ensure_future(pipe.feed(_pieces(5, fail=True)))
    with pytest.raises(OperationFailed, match="went away"):
        await asyncio.to_thread(pipe.as_file().read)
    await feeder


async def test_a_reader_that_stops_early_ends_the_feeding() -> None:
    pipe = ChunkPipe(depth=1)
    feeder = asyncio.ensure_future(pipe.feed(_pieces(1000)))
    assert await asyncio.to_thread(pipe.as_file().read, 10) == bytes(10)
    pipe.stop()
    await asyncio.wait_for(feeder, 10)  # returns instead of waiting on a full queue forever
