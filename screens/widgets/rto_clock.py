"""RtoClock: a run's elapsed time against its RTO, the projected finish, amber and red early."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.message import Message
from textual.widgets import Static

from kconsole.config import format_duration
from screens.run_model import RtoReading, RunModel

BAR_WIDTH = 20


class RtoClock(Static):
    """One line: `RTO 12m05s of 1h00m ▓▓▓░░ projected 41m00s · ok`.

    | Class | Meaning |
    | :- | :- |
    | `-amber` | projected finish past 80% of the RTO |
    | `-red` | projected finish past the RTO |
    | `-breached` | the RTO has passed |
    """

    DEFAULT_CSS = """
    RtoClock {
        height: 1;
        padding: 0 1;
        background: $boost;
        color: $foreground;
    }
    RtoClock.-amber { background: $warning-muted; color: $text-warning; }
    RtoClock.-red { background: $error-muted; color: $text-error; text-style: bold; }
    RtoClock.-breached { background: $error; color: $text; text-style: bold reverse; }
    RtoClock.-idle { color: $text-muted; }
    """

    @dataclass
    class Ticked(Message):
        """A second went by; ticks queued behind a busy screen merge into one."""

        def can_replace(self, message: Message) -> bool:
            """Any pending tick is superseded by a newer one."""
            return isinstance(message, RtoClock.Ticked)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.model: RunModel | None = None
        """The run whose clock this is (None: no run)."""

    def on_mount(self) -> None:
        """Tick every second while mounted."""
        self.set_interval(1.0, lambda: self.post_message(self.Ticked()))
        self.show(self.model)

    def on_rto_clock_ticked(self, _message: Ticked) -> None:
        """Redraw from the injected clock."""
        self._redraw()

    def show(self, model: RunModel | None) -> None:
        """Follow `model`'s clock (None shows that no run is active)."""
        self.model = model
        self._redraw()

    def reading(self) -> RtoReading | None:
        """The clock now, from the app's (injectable) clock."""
        if self.model is None or self.model.created_at is None:
            return None
        return self.model.rto(self.app.clock.now())  # type: ignore[attr-defined]

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        reading = self.reading()
        for level in ("amber", "red", "breached", "idle"):
            self.remove_class(f"-{level}")
        if reading is None:
            self.add_class("-idle")
            self.update(
                "RTO clock: no run active" if self.model is None else "RTO clock: not started"
            )
            return
        if reading.level != "ok":
            self.add_class(f"-{reading.level}")
        self.update(render_reading(reading, self.model.status if self.model else ""))


def render_reading(reading: RtoReading, status: str = "") -> Text:
    """The clock as text; the level is spelt out so it reads without colour."""
    rto = format_duration(reading.rto) if reading.rto else "none"
    filled = min(BAR_WIDTH, int(reading.fraction * BAR_WIDTH)) if reading.rto else 0
    bar = "▓" * filled + "░" * (BAR_WIDTH - filled)
    word = {
        "ok": "on track",
        "amber": "AMBER: tight",
        "red": "RED: will breach",
        "breached": "RTO BREACHED",
    }[reading.level]
    over = status in ("succeeded", "failed", "aborted")
    tail = (
        f"took {format_duration(reading.elapsed)}"
        if over
        else f"projected {format_duration(reading.projected)}"
    )
    return Text(f"RTO {format_duration(reading.elapsed)} of {rto} {bar} {tail} · {word}")
