"""The engine is reachable without the TUI: no kconsole module imports textual or screens."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kconsole

ROOT = Path(__file__).resolve().parent.parent


def engine_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(kconsole.__path__, "kconsole.")
        if m.name not in ("kconsole.__main__",)
    )


@pytest.mark.parametrize("module", engine_modules())
def test_module_imports_without_textual(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = [m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'screens'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
