"""`notify`: post a message to a Slack-style webhook named in the site's [notify] table."""

from __future__ import annotations

from typing import ClassVar

import httpx

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed
from kconsole.site import NotifyTarget, Site


def pick_target(site: Site, name: str | None) -> NotifyTarget | None:
    """The named target, or the site's first Slack-style one (a runbook's `notify` posts text)."""
    if name:
        if name not in site.notify:
            raise OperationFailed(f'notify target "{name}" is not in the site\'s [notify] table.')
        if site.notify[name].kind != "slack":
            raise OperationFailed(
                f'notify target "{name}" is PagerDuty, which pages people through incidents; '
                "a notify step posts to a Slack-style webhook."
            )
        return site.notify[name]
    return next((t for t in site.notify.values() if t.kind == "slack"), None)


async def send_webhook(target: NotifyTarget, text: str, timeout: float = 10.0) -> str:
    """Post `text`; returns what happened in words. The URL is never included in messages."""
    url = target.url()
    if not url:
        return f"not sent: {target.secret_env} is not set for notify target {target.name}"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.post(url, json={"text": text})
    except httpx.HTTPError as exc:
        # The exception text can embed the URL (a secret): name only its class.
        raise OperationFailed(
            f"notify target {target.name} failed: {exc.__class__.__name__}."
        ) from None
    if resp.status_code >= 300:
        raise OperationFailed(f"notify target {target.name} answered HTTP {resp.status_code}.")
    return f"sent to {target.name}"


class Notify(Action):
    """Tell the team."""

    name = "notify"
    help = "Post a message to a webhook (Slack-style)."
    fields: ClassVar[dict[str, Field]] = {
        "text": Field("text", required=True),
        "target": Field("str", help="name of a [notify.*] table; default the first"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Send, prefixing drills so nobody mistakes one for an outage."""
        text = ctx.values["text"]
        if ctx.drill:
            text = f"[DRILL] {text}"
        target = pick_target(ctx.site, ctx.values.get("target"))
        if target is None:
            outcome = "not sent: the site has no [notify] target"
        else:
            outcome = await send_webhook(target, text, ctx.services.http_timeout)
        await ctx.emit("stdout", f"{outcome}: {text}")
        return ActionResult(exit_code=0, stdout=text, summary=outcome)
