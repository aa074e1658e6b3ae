"""Fleet status: one concurrent poll of every node (service state over SSH, health URL).

An unreachable node never delays the others: every node is polled at once under its
own deadline, and failures become a state with a reason, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

from kconsole.errors import OperationFailed
from kconsole.outages import record_polls
from kconsole.services import Services, run_once
from kconsole.site import Node, Site


@dataclass
class NodeStatus:
    """What one poll learned about one node."""

    name: str
    host: str
    groups: tuple[str, ...]
    state: str
    """active, behind (active, but BEHIND_BLOCKS or more below the fleet's highest chain
    height), inactive or unreachable."""
    detail: str
    latency_ms: float | None
    height: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The `status --json` line."""
        out = asdict(self)
        out["groups"] = list(self.groups)
        return out


async def poll_node(node: Node, services: Services, timeout: float) -> NodeStatus:
    """Poll one node; never raises."""
    transport = services.transport
    latency: float | None = None
    try:
        if transport is None:
            raise OperationFailed("no SSH transport")
        # One command per node: its round trip is the latency shown.
        took, result = await asyncio.wait_for(
            transport.timed_run(node, f"systemctl is-active {node.service}", timeout=timeout),
            timeout,
        )
        latency = round(took, 1)
        service = result.stdout.decode("utf-8", "replace").strip() or f"exit {result.exit_status}"
        state = "active" if result.exit_status == 0 and service == "active" else "inactive"
        detail = f"{node.service} {service}"
    except TimeoutError:
        return NodeStatus(
            node.name,
            node.host,
            node.groups,
            "unreachable",
            f"no answer within {timeout:g}s",
            latency,
        )
    except OperationFailed as exc:
        return NodeStatus(
            node.name, node.host, node.groups, "unreachable", str(exc).rstrip("."), latency
        )
    height = None
    if node.health_url:
        health = await services.health.read(node.health_url, min(timeout, 5.0))
        height = health.height
        detail = f"{detail}, {health.detail}"
        if state == "active" and not health.ok:
            detail += " (service up but unhealthy)"
    return NodeStatus(node.name, node.host, node.groups, state, detail, latency, height)


BEHIND_BLOCKS = 100
"""How far below the highest node of the fleet an active node's chain height may be before
it shows as `behind` (a node recovered from a backup is still catching up with its peers)."""


def mark_behind(statuses: list[NodeStatus], limit: int = BEHIND_BLOCKS) -> None:
    """Turn each active node whose height is `limit` or more blocks below the highest
    height any node reported into `behind`, saying by how much (in place)."""
    heights = [s.height for s in statuses if s.height is not None]
    if not heights:
        return
    top = max(heights)
    leader = next(s.name for s in statuses if s.height == top)
    for s in statuses:
        if s.state == "active" and s.height is not None and top - s.height >= limit:
            s.state = "behind"
            s.detail += f", {top - s.height} blocks behind {leader} (height {top})"


async def poll_fleet(
    site: Site,
    services: Services,
    timeout: float | None = None,
    limit: int = 64,
    source: str = "a fleet status poll",
) -> list[NodeStatus]:
    """Poll every node concurrently (at most `limit` at once); results in site order.

    Each node's first failure is recorded in the site's state (`kconsole.outages`, written
    in a thread so an event loop never waits on the disk), named by `source`."""
    per_node = timeout or (site.ssh.connect_timeout + 10.0)
    gate = asyncio.Semaphore(limit)

    async def one(node: Node) -> NodeStatus:
        async with gate:
            try:
                return await asyncio.wait_for(poll_node(node, services, per_node), per_node + 5)
            except TimeoutError:
                return NodeStatus(
                    node.name,
                    node.host,
                    node.groups,
                    "unreachable",
                    f"no answer within {per_node:g}s",
                    None,
                )

    statuses = list(await asyncio.gather(*(one(n) for n in site.nodes.values())))
    mark_behind(statuses)
    seen = services.clock.now()
    # An unwritable state dir must not stop a status poll; a report then falls back.
    with contextlib.suppress(OSError):
        await asyncio.to_thread(
            record_polls,
            site.state_dir,
            [(s.name, s.state, s.detail) for s in statuses],
            seen,
            source,
        )
    return statuses


def poll_once(site: Site) -> tuple[list[NodeStatus], float]:
    """Blocking single poll for the CLI: (statuses, seconds taken)."""

    t0 = time.monotonic()
    statuses = run_once(
        site, lambda services: poll_fleet(site, services, source="`kconsole status`")
    )
    return statuses, time.monotonic() - t0
