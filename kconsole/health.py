"""Reading nodes' health URLs: the one reader behind fleet status, the catalog's live
heights and a backup's chain height (through `Services.health`).

A plain `http://` URL (what nodes serve on their private network) is read with one GET
over an asyncio stream: no TLS context, no CA bundle, no HTTP library to import. An
`https://` URL goes through one httpx client per reader, made on first use and closed
with it, so a poll of the fleet loads the CA bundle at most once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 1 << 20
"""A health answer larger than this is not one."""


@dataclass(frozen=True)
class Health:
    """What one read of a health URL learned."""

    ok: bool
    """The URL answered 200."""
    detail: str
    """`health 200`, `health 503`, or why it could not be read."""
    height: int | None = None
    """The chain height the answer carried, if it was JSON with an integer `height`."""


def _height(body: bytes) -> int | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    height = data.get("height") if isinstance(data, dict) else None
    return height if isinstance(height, int) and not isinstance(height, bool) else None


class _HttpsFailed(Exception):
    """An httpx failure, carrying its class name for the detail."""


class HealthReader:
    """Reads health URLs; `close()` when done (it may hold an HTTPS client)."""

    def __init__(self) -> None:
        self._https: Any = None

    async def read(self, url: str, timeout: float) -> Health:
        """GET `url` within `timeout` seconds; never raises for network or protocol failures."""
        parts = urlsplit(url)
        try:
            if parts.scheme == "http":
                status, body = await asyncio.wait_for(self._plain(parts), timeout)
            else:
                status, body = await self._tls(url, timeout)
        except TimeoutError:
            return Health(False, "health URL unreachable (no answer in time)")
        except _HttpsFailed as exc:
            return Health(False, f"health URL unreachable ({exc})")
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            return Health(False, f"health URL unreachable ({exc.__class__.__name__})")
        return Health(status == 200, f"health {status}", _height(body))

    async def _plain(self, parts: Any) -> tuple[int, bytes]:
        host = parts.hostname or "localhost"
        reader, writer = await asyncio.open_connection(host, parts.port or 80)
        try:
            target = parts.path or "/"
            if parts.query:
                target += f"?{parts.query}"
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = lines[0].split(" ", 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
                raise ValueError("not an HTTP answer")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
            }
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked(reader)
            elif "content-length" in headers:
                length = int(headers["content-length"])
                if length > MAX_BODY:
                    raise ValueError("health answer too large")
                body = await reader.readexactly(length)
            else:
                body = await reader.read(MAX_BODY)
            return int(fields[1]), body
        finally:
            writer.close()

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return body
            if len(body) + size > MAX_BODY:
                raise ValueError("health answer too large")
            body += await reader.readexactly(size)
            await reader.readline()

    async def _tls(self, url: str, timeout: float) -> tuple[int, bytes]:
        import httpx

        if self._https is None:
            self._https = httpx.AsyncClient()
        try:
            resp = await self._https.get(url, timeout=timeout)
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.HTTPError as exc:
            raise _HttpsFailed(exc.__class__.__name__) from None
        return resp.status_code, resp.content

    async def close(self) -> None:
        """Close the HTTPS client, if one was made."""
        if self._https is not None:
            client, self._https = self._https, None
            await client.aclose()
