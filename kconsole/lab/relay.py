"""The network between the console and a lab host: a loopback TCP relay that can be cut,
slowed, or made to drop connections part-way, and (for the S3 endpoint) made to answer
every request with an error.

Every lab SSH server and the S3 endpoint sit behind one `Relay`; the port in site.toml is
the relay's. Faults act on bytes on the wire, so they hit SSH key exchange, commands,
SFTP and HTTP alike, as a real bad link would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass
class Link:
    """The state of one host's link, changed by faults while the lab runs."""

    closed: bool = False
    """Connections are closed as soon as they are accepted (host down or unreachable)."""
    delay: float = 0.0
    """Seconds of delay before each chunk read from either side is passed on."""
    drop_after: int | None = None
    """Each connection is cut after this many bytes have passed (both directions)."""
    http_error: bool = False
    """Answer each HTTP request with 503 ServiceUnavailable instead of passing it on."""


_S3_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request (injected by the kconsole lab: fault s3=error).</Message>"
    b"<RequestId>kconsole-lab</RequestId></Error>"
)


class Relay:
    """A loopback TCP front door for `upstream_port`, with the link's faults applied."""

    def __init__(self, upstream_port: int, link: Link | Callable[[], Link]) -> None:
        self.upstream_port = upstream_port
        self._link = link if callable(link) else (lambda: link)  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def link(self) -> Link:
        """The current link state."""
        return self._link()

    async def start(self) -> int:
        """Listen on 127.0.0.1 (a fresh port); returns the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def drop_all(self) -> None:
        """Cut every connection now (the link went down)."""
        for a, b in list(self._live):
            _abort(a)
            _abort(b)
        self._live.clear()

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            _abort(writer)  # the relay is closing; end this connection quietly
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = self.link
        if link.closed:
            _abort(writer)
            return
        if link.http_error:
            await _answer_503(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._live.add(pair)
        passed = [0]
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, pair, passed),
                self._pipe(up_reader, writer, pair, passed),
            )
        finally:
            self._live.discard(pair)
            for w in pair:
                w.close()

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        passed: list[int],
    ) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                link = self.link
                if link.closed:
                    raise ConnectionAbortedError
                if link.delay > 0:
                    await asyncio.sleep(link.delay)
                if link.drop_after is not None:
                    room = link.drop_after - passed[0]
                    if len(data) >= room:
                        if room > 0:
                            dst.write(data[:room])
                            with contextlib.suppress(OSError):
                                await dst.drain()
                        raise ConnectionAbortedError
                passed[0] += len(data)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            for w in pair:
                _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read one request head (and a small body), answer 503 as S3 does when it is unwell."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (
                line.partition(b":") for line in head.split(b"\r\n")[1:] if b":" in line
            )
        }
        length = int(headers.get(b"content-length", b"0") or 0)
        if length and headers.get(b"expect", b"").lower() != b"100-continue" and length <= 64 << 20:
            await asyncio.wait_for(reader.readexactly(length), 30)
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
            b"Content-Length: "
            + str(len(_S3_ERROR_BODY)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + _S3_ERROR_BODY
        )
        await writer.drain()
    except (
        OSError,
        ValueError,
        TimeoutError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ):
        pass
    finally:
        writer.close()
