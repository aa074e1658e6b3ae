"""`kconsole lab serve`: run the lab headless until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from kconsole.lab.lab import Lab


def serve(
    dir: Path,
    nodes: int = 9,
    faults: str = "",
    history: bool = True,
    state_size: str | None = None,
) -> int:
    """Start the lab in `dir`, print `ready DIR/site.toml`, serve until SIGINT/SIGTERM, stop, return 0.

    With `state_size` (`1G`, `512M`) every fleet node's chain state is first grown with
    block bodies until they hold that many bytes (a restart on the same DIR grows nothing).

    Errors the operator can act on (bad fault spec, a lab already running in DIR) are raised
    as KconsoleError for the CLI to report.
    """
    size = None
    if state_size:
        from kconsole.lab.grow import parse_size

        size = parse_size(state_size)
    return asyncio.run(_serve(Path(dir), nodes, faults, history, size))


STALE_KIND = "transaction-logs"
"""The kind whose history is left past its tier's RPO, so the dashboard has a true warning."""


def _has_backups(site_dir: Path) -> bool:
    primary = site_dir / "backups"
    return primary.is_dir() and any(primary.rglob("*.kdx"))


async def _write_history(lab: Lab) -> None:
    from kconsole.lab.history import write_history
    from kconsole.site import load_site

    site = load_site(lab.site_path)
    await asyncio.to_thread(
        write_history,
        site,
        days=2,
        locations=("primary", "dr"),
        max_per_series=6,
        stale={STALE_KIND: 3 * 3600.0},
    )


async def _mirror_history(lab: Lab) -> None:
    from kconsole.lab.history import mirror_history
    from kconsole.site import load_site

    await asyncio.to_thread(mirror_history, load_site(lab.site_path), "primary", "cloud")


async def _grow_fleet(lab: Lab, size: int) -> None:
    from kconsole.lab.grow import grow_state
    from kconsole.lab.labtool import STATE_DIR, body_sizes

    for name, host in lab.hosts.items():
        if host.service is None:
            continue
        state = host.root / STATE_DIR
        missing = size - sum(body_sizes(state).values())
        if missing > 0:
            await asyncio.to_thread(grow_state, state, missing, name)


async def _serve(
    dir: Path, nodes: int, faults: str, history: bool = True, state_size: int | None = None
) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kconsole lab: %(message)s"))
    logger = logging.getLogger("kconsole.lab")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        lab = await Lab.start(dir, nodes=nodes, faults=faults)
        background: asyncio.Task[None] | None = None
        try:
            if state_size:
                await _grow_fleet(lab, state_size)
            if history and not _has_backups(dir):
                # A few backups of every kind, one tier stale.
                await _write_history(lab)
            if history and _has_backups(dir):
                # The S3 endpoint keeps objects in memory: refill it from the primary copy
                # (same bytes, so replicas match), in the background because the loopback
                # server takes one request at a time.
                background = asyncio.create_task(_mirror_history(lab))
            print(f"ready {dir / 'site.toml'}", flush=True)
            await stop.wait()
        finally:
            if background is not None and not background.done():
                background.cancel()
                with contextlib.suppress(BaseException):
                    await background
            await lab.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        logger.removeHandler(handler)
    return 0
