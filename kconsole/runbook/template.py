"""Templating of step fields: `{param}`, `{node.host}`, `{backup.path}`, `{run.id}`, `{now:%Y%m%d}`.

In `command` fields every substituted value is shell-quoted, so a parameter can never
inject shell syntax. Validation walks the same placeholders to find undefined names.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kconsole.site import Node

NODE_ATTRS = ("name", "host", "port", "root", "groups", "health_url", "service")
BACKUP_ATTRS = ("id", "path", "kind", "node", "key_id", "created", "location", "size")
RUN_ATTRS = ("id", "drill", "runbook", "user")
SITE_ATTRS = ("name", "health_url")
BUILTINS: dict[str, tuple[str, ...] | None] = {
    "run": RUN_ATTRS,
    "site": SITE_ATTRS,
    "now": None,
}


class NodeRef:
    """A node as seen by a template: `{node}` is its name, `{node.host}` its address."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.name = node.name
        self.host = node.host
        self.port = node.port
        self.root = node.root
        self.groups = ",".join(node.groups)
        self.health_url = node.health_url
        self.service = node.service

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


class NodesRef(list[NodeRef]):
    """A list of nodes: `{nodes}` is their names joined with commas."""

    def __format__(self, spec: str) -> str:
        return format(",".join(n.name for n in self), spec)


@dataclass
class BackupRef:
    """A backup chosen by a parameter; resolved from the catalog when there is one."""

    id: str
    path: str = ""
    kind: str = ""
    node: str = ""
    key_id: str = ""
    created: str = ""
    location: str = ""
    size: int = 0

    def __format__(self, spec: str) -> str:
        return format(self.id, spec)


@dataclass
class RunRef:
    """The run itself."""

    id: str
    drill: bool
    runbook: str
    user: str

    def __format__(self, spec: str) -> str:
        return format(self.id, spec)


@dataclass
class SiteRef:
    """The site."""

    name: str
    health_url: str = ""

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


class _Formatter(string.Formatter):
    def __init__(self, quote: bool) -> None:
        self.quote = quote

    def format_field(self, value: Any, format_spec: str) -> str:
        text = super().format_field(value, format_spec)
        return shlex.quote(text) if self.quote else text

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int):
            raise KeyError(f"positional placeholder {{{key}}} is not allowed")
        return kwargs[key]


def render(template: str, context: Mapping[str, Any], *, quote: bool = False) -> str:
    """Render `template`; with `quote`, every substituted value is shell-quoted."""
    return _Formatter(quote).vformat(template, (), dict(context))


def render_value(value: Any, context: Mapping[str, Any], *, quote: bool = False) -> Any:
    """Render strings inside `value` (a string, list or table)."""
    if isinstance(value, str):
        return render(value, context, quote=quote)
    if isinstance(value, list):
        return [render_value(v, context, quote=quote) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, context, quote=quote) for k, v in value.items()}
    return value


def placeholders(template: str) -> list[tuple[str, str | None]]:
    """The (root name, attribute) of every placeholder; ValueError on bad syntax."""
    out: list[tuple[str, str | None]] = []
    for _, field_name, spec, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError("empty or positional placeholder {} (write {name})")
        if "[" in field_name:
            raise ValueError(f"indexing in placeholder {{{field_name}}} is not supported")
        root, _, attr = field_name.partition(".")
        out.append((root, attr or None))
        if spec and "{" in spec:
            raise ValueError(f"nested placeholder in {{{field_name}:{spec}}} is not supported")
    return out
