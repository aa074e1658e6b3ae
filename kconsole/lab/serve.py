"""`kconsole lab serve`: run the lab headless until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from kconsole.lab.lab import Lab


def serve(dir: Path, nodes: int = 9, faults: str = "") -> int:
    """Start the lab in `dir`, print `ready DIR/site.toml`, serve until SIGINT/SIGTERM, stop, return 0.

    Errors the operator can act on (bad fault spec, a lab already running in DIR) are raised
    as KconsoleError for the CLI to report.
    """
    return asyncio.run(_serve(Path(dir), nodes, faults))


async def _serve(dir: Path, nodes: int, faults: str) -> int:
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
        try:
            print(f"ready {dir / 'site.toml'}", flush=True)
            await stop.wait()
        finally:
            await lab.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        logger.removeHandler(handler)
    return 0
