"""The consistency check after a recovery: each restored node's height against its peers'.

A drill runs it after its recovery, and so does every ordinary run (`kconsole run`) that
restored a backup onto a node and succeeded: the report says "Data Consistency: Verified"
only when this check, stored as the run's `consistency` evidence, proved it.
"""

from __future__ import annotations

from typing import Any

from kconsole.fleet import poll_fleet
from kconsole.journal import RunSummary, iso
from kconsole.reports import consistency_check, write_evidence
from kconsole.runbook.model import Runbook
from kconsole.services import Services
from kconsole.site import Site

CATCHUP_WITHIN = 30.0
"""Seconds a recovered node is given to come within the limit of its peers."""


def restored_nodes(summary: RunSummary, runbook: Runbook) -> list[str]:
    """The nodes a run restored a backup onto (its finished `backup.restore` steps)."""
    restores = {sid for sid, step in runbook.steps.items() if step.action == "backup.restore"}
    names: list[str] = []
    for r in summary.records:
        if (
            r.get("type") == "step"
            and r.get("event") == "finished"
            and (r.get("action") == "backup.restore" or r.get("step") in restores)
            and r.get("node")
            and r["node"] not in names
        ):
            names.append(str(r["node"]))
    return names


async def check_heights(
    site: Site, nodes: list[str], services: Services, within: float, source: str
) -> dict[str, Any]:
    """Poll until every node in `nodes` is within the limit of its peers, no node got closer
    since the previous poll, or `within` seconds of the services' clock have passed; the
    last poll's check."""
    check: dict[str, Any] = {}
    before: list[int | None] | None = None
    for _ in range(max(1, int(within / 2) + 1)):
        statuses = await poll_fleet(site, services, timeout=5, source=source)
        heights = {s.name: s.height for s in statuses if s.state in ("active", "behind")}
        check = consistency_check(heights, nodes, iso(services.clock.now()))
        if all(n["ok"] for n in check["nodes"]):
            break
        lags = [n["lag_blocks"] for n in check["nodes"]]
        if before is not None and not any(
            a is not None and (b is None or a < b) for a, b in zip(lags, before, strict=True)
        ):
            break  # no node got closer to its peers since the last poll: it is not catching up
        before = lags
        await services.clock.sleep(2)
    return check


async def verify_recovery(
    site: Site, run_id: str, nodes: list[str], services: Services, within: float | None = None
) -> dict[str, Any]:
    """Check the recovered `nodes` against their peers and keep it as the run's evidence."""
    check = await check_heights(
        site,
        nodes,
        services,
        CATCHUP_WITHIN if within is None else within,
        source="a recovery's consistency check",
    )
    write_evidence(site, run_id, consistency=check)
    return check
