"""Typed parameters resolved against the site before anything runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kconsole.backups.selector import BEFORE, canonical_time
from kconsole.config import parse_duration
from kconsole.config.problems import did_you_mean
from kconsole.errors import UsageError
from kconsole.runbook.model import Runbook, Step
from kconsole.runbook.template import BackupRef, NodeRef, NodesRef
from kconsole.site import Site

BackupResolver = Callable[[str, dict[str, Any]], BackupRef]


def _default_backup(value: str, params: dict[str, Any]) -> BackupRef:
    return BackupRef(id=value)


def parse_param_args(items: list[str]) -> dict[str, str]:
    """`--param K=V` pairs into a dict; UsageError on a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f'--param "{item}" must look like NAME=VALUE.')
        out[key.strip()] = value
    return out


def nodes_named(site: Site, names: list[str], what: str) -> NodesRef:
    """NodeRefs for `names`; UsageError naming an unknown one."""
    out = NodesRef()
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name not in site.nodes:
            raise UsageError(
                f'{what}: unknown node "{name}"{did_you_mean(name, site.nodes)}; '
                f"this site has: {', '.join(site.nodes)}."
            )
        out.append(NodeRef(site.nodes[name]))
    if not out:
        raise UsageError(f"{what}: no nodes given.")
    return out


def group_nodes(site: Site, group: str, what: str) -> NodesRef:
    """The nodes of a group; UsageError if the site has no such group."""
    groups = site.groups()
    if group not in groups:
        raise UsageError(
            f'{what}: unknown group "{group}"{did_you_mean(group, groups)}; '
            f"this site has: {', '.join(groups)}."
        )
    return NodesRef(NodeRef(site.nodes[n]) for n in groups[group])


def resolve_params(
    runbook: Runbook,
    site: Site,
    given: Mapping[str, Any],
    backup_resolver: BackupResolver | None = None,
) -> dict[str, Any]:
    """Check and resolve every parameter; UsageError (exit 2) before anything runs."""
    for name in given:
        if name not in runbook.params:
            known = ", ".join(runbook.params) or "none"
            raise UsageError(
                f'runbook {runbook.id} has no parameter "{name}"'
                f"{did_you_mean(name, runbook.params)}; it takes: {known}."
            )
    resolved: dict[str, Any] = {}
    backups: list[str] = []
    for name, param in runbook.params.items():
        raw = given.get(name, param.default)
        if raw is None:
            hint = f" ({param.help})" if param.help else ""
            raise UsageError(f"runbook {runbook.id} needs --param {name}=...{hint}.")
        what = f"parameter {name}"
        if param.type == "node":
            resolved[name] = nodes_named(site, [str(raw)], what)[0]
        elif param.type == "nodes":
            names = raw if isinstance(raw, list) else str(raw).split(",")
            resolved[name] = nodes_named(site, [str(n) for n in names], what)
        elif param.type == "group":
            resolved[name] = group_nodes(site, str(raw), what)
        elif param.type == "duration":
            try:
                parse_duration(raw)
            except ValueError as exc:
                raise UsageError(f"{what}: {exc}.") from None
            resolved[name] = str(raw)
        elif param.type == "time":
            try:
                resolved[name] = canonical_time(str(raw))
            except ValueError as exc:
                raise UsageError(f"{what}: {exc}.") from None
        elif param.type == "backup":
            if str(raw).startswith(BEFORE):
                try:
                    raw = BEFORE + canonical_time(str(raw)[len(BEFORE) :])
                except ValueError as exc:
                    raise UsageError(f"{what}: {exc}.") from None
            backups.append(name)
            resolved[name] = str(raw)
        else:
            if param.choices and str(raw) not in param.choices:
                raise UsageError(f'{what} must be one of {", ".join(param.choices)}, not "{raw}".')
            resolved[name] = str(raw)
    resolver = backup_resolver or _default_backup
    for name in backups:
        resolved[name] = resolver(resolved[name], resolved)
    return resolved


def step_nodes(
    step: Step,
    site: Site,
    params: Mapping[str, Any],
    render_node: Callable[[str], str] | None = None,
) -> list[NodeRef | None]:
    """The nodes a step runs on: its for_each, its node, or [None] for a local step."""
    what = f"step {step.id}"
    fe = step.for_each
    if fe is not None:
        if fe.group:
            return list(group_nodes(site, fe.group, what))
        if fe.param:
            value = params[fe.param]
            return [value] if isinstance(value, NodeRef) else list(value)
        return list(nodes_named(site, list(fe.nodes), what))
    if step.node:
        name = render_node(step.node) if render_node else step.node
        return list(nodes_named(site, [name], what))
    return [None]
