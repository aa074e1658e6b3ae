"""The outside world an executor and its actions reach through: clock, transports, HTTP.

Tests swap any part (a fake clock, an in-memory transport); the CLI and the TUI build
the real ones with `Services.for_site`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from kconsole.health import HealthReader
    from kconsole.site import Site

T = TypeVar("T")


class Clock:
    """Wall and monotonic time plus sleep; injectable so RTO clocks are deterministic."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        await asyncio.sleep(seconds)

    async def wait_for(self, work: Awaitable[T], seconds: float) -> T:
        """`work`'s result, or TimeoutError once `seconds` of this clock's time have passed
        (`work` is cancelled). A test clock with its own time overrides this with `sleep`."""
        return await asyncio.wait_for(work, seconds)


class LazyTransport:
    """The site's `SshTransport`, made on first use: a poll that never needs SSH never
    imports asyncssh nor reads a key or known_hosts. Everything else is the real one's."""

    def __init__(self, site: Site) -> None:
        self._site = site
        self._real: Any = None

    @property
    def made(self) -> bool:
        """Whether the real transport was made (some node was reached over SSH)."""
        return self._real is not None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._real is None:
            from kconsole.transport.ssh import SshTransport

            self._real = SshTransport(self._site)
        return getattr(self._real, name)

    async def close(self) -> None:
        """Close the real transport's connections, if it was made."""
        if self._real is not None:
            await self._real.close()


@dataclass
class Services:
    """The transports and clock a run uses. `transport` is the node command transport."""

    clock: Clock = field(default_factory=Clock)
    transport: Any = None
    http_timeout: float = 10.0
    _backups: Any = None
    _health: Any = None

    @property
    def health(self) -> HealthReader:
        """The one health-URL reader of these services (fleet status, live heights, backups)."""
        if self._health is None:
            from kconsole.health import HealthReader

            self._health = HealthReader()
        return self._health  # type: ignore[no-any-return]

    def backups(self, site: Site) -> Any:
        """The run's BackupSession (stores, keyring, catalog), made on first use."""
        if self._backups is None:
            from kconsole.backups.session import BackupSession

            self._backups = BackupSession(site, self.transport)
        return self._backups

    @classmethod
    def for_site(cls, site: Site, *, lazy: bool = False) -> Services:
        """The real services for `site`: SSH to its nodes over a pooled transport (with
        `lazy`, made on first use)."""
        if lazy:
            return cls(transport=LazyTransport(site))
        from kconsole.transport.ssh import SshTransport

        return cls(transport=SshTransport(site))

    async def close(self) -> None:
        """Close pooled connections."""
        if self._backups is not None:
            await self._backups.close()
        if self._health is not None:
            await self._health.close()
        if self.transport is not None and hasattr(self.transport, "close"):
            await self.transport.close()


def run_once(
    site: Site, work: Callable[[Services], Awaitable[T]], *, lazy_transport: bool = False
) -> T:
    """Blocking: run `work(services)` on a fresh event loop with the site's real services,
    closing their connections afterwards (the CLI's one-shot commands). `lazy_transport`:
    the SSH transport is made only if `work` uses it."""

    async def main() -> T:
        services = Services.for_site(site, lazy=lazy_transport)
        try:
            return await work(services)
        finally:
            await services.close()

    return asyncio.run(main())
