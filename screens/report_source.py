"""The run report as the console reads it, behind a small seam.

`kconsole.reports` is imported lazily: until the engine has it, the Runs screen says
"reports not available" instead of failing. The contract the console expects is
`render_report(site, run_id, fmt="md") -> str` (what `kconsole report RUN_ID` prints).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from kconsole.site import Site

ReportRenderer = Callable[[Site, str], str]


def engine_reports() -> ReportRenderer | None:
    """A function rendering a run's Markdown report, or None while the engine has none."""
    try:
        module = importlib.import_module("kconsole.reports")
    except ImportError:
        return None
    render_report = getattr(module, "render_report", None)
    if not callable(render_report):
        return None
    return lambda site, run_id: str(render_report(site, run_id, fmt="md"))
