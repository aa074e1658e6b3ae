"""Remapping the console's keys from a `[keys]` table: binding id = "key" (or "key,key").

    [keys]
    show-runbooks = "f2"
    run-abort = "ctrl+x"

Every Binding in the console has a stable kebab-case id; `binding_ids()` lists them, and
an unknown id or a non-string value is refused naming the file, line and column.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textual.binding import Binding

from kconsole.config import ProblemList, load_toml
from kconsole.config.problems import did_you_mean
from kconsole.config.source import TomlFileError
from kconsole.errors import UsageError

KEYMAP_ENV = "KCONSOLE_KEYMAP"
"""Environment variable naming the keymap file (else the XDG config directory's)."""


def _console_classes() -> list[Any]:
    from screens.app import KconsoleApp

    return KconsoleApp.binding_owners()


def binding_ids() -> dict[str, Binding]:
    """Every remappable binding of the console, by id."""
    out: dict[str, Binding] = {}
    for owner in _console_classes():
        for binding in owner.BINDINGS:
            if isinstance(binding, Binding) and binding.id:
                out.setdefault(binding.id, binding)
    return out


def _entry_problem(binding_id: str, keys: Any, known: Mapping[str, Binding]) -> str | None:
    if binding_id not in known:
        return f'unknown binding id "{binding_id}"{did_you_mean(binding_id, known)}'
    if not isinstance(keys, str) or not keys.strip():
        return f'{binding_id} must be a key string such as "f2" or "ctrl+x,f2"'
    return None


def check_keymap(keymap: Mapping[str, Any], source: str = "keymap") -> dict[str, str]:
    """The keymap with every id known and every value a key string; UsageError otherwise."""
    known = binding_ids()
    problems = [f"{source}: {p}" for k, v in keymap.items() if (p := _entry_problem(k, v, known))]
    if problems:
        raise UsageError("\n".join(problems))
    return {k: v.replace(" ", "") for k, v in keymap.items()}


def default_keymap_path() -> Path:
    """`$KCONSOLE_KEYMAP`, else `$XDG_CONFIG_HOME/kconsole/keys.toml` (~/.config by default)."""
    if os.environ.get(KEYMAP_ENV):
        return Path(os.environ[KEYMAP_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "kconsole" / "keys.toml"


def load_keymap(path: Path, required: bool = False) -> dict[str, str]:
    """The `[keys]` table of a keymap file; {} if it is absent and not `required`."""
    if not path.exists():
        if required:
            raise UsageError(f"keymap file {path} not found.")
        return {}
    try:
        src = load_toml(path)
    except TomlFileError as exc:
        raise UsageError(str(exc.problem)) from None
    problems = ProblemList()
    unknown_tables = [k for k in src.data if k != "keys"]
    for key in unknown_tables:
        problems.append(
            src.problem((key,), f'unknown table "{key}"; a keymap file holds only [keys]')
        )
    keys = src.data.get("keys", {})
    if not isinstance(keys, dict):
        problems.append(src.problem(("keys",), '[keys] must be a table of binding id = "key"'))
        keys = {}
    known = binding_ids()
    for binding_id, value in keys.items():
        if (problem := _entry_problem(binding_id, value, known)) is not None:
            problems.append(src.problem(("keys", binding_id), problem))
    problems.raise_if_any()
    return {k: v.replace(" ", "") for k, v in keys.items()}
