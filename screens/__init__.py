"""The kconsole TUI: a Textual app over the `kconsole` engine.

`build_app(site, ...)` makes the app (CLI and tests alike); `run_console(site_path)` opens
it; `serve_web(site_path, port)` serves it to a browser on 127.0.0.1. Imported lazily so
`python -m screens.app` does not import the app module twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "run_console", "serve_web"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from screens import app

        return getattr(app, name)
    raise AttributeError(name)
