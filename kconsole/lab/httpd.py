"""A very small asyncio HTTP/1.1 server for the lab's health endpoints and webhook sink.

One request per connection (`Connection: close`), loopback only. Enough for `httpx`,
`curl` and a status poll across hundreds of nodes without a thread per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_BODY = 1 << 20


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Response:
    """What to send back."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: object) -> Response:
        """A JSON response."""
        return cls(status, json.dumps(data).encode() + b"\n")


Handler = Callable[[Request], Awaitable[Response | None]]
"""Answers a request; None closes the connection without an answer (a dead host)."""

_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    503: "Service Unavailable",
}


class HttpServer:
    """Serve `handler` on 127.0.0.1 (a fresh port)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Listen; returns the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 16)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (x.partition(":") for x in lines[1:] if ":" in x)
            }
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                resp: Response | None = Response(413, b"")
            else:
                body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
                resp = await self._handler(Request(method.upper(), path, headers, body))
            if resp is None:
                writer.transport.abort()
                return
            reason = _REASONS.get(resp.status, "Unknown")
            payload = b"" if method.upper() == "HEAD" else resp.body
            writer.write(
                f"HTTP/1.1 {resp.status} {reason}\r\nContent-Type: {resp.content_type}\r\n"
                f"Content-Length: {len(resp.body)}\r\nConnection: close\r\n\r\n".encode()
                + payload
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
        except asyncio.CancelledError:
            writer.transport.abort()  # shutting down mid-request (a slow fault's delay)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
