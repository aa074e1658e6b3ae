"""Which nodes the site's backup runbooks back up, per backup kind: the nodes the catalog's
freshness must show even before their first backup.

Read from the loaded runbooks (shipped, then the site's own `runbooks/`, which replace a
shipped one of the same id), so a step's `for_each` is read the one way the loader reads it.
"""

from __future__ import annotations

from pathlib import Path

from kconsole.config.problems import InvalidFile
from kconsole.runbook.load import load_runbook, shipped_runbooks_dir
from kconsole.runbook.model import Runbook
from kconsole.site import Site


def site_runbooks(site: Site) -> list[Runbook]:
    """The shipped runbooks and the site's own, by id (the site's replaces a shipped one);
    a runbook that does not load is left out."""
    files: dict[str, Path] = {}
    for d in (shipped_runbooks_dir(), site.base_dir / "runbooks"):
        if d.is_dir():
            for f in d.glob("*.toml"):
                files[f.stem] = f
    out = []
    for f in files.values():
        try:
            out.append(load_runbook(f))
        except (InvalidFile, OSError, UnicodeDecodeError):
            continue
    return out


def expected_nodes(site: Site, runbooks: list[Runbook] | None = None) -> dict[str, list[str]]:
    """Kind -> the site's nodes that some `backup.create` step backs up (its `for_each` node
    list or group, or a literal `node`), in the site's node order. A param target is only
    known at run time and adds nothing; so does a runbook that does not load, since this
    only widens what freshness shows."""
    groups = site.groups()
    out: dict[str, set[str]] = {}
    for rb in site_runbooks(site) if runbooks is None else runbooks:
        for step in rb.steps.values():
            if step.action != "backup.create":
                continue
            kind = step.fields.get("kind") or rb.kind
            if not isinstance(kind, str) or not kind:
                continue
            names: list[str] = []
            fe = step.for_each
            if fe is not None:
                names = groups.get(fe.group, []) if fe.group else list(fe.nodes)
            elif step.node and "{" not in step.node:
                names = [step.node]
            out.setdefault(kind, set()).update(n for n in names if n in site.nodes)
    order = {name: i for i, name in enumerate(site.nodes)}
    return {k: sorted(v, key=lambda n: (order.get(n, len(order)), n)) for k, v in out.items()}
