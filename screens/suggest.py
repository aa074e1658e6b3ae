"""What the console offers first when nodes are down: the runbook that fits and its
parameters pre-filled. Suggestions only; the operator confirms every one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kconsole.backups.selector import parse_selector
from kconsole.fleet import NodeStatus
from kconsole.runbook.model import Runbook
from kconsole.site import Site
from screens.runbook_library import RunbookEntry
from screens.widgets import short_duration

PREFERRED_FOR_DOWN = ("validator", "bootstrap", "api", "dr")
"""Which down node to pre-select first: a validator outage costs the most."""


def down_nodes(site: Site, statuses: Iterable[NodeStatus]) -> list[str]:
    """Nodes inactive or unreachable in the last poll, validators first, then in site order
    (a node that is up but behind its peers is catching up, not down)."""
    down = {s.name for s in statuses if s.state not in ("active", "behind")}

    def rank(name: str) -> int:
        groups = site.nodes[name].groups
        return next(
            (i for i, g in enumerate(PREFERRED_FOR_DOWN) if g in groups), len(PREFERRED_FOR_DOWN)
        )

    ordered = [n for n in site.nodes if n in down]
    return sorted(ordered, key=rank)


def recovery_target(down: Sequence[str], highlighted: str | None) -> list[str]:
    """Which node Enter on the dashboard recovers: the highlighted one only if it is down
    itself, else the one down node; with several down (and a healthy one highlighted) all
    of them, for the operator to choose from. Empty when nothing is down."""
    if highlighted is not None and highlighted in down:
        return [highlighted]
    return list(down)


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


RESTORABLE = ("ok", "stale")
"""Catalog statuses of a copy that can be restored (stale only means old)."""


def backup_choice(
    value: str,
    node: str,
    rows: Sequence[Mapping[str, Any]] | None,
    now: datetime,
    kind: str = "blockchain-state",
) -> str:
    """What a backup parameter will restore, in words: which backup, how old, where it is.

    The engine decides at run time (the newest good one may change meanwhile); this is
    what the catalog as last read says, so the operator sees the choice before starting.
    """
    if rows is None:
        return "the catalog has not been read yet"
    try:
        selector = parse_selector(value)
    except ValueError as exc:
        return str(exc)
    mine = [r for r in rows if r.get("node") == node and r.get("kind") == kind]
    if selector.backup_id:
        chosen = [r for r in rows if r.get("id") == selector.backup_id]
    else:
        good = [r for r in mine if r.get("status") in RESTORABLE]
        if selector.before is not None:
            good = [r for r in good if _created(r) < selector.before]
        newest = max((_created(r) for r in good), default=None)
        chosen = [r for r in good if _created(r) == newest] if newest is not None else []
    if not chosen:
        what = f"{kind} backup of {node}" + (
            f" {selector.describe()}" if selector.before is not None else ""
        )
        return f"no good {what} in the catalog"
    first = chosen[0]
    age = (now - _created(first)).total_seconds()
    where = ", ".join(sorted({str(r.get("location")) for r in chosen}))
    return f"{first.get('id')} · {short_duration(age)} old · in {where}"


def _created(row: Mapping[str, Any]) -> datetime:
    text = str(row.get("created", ""))
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def chosen_node(runbook: Runbook, raw: Mapping[str, Any]) -> str | None:
    """The node a runbook's backup parameter is about: its first node (or nodes) parameter."""
    for name, param in runbook.params.items():
        if param.type in ("node", "nodes"):
            value = str(raw.get(name) or param.default or "")
            first = value.split(",")[0].strip()
            return first or None
    return None
