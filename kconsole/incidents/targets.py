"""Sending one outbox message to its target: a Slack-style webhook or PagerDuty Events API v2.

Secrets (the webhook URL, the routing key) are read from the environment at send time and
never appear in an error: httpx exception text can embed the URL, so only its class is kept.
"""

from __future__ import annotations

from typing import Any

import httpx

from kconsole.incidents.outbox import Message, Sender
from kconsole.site import NotifyTarget, Site

PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
"""The incident severity as PagerDuty names it."""


class NotDelivered(Exception):
    """A message could not be delivered; the text says why without naming a secret."""


def pagerduty_event(target: NotifyTarget, message: Message, source: str) -> dict[str, Any]:
    """The Events API v2 body for a message (routing key included: never log this)."""
    body: dict[str, Any] = {
        "routing_key": target.routing_key() or "",
        "event_action": message.event_action,
        "dedup_key": message.dedup_key or message.incident or message.id,
    }
    if message.event_action == "trigger":
        body["payload"] = {
            "summary": (message.title or message.text.splitlines()[0])[:1024],
            "source": source,
            "severity": PAGERDUTY_SEVERITY.get(message.severity, "error"),
            "custom_details": {"text": message.text, **message.details},
        }
    return body


def make_sender(site: Site, client: httpx.AsyncClient) -> Sender:
    """A Sender posting to the site's `[notify.*]` targets through `client`."""

    async def send(message: Message) -> None:
        target = site.notify.get(message.target)
        if target is None:
            raise NotDelivered(f"notify target {message.target} is no longer in the site file")
        url = target.url()
        if not url:
            raise NotDelivered(f"{target.secret_env} is not set for notify target {target.name}")
        if target.kind == "pagerduty":
            body = pagerduty_event(target, message, site.name)
        else:
            body = {"text": message.text}
        try:
            resp = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise NotDelivered(f"{target.name}: {exc.__class__.__name__}") from None
        if resp.status_code >= 300:
            raise NotDelivered(f"{target.name} answered HTTP {resp.status_code}")

    return send
