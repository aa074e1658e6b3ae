"""ConsoleScreen: what every top-level screen has — header, body, footer, its name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:
    from screens.app import KconsoleApp


class ConsoleScreen(Screen[None]):
    """A top-level screen of the console (one per app mode)."""

    NAME: ClassVar[str] = ""
    """The screen's name in the header and the command palette."""
    HELP: ClassVar[str] = ""
    """One line on what the screen is for (shown in the command palette)."""

    @property
    def console(self) -> KconsoleApp:
        """The console app, typed."""
        return cast("KconsoleApp", self.app)

    def compose(self) -> ComposeResult:
        """Header, the screen's body, footer."""
        yield Header(show_clock=False, icon="≡")
        yield from self.compose_body()
        yield Footer(compact=True)

    def compose_body(self) -> Iterable[Widget]:
        """The widgets between header and footer."""
        return ()

    def on_mount(self) -> None:
        """Name the screen in the header."""
        self.sub_title = f"{self.NAME} · {self.console.identity}"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed worker of this screen is reported like the app's own (the event does not bubble)."""
        if event.state == WorkerState.ERROR:
            self.console.report_failure(event.worker)
