"""What the console offers first when nodes are down: the runbook that fits and its
parameters pre-filled. Suggestions only; the operator confirms every one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kconsole.fleet import NodeStatus
from kconsole.runbook.model import Runbook
from kconsole.site import Site
from screens.runbook_library import RunbookEntry

PREFERRED_FOR_DOWN = ("validator", "bootstrap", "api", "dr")
"""Which down node to pre-select first: a validator outage costs the most."""


def down_nodes(site: Site, statuses: Iterable[NodeStatus]) -> list[str]:
    """Nodes not active in the last poll, validators first, then in site order."""
    down = {s.name for s in statuses if s.state != "active"}

    def rank(name: str) -> int:
        groups = site.nodes[name].groups
        return next(
            (i for i, g in enumerate(PREFERRED_FOR_DOWN) if g in groups), len(PREFERRED_FOR_DOWN)
        )

    ordered = [n for n in site.nodes if n in down]
    return sorted(ordered, key=rank)


def scenario_for(site: Site, down: Sequence[str]) -> str | None:
    """single-node, multiple-nodes or complete-network for a set of down nodes; None if all up."""
    if not down:
        return None
    if len(down) == 1:
        return "single-node"
    validators = [n for n, node in site.nodes.items() if "validator" in node.groups]
    if len(down) == len(site.nodes) or (validators and all(v in down for v in validators)):
        return "complete-network"
    return "multiple-nodes"


def suggest_runbook(entries: Sequence[RunbookEntry], scenario: str | None) -> RunbookEntry | None:
    """The loaded runbook for `scenario` (a `recover-*` one first), or None."""
    if scenario is None:
        return None
    fits = [e for e in entries if e.runbook is not None and e.runbook.scenario == scenario]
    fits.sort(key=lambda e: (not e.id.startswith("recover-"), e.id))
    return fits[0] if fits else None


def default_params(runbook: Runbook, site: Site, down: Sequence[str]) -> dict[str, str]:
    """A starting value for every parameter: the down node(s) where a node is asked for."""
    out: dict[str, str] = {}
    for name, param in runbook.params.items():
        default = "" if param.default is None else param.default
        if isinstance(default, list):
            default = ",".join(str(d) for d in default)
        value = str(default)
        if param.type == "node" and down:
            value = down[0]
        elif param.type == "nodes" and down:
            value = ",".join(down)
        elif param.type == "group" and not value and down:
            groups = site.nodes[down[0]].groups
            value = groups[0] if groups else ""
        elif param.type == "backup" and not value:
            value = "latest"
        out[name] = value
    return out
