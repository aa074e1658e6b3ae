"""House rules checked with the suite: ruff (lint and format) on the code, mypy on the engine,
import-linter's contracts (the engine's layers, no TUI in the engine) and no import cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ("kconsole", "screens", "tests", "bench", "snapshots")


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return exe


def test_ruff() -> None:
    proc = subprocess.run(
        [_tool("ruff"), "check", *CODE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", *CODE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, "run `ruff format`:\n" + proc.stdout + proc.stderr


def test_mypy_engine() -> None:
    proc = subprocess.run(
        [_tool("mypy"), "kconsole"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_linter_contracts() -> None:
    """pyproject.toml's contracts: the engine's layers (docs/architecture.md) and an engine
    that never imports textual or screens."""
    proc = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_engine() -> None:
    """Every import statement counts, those inside functions and under TYPE_CHECKING too: a
    cycle hidden from run time by a function-local import is still a cycle."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("kconsole", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert graph.direct_import_exists(importer="kconsole.cli", imported="kconsole.headless"), (
        "the graph must hold function-local imports (cli imports headless inside a function)"
    )
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
