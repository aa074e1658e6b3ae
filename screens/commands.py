"""The command palette: every screen by name, and what the current screen can do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from screens.app import KconsoleApp


class ConsoleCommands(Provider):
    """Screens by name, then the actions of the screen the palette was opened on."""

    def _commands(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        app = cast("KconsoleApp", self.app)
        for mode, screen_cls in app.screen_classes().items():
            yield (
                screen_cls.NAME,
                f"{screen_cls.HELP} ({app.key_for(f'show-{mode}')})",
                partial(app.show, mode),
            )
        screen = self.screen
        name = getattr(screen, "NAME", "") or type(screen).__name__
        for binding in type(screen).BINDINGS:
            if not isinstance(binding, Binding) or not binding.description:
                continue
            action = binding.action
            if app._check_action_state(action, screen) is False:
                continue
            yield (
                f"{name}: {binding.description}",
                binding.tooltip or binding.description,
                partial(screen.run_action, action),
            )

    async def discover(self) -> Hits:
        """Everything, before the operator types."""
        for text, help_text, command in self._commands():
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        """What matches the typed text."""
        matcher = self.matcher(query)
        for text, help_text, command in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
