"""Catalog: every backup in every location, filtered as you type; the table holds at most
WINDOW rows so it stays responsive whatever the catalog's size."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import ClassVar

from textual import on, work
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static

from kconsole.config import format_duration
from screens.base import ConsoleScreen
from screens.catalog_source import WINDOW, CatalogReading, filter_rows
from screens.widgets import plain, state_label

TYPING_PAUSE = 0.15
"""Seconds of no typing before the filter runs (refilling 2,000 rows takes about 0.3 s)."""

UNAVAILABLE = (
    "catalog not available: this kconsole's engine has no backup catalog (kconsole.backups)."
)


def _age(value: object) -> str:
    return format_duration(float(value)) if isinstance(value, int | float) else ""


def _size(value: object) -> str:
    if not isinstance(value, int | float):
        return ""
    size = float(value)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return ""


class CatalogScreen(ConsoleScreen):
    """Backups with their age against the tier's RPO.

    | Key | Action |
    | :- | :- |
    | `/` | type a filter: words, or field:value (`kind:validator-keys status:stale`) |
    | `escape` | from the filter back to the table |
    | `f5` | list every location again |
    """

    NAME = "Catalog"
    HELP = "Backups across all locations, filter as you type"
    CSS_PATH = "catalog.tcss"
    AUTO_FOCUS = "#backups"
    """The table, not the filter: the screen keys (`d`, `r`, ...) work as soon as it opens."""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "slash",
            "focus_filter",
            "Filter",
            id="catalog-filter",
            tooltip="Type to filter the backups.",
        ),
        Binding(
            "escape",
            "focus_table",
            "Table",
            id="catalog-table",
            tooltip="Move from the filter to the table.",
        ),
        Binding(
            "f5",
            "reload",
            "Reload",
            id="catalog-reload",
            tooltip="List every backup location again.",
        ),
    ]

    def compose_body(self) -> Iterable[Widget]:
        """Filter input, status line, the window of backups."""
        yield Input(
            placeholder="filter: words or field:value — kind:validator-keys node:validator2 status:stale",
            id="filter",
        )
        yield Static("", id="catalog-status")
        table: DataTable[object] = DataTable(id="backups", cursor_type="row")
        yield table

    def on_mount(self) -> None:
        """Columns; rows once the catalog is read."""
        table = self.query_one("#backups", DataTable)
        for label, key, width in (
            ("Created", "created", 16),
            ("Kind", "kind", 16),
            ("Node", "node", 11),
            ("Location", "location", 8),
            ("Age", "age", 7),
            ("Status", "status", 15),
            ("Size", "size", 7),
            ("Id", "id", 34),
        ):
            table.add_column(label, key=key, width=width)
        self.console.catalog_signal.subscribe(self, lambda _data: self._apply_filter())
        self._apply_filter()

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._apply_filter()

    def _apply_filter(self) -> None:
        reading = self.console.catalog_reading
        status = self.query_one("#catalog-status", Static)
        if reading is None:
            status.update(
                UNAVAILABLE if self.console.catalog is None else "listing every backup location…"
            )
            return
        self._filter(reading, self.query_one("#filter", Input).value)

    @work(
        group="catalog-filter",
        exclusive=True,
        exit_on_error=False,
        description="filter the catalog",
    )
    async def _filter(self, reading: CatalogReading, query: str) -> None:
        # A burst of keystrokes refills the table once: each new key cancels this worker
        # while it waits (the group is exclusive).
        await asyncio.sleep(TYPING_PAUSE)
        rows = reading.rows
        window, total = await asyncio.to_thread(filter_rows, rows, query, WINDOW)
        table = self.query_one("#backups", DataTable)
        table.clear()
        table.add_rows(
            (
                plain(str(r.get("created", ""))[:16].replace("T", " ")),
                plain(r.get("kind")),
                plain(r.get("node")),
                plain(r.get("location")),
                plain(_age(r.get("age_s"))),
                state_label(self.app, str(r.get("status", ""))),
                plain(_size(r.get("size"))),
                plain(r.get("id")),
            )
            for r in window
        )
        shown = f"showing {len(window):,} of {total:,}" if total > len(window) else f"{total:,}"
        what = f" matching “{query}”" if query.strip() else ""
        more = " — refine the filter to see the rest" if total > len(window) else ""
        errors = "".join(f" · {loc} NOT LISTED: {why}" for loc, why in reading.errors.items())
        as_of = f" as of {reading.as_of:%H:%M:%S} UTC" if reading.as_of else ""
        status = self.query_one("#catalog-status", Static)
        status.update(f"{shown} backups{what} (of {len(rows):,}{as_of}){more}{errors}")
        status.set_class(bool(reading.errors), "-errors")

    def action_reload(self) -> None:
        """List every location again."""
        self.console.read_catalog()

    def action_focus_filter(self) -> None:
        """Type a filter."""
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        """Back to the table."""
        self.query_one("#backups", DataTable).focus()
