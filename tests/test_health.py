"""The one health-URL reader (fleet status, live heights, backup chain height)."""

from __future__ import annotations

import asyncio
import sys

from kconsole.health import HealthReader
from kconsole.lab.httpd import HttpServer, Request, Response


async def test_plain_http_is_read_without_an_http_library_and_failures_are_details() -> None:
    async def handler(req: Request) -> Response:
        if req.path == "/sick?verbose=1":  # the query is sent as it was given
            return Response.json(503, {"height": 5})
        if req.path == "/ok":
            return Response.json(200, {"height": 77, "state": "active"})
        if req.path == "/text":
            return Response(200, b"fine\n")
        return Response.json(200, {"height": True})  # a bool is not a height

    server = HttpServer(handler)
    port = await server.start()
    dead = HttpServer(handler)
    dead_port = await dead.start()
    await dead.close()
    reader = HealthReader()
    base = f"http://127.0.0.1:{port}"
    try:
        ok = await reader.read(f"{base}/ok", 5)
        assert (ok.ok, ok.detail, ok.height) == (True, "health 200", 77)
        sick = await reader.read(f"{base}/sick?verbose=1", 5)
        assert (sick.ok, sick.detail, sick.height) == (False, "health 503", 5)
        text = await reader.read(f"{base}/text", 5)
        assert (text.ok, text.height) == (True, None)
        assert (await reader.read(f"{base}/bool", 5)).height is None
        down = await reader.read(f"http://127.0.0.1:{dead_port}/ok", 5)
        assert not down.ok and down.detail == "health URL unreachable (ConnectionRefusedError)"
    finally:
        await reader.close()
        await server.close()
    assert "httpx" not in sys.modules or reader._https is None  # no HTTPS client was made


async def test_a_silent_server_is_a_timeout_not_a_hang() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = HealthReader()
    try:
        got = await reader.read(f"http://127.0.0.1:{port}/health", 0.2)
        assert not got.ok and got.detail == "health URL unreachable (no answer in time)"
    finally:
        await reader.close()
        server.close()
