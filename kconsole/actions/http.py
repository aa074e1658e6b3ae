"""`http.check`: one HTTP GET whose status (and optionally body) must match."""

from __future__ import annotations

import re
from typing import ClassVar

import httpx

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed


async def http_get(url: str, timeout: float, verify: bool = True) -> httpx.Response:
    """GET `url`; connection problems become one-sentence OperationFailed errors."""
    try:
        async with httpx.AsyncClient(
            timeout=timeout, verify=verify, follow_redirects=True
        ) as client:
            return await client.get(url)
    except httpx.TimeoutException:
        raise OperationFailed(f"{url} did not answer within {timeout:g}s.") from None
    except httpx.HTTPError as exc:
        raise OperationFailed(f"{url} cannot be reached: {exc.__class__.__name__}.") from None


class HttpCheck(Action):
    """Check a health URL."""

    name = "http.check"
    help = "GET a URL; succeed when the status (and body pattern) match."
    fields: ClassVar[dict[str, Field]] = {
        "url": Field("text", required=True),
        "status": Field("int", default=200),
        "match": Field("str", help="regular expression the body must contain"),
        "verify_tls": Field("bool", default=True),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Fetch the URL and compare."""
        url = ctx.values["url"].strip()
        if not url:
            raise OperationFailed(
                f"step {ctx.step.id} has an empty URL (is [site] health_url or the node's health_url set?)."
            )
        want = int(ctx.values.get("status") or 200)
        resp = await http_get(
            url, ctx.services.http_timeout, bool(ctx.values.get("verify_tls", True))
        )
        body = resp.text
        await ctx.emit("stdout", f"{url} -> {resp.status_code}")
        if resp.status_code != want:
            raise OperationFailed(f"{url} answered {resp.status_code}, expected {want}.")
        pattern = ctx.values.get("match")
        if pattern and not re.search(pattern, body):
            raise OperationFailed(
                f"{url} answered {resp.status_code} but the body does not match {pattern!r}."
            )
        return ActionResult(exit_code=0, stdout=body[:4096])
