"""TickBox: a Checkbox whose state reads without colour."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox


class TickBox(Checkbox):
    """Shows ✔ when ticked and a blank when not: the stock box differs only by colour,
    which NO_COLOR and monochrome SSH terminals cannot show."""

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "✔" if self.value else " "
        return super()._button
