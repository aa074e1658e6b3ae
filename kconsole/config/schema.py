"""Small checks shared by the runbook and site validators: keys, types, durations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kconsole.config.durations import parse_duration
from kconsole.config.problems import Problem, did_you_mean
from kconsole.config.source import KeyPath, SourceFile


def check_keys(
    src: SourceFile,
    table: Mapping[str, Any],
    keypath: KeyPath,
    allowed: Iterable[str],
    required: Iterable[str],
    what: str,
    problems: list[Problem],
) -> None:
    """Report unknown keys (with a suggestion) and missing required keys of `table`."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            problems.append(
                src.problem(
                    (*keypath, key), f'unknown key "{key}" in {what}{did_you_mean(key, allowed)}'
                )
            )
    for key in required:
        if key not in table:
            problems.append(src.problem(keypath, f'{what} is missing required key "{key}"'))


def expect_type(
    src: SourceFile,
    table: Mapping[str, Any],
    keypath: KeyPath,
    key: str,
    kinds: type | tuple[type, ...],
    label: str,
    problems: list[Problem],
) -> bool:
    """True if `table[key]` is absent or of `kinds`; else report `key must be LABEL`."""
    if key not in table:
        return True
    value = table[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        problems.append(
            src.problem((*keypath, key), f'"{key}" must be {label}, not {_show(value)}')
        )
    return ok


def expect_duration(
    src: SourceFile, table: Mapping[str, Any], keypath: KeyPath, key: str, problems: list[Problem]
) -> float | None:
    """Seconds of the duration at `table[key]`, or None (reporting a bad one)."""
    if key not in table:
        return None
    try:
        return parse_duration(table[key])
    except ValueError as exc:
        problems.append(src.problem((*keypath, key), f'bad duration for "{key}": {exc}'))
        return None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
