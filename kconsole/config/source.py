"""TOML files read with a map from every key to its line and column.

`tomllib` gives values but no positions; operators need `file:line:col`. The map is
built by a light scan of the text that follows TOML's table headers, arrays of tables,
dotted keys and inline tables; a key it cannot place falls back to its nearest parent.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kconsole.config.problems import Problem

KeyPath = tuple[str | int, ...]

_TOML_ERR_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_BARE_KEY = r"[A-Za-z0-9_-]+"
_KEY = rf'(?:{_BARE_KEY}|"[^"]*"|\'[^\']*\')'
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ASSIGN = re.compile(rf"\s*({_DOTTED})\s*=")
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(_KEY, text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


@dataclass
class SourceFile:
    """A parsed TOML file: its data, its path as shown to the operator, and key positions."""

    path: str
    data: dict[str, Any]
    text: str
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def where(self, keypath: KeyPath) -> tuple[int, int]:
        """Line and column of `keypath`, or of its nearest located parent, or 1:1."""
        probe = tuple(keypath)
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            probe = probe[:-1]
        return (1, 1)

    def problem(self, keypath: KeyPath, message: str) -> Problem:
        """A Problem at `keypath`."""
        line, col = self.where(keypath)
        return Problem(self.path, line, col, message)


MAX_TOML_BYTES = 1024 * 1024
"""Largest runbook or site file read (the biggest shipped runbook is a few tens of KiB);
parsing keeps several copies of a file in memory, so a bigger one is refused unread."""

MAX_TOML_DEPTH = 32
"""Deepest nesting of arrays and tables a file may have (the schemas need four or so)."""


class TomlFileError(Exception):
    """The file cannot be read as TOML; carries the Problem."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def load_toml(path: str | Path, shown_as: str | None = None) -> SourceFile:
    """Read and parse `path`; raise TomlFileError with one clear sentence on any failure."""
    shown = shown_as or str(path)
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise TomlFileError(Problem(shown, 1, 1, "file not found")) from None
    except IsADirectoryError:
        raise TomlFileError(Problem(shown, 1, 1, "is a directory, not a TOML file")) from None
    except OSError as exc:
        raise TomlFileError(Problem(shown, 1, 1, f"cannot read: {exc.strerror}")) from None
    if len(raw) > MAX_TOML_BYTES:
        raise TomlFileError(
            Problem(shown, 1, 1, f"is larger than {MAX_TOML_BYTES // 1024} KiB; not read as TOML")
        )
    if b"\x00" in raw:
        raise TomlFileError(Problem(shown, 1, 1, "is a binary file, not TOML text"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TomlFileError(Problem(shown, line, 1, "is not UTF-8 text")) from None
    if not text.strip():
        raise TomlFileError(Problem(shown, 1, 1, "is empty"))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_ERR_POS.search(msg)
        line, col = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
        reason = _TOML_ERR_POS.sub("", msg).strip().rstrip(".")
        raise TomlFileError(Problem(shown, line, col, f"TOML syntax error: {reason}")) from None
    except RecursionError:
        raise TomlFileError(Problem(shown, 1, 1, _TOO_DEEP)) from None
    depth, nul = _shape(data)
    if depth > MAX_TOML_DEPTH:
        raise TomlFileError(Problem(shown, 1, 1, _TOO_DEEP))
    if nul:  # no path, name or command may hold one; the OS would refuse it later
        raise TomlFileError(Problem(shown, 1, 1, "a string holds a NUL character (\\u0000)"))
    return SourceFile(shown, data, text, _locate_keys(text))


_TOO_DEEP = f"arrays and tables are nested more than {MAX_TOML_DEPTH} deep"


def _shape(value: Any) -> tuple[int, bool]:
    """How deeply `value` nests lists and tables, and whether a key or string holds a NUL;
    walked without recursion."""
    deepest, nul = 0, False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            nul = nul or "\x00" in item
            continue
        if isinstance(item, dict):
            nul = nul or any("\x00" in k for k in item)
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_TOML_DEPTH:
            return deepest, nul
        stack.extend((child, level + 1) for child in children)
    return deepest, nul


def _locate_keys(text: str) -> dict[KeyPath, tuple[int, int]]:
    """Map key paths to (line, col), 1-based, by scanning the TOML text."""
    positions: dict[KeyPath, tuple[int, int]] = {}
    array_counts: dict[tuple[str, ...], int] = {}
    current: KeyPath = ()
    in_multiline: str | None = None
    bracket_depth = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        if bracket_depth > 0:
            bracket_depth += _bracket_delta(line)
            continue
        header = _HEADER.match(line)
        if header and not _ASSIGN.match(line):
            names = _split_dotted(header.group(2))
            resolved = _resolve(names, array_counts)
            if header.group(1) == "[[":
                key = tuple(names)
                array_counts[key] = array_counts.get(key, -1) + 1
                resolved = (*_resolve(names[:-1], array_counts), names[-1], array_counts[key])
                positions.setdefault(resolved[:-1], (lineno, header.start(2) + 1))
            current = resolved
            positions[current] = (lineno, header.start(2) + 1)
            continue
        assign = _ASSIGN.match(line)
        if not assign:
            continue
        keys = _split_dotted(assign.group(1))
        keypath = (*current, *keys)
        positions[keypath] = (lineno, assign.start(1) + 1)
        rest = line[assign.end() :]
        offset = assign.end()
        _locate_inline(rest, offset, keypath, lineno, positions)
        for quote in ('"""', "'''"):
            if rest.count(quote) == 1:
                in_multiline = quote
        bracket_depth = max(0, _bracket_delta(rest))
    return positions


def _resolve(names: list[str], array_counts: dict[tuple[str, ...], int]) -> KeyPath:
    out: list[str | int] = []
    for i, name in enumerate(names):
        out.append(name)
        prefix = tuple(names[: i + 1])
        if prefix in array_counts:
            out.append(array_counts[prefix])
    return tuple(out)


def _strip_strings(text: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', '""', text.split("#", 1)[0])


def _bracket_delta(text: str) -> int:
    clean = _strip_strings(text)
    return clean.count("[") + clean.count("{") - clean.count("]") - clean.count("}")


def _locate_inline(
    rest: str, offset: int, keypath: KeyPath, lineno: int, positions: dict[KeyPath, tuple[int, int]]
) -> None:
    """Positions for the keys of a one-line inline table value (`x = { a = 1, b = 2 }`)."""
    if not rest.lstrip().startswith("{"):
        return
    for m in re.finditer(rf"[{{,]\s*({_BARE_KEY})\s*=", rest):
        positions.setdefault((*keypath, m.group(1)), (lineno, offset + m.start(1) + 1))
