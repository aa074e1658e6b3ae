"""What the TUI tests and snapshots share: a small site, runbooks, a fixed clock, a scripted
in-memory fleet, and `make_app` to build the console on them with nothing left to chance."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from kconsole.services import Clock, Services
from kconsole.site import Node, load_site
from screens.app import KconsoleApp, build_app
from screens.catalog_source import StaticCatalog
from tests.memory_transport import MemoryTransport

NOW = datetime(2026, 11, 26, 3, 14, 0, tzinfo=UTC)
"""A Thursday, 03:14 UTC: the console's "now" in every test."""

SITE = """
[site]
name = "kaldrix-test"
state_dir = "state"

[[nodes]]
name = "bootstrap1"
host = "10.0.0.1"
groups = ["bootstrap"]

[[nodes]]
name = "validator1"
host = "10.0.1.1"
groups = ["validator"]

[[nodes]]
name = "validator2"
host = "10.0.1.2"
groups = ["validator"]

[[nodes]]
name = "validator3"
host = "10.0.1.3"
groups = ["validator"]

[[nodes]]
name = "api1"
host = "10.0.2.1"
groups = ["api"]

[tiers.critical]
title = "Critical"
rpo = "15m"
rto = "1h"
kinds = ["blockchain-state", "validator-keys"]

[tiers.important]
rpo = "1h"
rto = "4h"
kinds = ["transaction-logs"]

[tiers.standard]
rpo = "24h"
rto = "24h"
kinds = ["system-logs", "full-system"]

[[contacts]]
name = "John Smith"
role = "Backup Administrator"
email = "john.smith@kaldrix.example"
phone = "+1-555-0101"
on_call = "24/7"

[[contacts]]
name = "Jane Doe"
role = "Backup Engineer"
email = "jane.doe@kaldrix.example"
phone = "+1-555-0102"
on_call = "24/7"

[[contacts]]
name = "Mike Johnson"
role = "Storage Specialist"
email = "mike.johnson@kaldrix.example"
phone = "+1-555-0103"
on_call = "Business Hours"

[[contacts]]
name = "Sarah Wilson"
role = "Operations Lead"
email = "sarah.wilson@kaldrix.example"
phone = "+1-555-0104"
on_call = "24/7"

[[contacts]]
name = "Tom Brown"
role = "Security Engineer"
email = "tom.brown@kaldrix.example"
phone = "+1-555-0105"
on_call = "24/7"

[escalation.backup]
title = "Backup Issues"
levels = [{ role = "Backup Administrator", wait = "15m" }, { role = "Operations Lead", wait = "30m" },
          { role = "CTO", wait = "1h" }, { role = "CEO" }]

[escalation.recovery]
title = "Recovery Issues"
levels = [{ role = "Backup Engineer", wait = "5m" }, { role = "Operations Lead", wait = "15m" },
          { role = "CTO", wait = "30m" }, { role = "CEO" }]

[escalation.security]
title = "Security Incidents"
levels = [{ role = "Security Engineer", wait = "5m" }, { role = "Security Lead", wait = "10m" },
          { role = "CTO", wait = "15m" }, { role = "CEO" }]

[access]
admin = ["alice"]
operator = ["olga"]
auditor = ["audrey"]
"""

RECOVER_SINGLE_NODE = '''
[runbook]
id = "recover-single-node"
title = "Recover a single node"
rto = "1h"
rpo = "15m"
scenario = "single-node"
description = "Stop the failed node, restore its state from a backup, start it, check it rejoins."

[params.node]
type = "node"
help = "the failed node"

[params.backup]
type = "backup"
default = "latest"
help = "the backup to restore"

[[steps]]
id = "isolate"
title = "Take {node} out of service"
action = "ssh.exec"
for_each = "node"
command = "systemctl stop {node.service}"
gate = "confirm"
estimate = "30s"
guide = """
Stops **kaldrix-node** on the failed node so nothing writes to its state while it is
restored. Check the node is the one the dashboard shows as down.
"""

[[steps]]
id = "restore"
title = "Restore {backup} onto {node}"
action = "ssh.exec"
for_each = "node"
needs = ["isolate"]
command = "tar -xzf /backups/{backup}.tar.gz -C /var/lib/kaldrix"
gate = "type:{node}"
estimate = "10m"
guide = "Replaces the node's chain state with the backup. **Destructive**: type the node's name."

[[steps]]
id = "start"
title = "Start kaldrix-node on {node}"
action = "ssh.exec"
for_each = "node"
needs = ["restore"]
command = "systemctl start {node.service}"
estimate = "1m"

[[steps]]
id = "verify"
title = "Check {node} rejoins the network"
action = "gate"
needs = ["start"]
prompt = "Does {node} follow the chain again?"
checklist = ["block height advancing", "peers connected"]
estimate = "5m"
'''

BACKUP_KEYS = """
[runbook]
id = "backup-validator-keys"
title = "Back up the validator keys"
rto = "4h"
rpo = "24h"
scenario = "backup"

[[steps]]
id = "archive"
title = "Archive the keys on each validator"
action = "ssh.exec"
for_each = "group:validator"
command = "tar -czf - /etc/kaldrix/keys"
estimate = "1m"
"""

VERIFY_BACKUPS = """
[runbook]
id = "verify-backups"
title = "Verify every backup decrypts and restores"
rto = "2h"
scenario = "verification"

[[steps]]
id = "check"
title = "Check the DR copy"
action = "ssh.exec"
node = "api1"
command = "true"
estimate = "2m"
"""

RUNBOOKS = {
    "recover-single-node": RECOVER_SINGLE_NODE,
    "backup-validator-keys": BACKUP_KEYS,
    "verify-backups": VERIFY_BACKUPS,
}


class FixedClock(Clock):
    """03:14 UTC until a test moves it; sleeping moves it and yields once."""

    def __init__(self, now: datetime = NOW) -> None:
        self.at = now
        self.t = 1000.0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.at += timedelta(seconds=seconds)
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


class HeldTransport(MemoryTransport):
    """MemoryTransport whose commands (or probes) can be held until the test lets them go."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.holds: list[tuple[str, asyncio.Event]] = []

    def hold(self, pattern: str) -> asyncio.Event:
        """Commands matching `pattern` (probes: "probe:NODE") wait until the event is set."""
        event = asyncio.Event()
        self.holds.append((pattern, event))
        return event

    async def _held(self, what: str) -> None:
        for pattern, event in self.holds:
            if re.search(pattern, what):
                await event.wait()

    async def run(self, node: Node, command: str, **kwargs: Any) -> Any:
        await self._held(command)
        return await super().run(node, command, **kwargs)

    async def probe(self, node: Node) -> float:
        await self._held(f"probe:{node.name}")
        return await super().probe(node)


def fleet(down: Iterable[str] = (), unreachable: Iterable[str] = ()) -> HeldTransport:
    """Every node answering `active`, except `down` (service inactive) and `unreachable`."""
    transport = HeldTransport()
    for name in down:
        transport.reply(name, r"^systemctl is-active", stdout="inactive\n", exit_status=3)
    for name in unreachable:
        transport.down(name, "connection refused")
    transport.reply("*", r"^systemctl is-active", stdout="active\n")
    transport.reply("*", r"systemctl (stop|start)", stdout="")
    transport.reply("*", r"^tar ", stdout="restored 1204 files\nchain state at height 1882211\n")
    transport.latency_ms.update(
        {"bootstrap1": 3.0, "validator1": 2.0, "validator2": 2.0, "validator3": 4.0, "api1": 7.0}
    )
    return transport


def write_site(root: Path, extra: str = "") -> Path:
    """site.toml and runbooks/ under `root`."""
    path = root / "site.toml"
    path.write_text(SITE + extra)
    books = root / "runbooks"
    books.mkdir(exist_ok=True)
    for name, text in RUNBOOKS.items():
        (books / f"{name}.toml").write_text(textwrap.dedent(text).lstrip())
    return path


def catalog_rows(count: int = 40) -> list[dict[str, Any]]:
    """Deterministic catalog rows, as `kconsole catalog --json` would print them."""
    kinds = ["blockchain-state", "validator-keys", "transaction-logs", "system-logs"]
    nodes = ["validator1", "validator2", "validator3", "bootstrap1", "api1"]
    locations = ["primary", "dr", "s3"]
    rows = []
    for i in range(count):
        age = 600 + i * 1800
        created = NOW - timedelta(seconds=age)
        kind = kinds[i % len(kinds)]
        rpo = {"blockchain-state": 900, "validator-keys": 900, "transaction-logs": 3600}.get(
            kind, 86400
        )
        status = "failed-verify" if i % 17 == 5 else ("ok" if age <= rpo * 4 else "stale")
        node = nodes[i % len(nodes)]
        rows.append(
            {
                "id": f"{kind}_{node}_{created:%Y%m%d_%H%M%S}",
                "kind": kind,
                "node": node,
                "location": locations[i % 3],
                "path": f"/backup/{kind}/{node}/{created:%Y%m%d_%H%M%S}.kdx",
                "size": 1_000_000 * (i + 1),
                "created": created.isoformat().replace("+00:00", "Z"),
                "age_s": age,
                "rpo_s": rpo,
                "status": status,
                "key_id": "k2026q4",
            }
        )
    return rows


def catalog_tiers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tier summary lines as the engine's `tier_summary` gives them, for the RPO strip."""
    if not rows:
        return []
    return [
        {
            "tier": "critical",
            "rpo_s": 900,
            "status": "ok",
            "nodes": 4,
            "breached": 0,
            "max_loss_s": 600,
        },
        {
            "tier": "important",
            "rpo_s": 3600,
            "status": "stale",
            "nodes": 1,
            "breached": 1,
            "max_loss_s": 12600,
        },
        {
            "tier": "standard",
            "rpo_s": 86400,
            "status": "none",
            "nodes": 5,
            "breached": 5,
            "max_loss_s": None,
        },
    ]


@dataclass
class Console:
    """An app with its fleet and clock, for driving in a test."""

    app: KconsoleApp
    transport: HeldTransport
    clock: FixedClock
    site_path: Path


def make_console(
    root: Path,
    *,
    down: Iterable[str] = (),
    unreachable: Iterable[str] = (),
    user: str = "alice",
    catalog: list[dict[str, Any]] | None = None,
    keymap: dict[str, str] | None = None,
    site_extra: str = "",
    staging: bool = False,
) -> Console:
    """The console on a fresh site under `root`, every source of chance pinned; `staging`
    marks the site `staging = true` (drills may inject failures there)."""
    site_path = write_site(root, site_extra)
    if staging:
        text = site_path.read_text().replace(
            'state_dir = "state"\n', 'state_dir = "state"\nstaging = true\n', 1
        )
        site_path.write_text(text)
    site = load_site(site_path)
    transport = fleet(down, unreachable)
    clock = FixedClock()
    app = build_app(
        site,
        Services(transport=transport),
        clock,
        keymap=keymap,
        user=user,
        catalog=StaticCatalog(catalog, catalog_tiers(catalog)) if catalog is not None else None,
        runbook_dirs=[root / "runbooks"],
        poll_interval=0,
    )
    counter = iter(range(1, 1000))
    app.make_run_id = lambda: f"20261126-031400-{next(counter):04d}"
    incidents = iter(range(1, 1000))
    app.desk.make_id = lambda _now: f"INC-20261126-031400-{next(incidents):04d}"
    app.animation_level = "none"
    return Console(app, transport, clock, site_path)


@pytest.fixture
def utc_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC, so "business hours" read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def wait_for(
    pilot: Pilot[Any], condition: Callable[[], object], what: str = "condition", limit: float = 10.0
) -> None:
    """Let the app run until `condition()` holds (a generous limit; never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)


async def settle(pilot: Pilot[Any]) -> None:
    """Wait for the first poll, the runbooks and every read, then for the screen to redraw."""
    app = pilot.app
    assert isinstance(app, KconsoleApp)
    await wait_for(
        pilot, lambda: app.fleet and app.runbooks_loaded, "the first poll and the runbooks"
    )
    await wait_for(
        pilot,
        lambda: not [w for w in app.workers if w.is_running and w.group != "run"],
        "background workers",
    )
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


def journal(console: Console, run_id: str = "20261126-031400-0001") -> list[dict[str, Any]]:
    """Every record of a run's journal."""
    from kconsole.journal import read_records

    return read_records(console.app.site.state_dir / "runs" / run_id / "journal.jsonl")[0]


def step_events(console: Console, run_id: str = "20261126-031400-0001") -> list[tuple[str, str]]:
    """(step, event) for every step record but output, in order."""
    return [
        (r["step"], r["event"])
        for r in journal(console, run_id)
        if r.get("type") == "step" and r["event"] != "output"
    ]


async def type_text(pilot: Pilot[Any], text: str) -> None:
    """Type `text` one key at a time, as an operator would."""
    await pilot.press(*text)
