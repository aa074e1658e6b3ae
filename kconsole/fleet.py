"""Fleet status: one concurrent poll of every node (health URL, service state over SSH).

An unreachable node never delays the others: every node is polled at once under its
own deadline, and failures become a state with a reason, never an exception.

Two ways to learn a node's state (`poll_fleet(..., ssh=...)`):
- `ssh=False` (`kconsole status`): health first. A node whose health URL answers 200 is
  `active` from that answer alone and is not contacted over SSH (its detail says
  "service not checked over SSH"); a node without a health URL, or whose health URL
  fails or answers anything but 200, gets the service check over SSH.
- `ssh=True` (`kconsole status --ssh`, the dashboard, drills, recovery checks): the
  service check over SSH on every node, with the health URL read alongside.

`NodeStatus.checked` says which of the two were asked, `latency_of` what `latency_ms`
measured: the SSH command's round trip (handshake not counted) or the health read's
(connect, GET, answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

from kconsole.errors import OperationFailed
from kconsole.health import Health
from kconsole.outages import record_polls
from kconsole.services import Services, run_once
from kconsole.site import Node, Site

HEALTH_TIMEOUT = 5.0
"""The longest a health read may take before the node counts as not answering it."""


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
    checked: tuple[str, ...] = ("ssh",)
    """What was asked, in order: "health" (the node's health URL), "ssh" (the service
    check over SSH)."""
    latency_of: str | None = None
    """What `latency_ms` measured: "ssh" (the command's round trip) or "health" (the
    health read's); None when nothing answered."""

    def as_json(self) -> dict[str, Any]:
        """The `status --json` line."""
        out = asdict(self)
        out["groups"] = list(self.groups)
        out["checked"] = list(self.checked)
        return out


async def _service(node: Node, services: Services, timeout: float) -> NodeStatus:
    """The service check over SSH: one command, its round trip the latency."""
    transport = services.transport
    try:
        if transport is None:
            raise OperationFailed("no SSH transport")
        took, result = await asyncio.wait_for(
            transport.timed_run(node, f"systemctl is-active {node.service}", timeout=timeout),
            timeout,
        )
    except TimeoutError:
        return NodeStatus(
            node.name,
            node.host,
            node.groups,
            "unreachable",
            f"no answer within {timeout:g}s",
            None,
            latency_of=None,
        )
    except OperationFailed as exc:
        return NodeStatus(
            node.name, node.host, node.groups, "unreachable", str(exc).rstrip("."), None
        )
    service = result.stdout.decode("utf-8", "replace").strip() or f"exit {result.exit_status}"
    state = "active" if result.exit_status == 0 and service == "active" else "inactive"
    return NodeStatus(
        node.name,
        node.host,
        node.groups,
        state,
        f"{node.service} {service}",
        round(took, 1),
        latency_of="ssh",
    )


async def _health(node: Node, services: Services, timeout: float) -> tuple[Health, float]:
    """The node's health read and its round trip in ms."""
    assert node.health_url
    started = time.monotonic()
    health = await services.health.read(node.health_url, min(timeout, HEALTH_TIMEOUT))
    return health, round((time.monotonic() - started) * 1000.0, 1)


def _with_health(status: NodeStatus, health: Health) -> NodeStatus:
    """The SSH check's status with the health read's answer added."""
    status.checked = ("health", "ssh")
    status.height = health.height
    status.detail = f"{status.detail}, {health.detail}"
    if status.state == "active" and not health.ok:
        status.detail += " (service up but unhealthy)"
    return status


async def poll_node(
    node: Node, services: Services, timeout: float, *, ssh: bool = True
) -> NodeStatus:
    """Poll one node; never raises. With `ssh` the service is checked over SSH whatever
    the health URL says; without, only when the health URL is missing or not 200."""
    if not node.health_url:
        return await _service(node, services, timeout)
    if ssh:
        status, (health, _) = await asyncio.gather(
            _service(node, services, timeout), _health(node, services, timeout)
        )
        return _with_health(status, health)
    started = time.monotonic()
    health, took = await _health(node, services, timeout)
    if health.ok:
        return NodeStatus(
            node.name,
            node.host,
            node.groups,
            "active",
            f"{health.detail}, service not checked over SSH",
            took,
            health.height,
            checked=("health",),
            latency_of="health",
        )
    left = max(1.0, timeout - (time.monotonic() - started))
    return _with_health(await _service(node, services, left), health)


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
    *,
    ssh: bool = True,
) -> list[NodeStatus]:
    """Poll every node concurrently (at most `limit` at once); results in site order.
    `ssh=False` reaches a node over SSH only where its health URL does not answer 200.

    Each node's first failure is recorded in the site's state (`kconsole.outages`, written
    in a thread so an event loop never waits on the disk), named by `source`."""
    per_node = timeout or (site.ssh.connect_timeout + 10.0)
    gate = asyncio.Semaphore(limit)

    async def one(node: Node) -> NodeStatus:
        async with gate:
            try:
                return await asyncio.wait_for(
                    poll_node(node, services, per_node, ssh=ssh), per_node + 5
                )
            except TimeoutError:
                # A health read alone is bounded well below this: SSH was being tried.
                return NodeStatus(
                    node.name,
                    node.host,
                    node.groups,
                    "unreachable",
                    f"no answer within {per_node:g}s",
                    None,
                    checked=("health", "ssh") if node.health_url else ("ssh",),
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


def poll_once(site: Site, *, ssh: bool = False) -> tuple[list[NodeStatus], float]:
    """Blocking single poll for the CLI: (statuses, seconds taken). Health first unless
    `ssh`; the SSH transport (and asyncssh) is only set up if some node needs it."""

    t0 = time.monotonic()
    statuses = run_once(
        site,
        lambda services: poll_fleet(site, services, source="`kconsole status`", ssh=ssh),
        lazy_transport=True,
    )
    return statuses, time.monotonic() - t0
