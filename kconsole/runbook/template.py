"""Templating of step fields: `{param}`, `{node.host}`, `{backup.path}`, `{run.id}`, `{now:%Y%m%d}`.

In `command` fields every substituted value is shell-quoted, so a parameter can never
inject shell syntax. Validation walks the same placeholders to find undefined names.

Templates take names, not Python's format language: no conversions (`!r`), no indexing,
one level of attribute from a fixed list, and a format spec only on `{now}` (a strftime
pattern of at most NOW_SPEC_MAX characters). `validate` rejects the rest, and the renderer
refuses it too, so a runbook that skipped validation cannot reach a private attribute or
allocate a huge padded string.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kconsole.errors import OperationFailed
from kconsole.site import Node

NOW_SPEC_MAX = 64
"""Longest strftime pattern `{now:...}` takes."""

NODE_ATTRS = ("name", "host", "port", "root", "groups", "health_url", "service")
BACKUP_ATTRS = ("id", "path", "kind", "node", "key_id", "created", "location", "size")
RUN_ATTRS = ("id", "drill", "runbook", "user")
SITE_ATTRS = ("name", "health_url")
BUILTINS: dict[str, tuple[str, ...] | None] = {
    "run": RUN_ATTRS,
    "site": SITE_ATTRS,
    "now": (),
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
        if format_spec and not (isinstance(value, datetime) and len(format_spec) <= NOW_SPEC_MAX):
            raise OperationFailed(
                f"template format spec :{format_spec[:20]} is not allowed (only {{now:...}} takes one)."
            )
        text = super().format_field(value, format_spec)
        return shlex.quote(text) if self.quote else text

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            raise OperationFailed(f"template conversion !{conversion} is not allowed.")
        return value

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        root, _, attr = field_name.partition(".")
        if "[" in field_name or "." in attr or attr.startswith("_"):
            raise OperationFailed(f"template placeholder {{{field_name}}} is not allowed.")
        obj = self.get_value(root, args, kwargs)
        return (getattr(obj, attr) if attr else obj), root

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
    for _, field_name, spec, conversion in string.Formatter().parse(template):
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError("empty or positional placeholder {} (write {name})")
        if "[" in field_name:
            raise ValueError(f"indexing in placeholder {{{field_name}}} is not supported")
        if conversion is not None:
            raise ValueError(
                f"conversion !{conversion} in placeholder {{{field_name}}} is not supported "
                "(templates take names)"
            )
        root, _, attr = field_name.partition(".")
        if not root.isidentifier() or (attr and not attr.replace(".", "_").isidentifier()):
            raise ValueError(f"placeholder {{{field_name[:40]}}} is not a name")
        out.append((root, attr or None))
        if spec and "{" in spec:
            raise ValueError(f"nested placeholder in {{{field_name}:{spec[:20]}}} is not supported")
        if spec and root != "now":
            raise ValueError(
                f"format spec in placeholder {{{field_name}:{spec[:20]}}} is not supported: "
                "templates take names, not format specs (only {now:...} takes a strftime pattern)"
            )
        if spec and len(spec) > NOW_SPEC_MAX:
            raise ValueError(
                f"the strftime pattern of {{now}} is longer than {NOW_SPEC_MAX} characters"
            )
    return out
