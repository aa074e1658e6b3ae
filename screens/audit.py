"""Audit: the tamper-evident log, newest entry first, and whether its chain verifies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import DataTable, Static

from kconsole.audit import AuditLog, VerifyResult
from kconsole.errors import KconsoleError
from screens.base import ConsoleScreen
from screens.widgets import plain


def _read_and_verify(log: AuditLog) -> tuple[list[dict[str, Any]], VerifyResult]:
    """Entries and the chain check (blocking: run it in a thread)."""
    entries = log.read()
    try:
        result = log.verify()
    except KconsoleError as exc:
        result = VerifyResult(False, 0, str(exc).rstrip("."))
    return entries, result


def _shown_path(path: Path, base: Path) -> str:
    """`path` relative to the site file's directory when it is under it."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _detail(entry: dict[str, Any]) -> str:
    detail = entry.get("detail") or {}
    return " ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, "", {}, []))


class AuditScreen(ConsoleScreen):
    """Read-only view of `kconsole audit show` and `kconsole audit verify`.

    | Key | Action |
    | :- | :- |
    | `v` | verify the chain again |
    """

    NAME = "Audit"
    HELP = "The audit log and whether its hash chain verifies"
    CSS_PATH = "audit.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "v",
            "verify",
            "Verify",
            id="audit-verify",
            tooltip="Read and verify the audit log again.",
        ),
    ]

    def compose_body(self) -> Iterable[Widget]:
        """Verification line and the entries."""
        yield Static("verifying…", id="verify-state")
        table: DataTable[object] = DataTable(id="entries", cursor_type="row")
        yield table

    def on_mount(self) -> None:
        """Columns, then read and verify in a worker."""
        table = self.query_one("#entries", DataTable)
        for label, key, width in (
            ("Seq", "seq", 5),
            ("Time", "ts", 19),
            ("Actor", "actor", 10),
            ("Action", "action", 13),
            ("Target", "target", 26),
            ("Result", "result", 7),
            ("Detail", "detail", 40),
        ):
            table.add_column(label, key=key, width=width)
        self.action_verify()

    def on_screen_resume(self) -> None:
        """The log grows while the screen is away."""
        if self.is_mounted:
            self.action_verify()

    @work(
        group="audit-read",
        exclusive=True,
        exit_on_error=False,
        description="read and verify the audit log",
    )
    async def action_verify(self) -> None:
        """Read and verify the log in a thread, then show it."""
        log = AuditLog(self.console.site.state_dir)
        entries, result = await asyncio.to_thread(_read_and_verify, log)
        state = self.query_one("#verify-state", Static)
        where = _shown_path(log.path, self.console.site.base_dir)
        if result.ok:
            torn = " (last line torn by a crash: never committed)" if result.torn else ""
            state.update(f"✔ chain intact: {result.message}{torn} · {where}")
        else:
            state.update(f"✖ TAMPERED: {result.message} · {where}")
        state.set_class(not result.ok, "-tampered")
        table = self.query_one("#entries", DataTable)
        table.clear()
        table.add_rows(
            [
                plain(v)
                for v in (
                    e.get("seq", ""),
                    str(e.get("ts", ""))[:19].replace("T", " "),
                    e.get("actor", ""),
                    e.get("action", ""),
                    e.get("target", ""),
                    e.get("result", ""),
                    _detail(e),
                )
            ]
            for e in reversed(entries)
        )
