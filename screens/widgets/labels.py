"""How values read on screen. State labels read without colour (NO_COLOR, a monochrome SSH terminal) and take
their colour from the theme when there is one.

DataTable cells are Rich text, which cannot name theme variables, so the colour is looked
up from the running app's theme each time a label is made.
"""

from __future__ import annotations

from typing import Any, Literal

from rich.text import Text
from textual.app import App

from kconsole.config import format_duration

Tone = Literal["success", "warning", "error", "accent", "muted", "plain"]

_LABELS: dict[str, tuple[str, Tone]] = {
    # fleet
    "active": ("● active", "success"),
    "behind": ("◐ behind", "warning"),
    "inactive": ("○ inactive", "error"),
    "unreachable": ("✖ unreachable", "error"),
    "polling": ("… polling", "muted"),
    # steps
    "waiting": ("· waiting", "muted"),
    "running": ("▶ running", "accent"),
    "gated": ("? GATE", "warning"),
    "done": ("✔ done", "success"),
    "failed": ("✖ FAILED", "error"),
    "skipped": ("– skipped", "muted"),
    # runs
    "planned": ("· planned", "muted"),
    "succeeded": ("✔ succeeded", "success"),
    "aborted": ("✖ aborted", "error"),
    "interrupted": ("⏸ interrupted", "warning"),
    "stopped": ("⏸ stopped", "warning"),
    # backups
    "ok": ("✔ ok", "success"),
    "stale": ("! stale", "warning"),
    "failed-verify": ("✖ failed-verify", "error"),
    "none": ("– none", "warning"),
}


def toned(app: App[Any], text: str, tone: Tone) -> Text:
    """`text` coloured with the theme's text colour for `tone`."""
    if tone == "plain":
        return Text(text)
    if tone == "muted":
        return Text(text, style="dim")
    return Text(text, style=_colours(app, app.theme).get(tone, ""))


_CACHE: dict[tuple[int, str], dict[str, str]] = {}


def _colours(app: App[Any], theme: str) -> dict[str, str]:
    """Tone -> colour for a theme (computing the theme's variables is too slow per cell)."""
    key = (id(app), theme)
    if key not in _CACHE:
        variables = app.get_css_variables()
        found = {
            tone: variables.get(f"text-{tone}") or variables.get(tone) or ""
            for tone in ("success", "warning", "error", "accent")
        }
        _CACHE[key] = {tone: colour for tone, colour in found.items() if colour.startswith("#")}
    return _CACHE[key]


def short_duration(seconds: float | None) -> str:
    """`15m`, `1h`, `1h30m`, `1d`, `45s`: a duration without its zero tail; `-` for none."""
    if not seconds:
        return "-"
    text = format_duration(seconds)
    for zero in ("00s", "00m", "00h"):
        if text.endswith(zero) and len(text) > len(zero):
            text = text[: -len(zero)]
    return text


def plain(value: object) -> Text:
    """A table cell that shows `value` as it is: data is never read as markup."""
    return Text("" if value is None else str(value), no_wrap=True)


def state_label(app: App[Any], state: str) -> Text:
    """The symbol-and-word label of a node, step, run or backup state."""
    label, tone = _LABELS.get(state, (state, "plain"))
    return toned(app, label, tone)
