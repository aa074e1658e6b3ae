"""The console's entry points and its safety nets: the web server binds to localhost only,
a bad site file is one sentence and exit 2, a failing worker is shown and audited."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import screens.app
import screens.audit
from kconsole.audit import AuditLog
from screens.run_model import rto_level
from screens.suggest import default_params, down_nodes, scenario_for
from tests.tui_support import (
    make_console,
    settle,
    utc_local_time,  # noqa: F401 - the fixture below
    wait_for,
    write_site,
)

pytestmark = pytest.mark.usefixtures("utc_local_time")


def test_serve_web_binds_to_localhost_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, Any] = {}

    class FakeServer:
        def __init__(self, command: str, host: str, port: int, title: str) -> None:
            made.update(command=command, host=host, port=port)

        def serve(self) -> None:
            made["served"] = True

    import textual_serve.server

    monkeypatch.setattr(textual_serve.server, "Server", FakeServer)
    site = write_site(tmp_path)
    assert screens.app.serve_web(site, 8123) == 0
    assert made["host"] == "127.0.0.1" and made["port"] == 8123 and made["served"]
    assert made["command"].endswith(f"-m screens.app --site {site.resolve()}")


def test_a_bad_site_file_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "screens.app", "--site", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("kconsole: site file") and "Traceback" not in proc.stderr


async def test_a_failing_worker_is_shown_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = make_console(tmp_path)

    def unreadable(log: Any) -> Any:
        raise PermissionError("state dir unreadable")

    monkeypatch.setattr(screens.audit, "_read_and_verify", unreadable)

    class BrokenCatalog:
        async def read(self, live: dict[str, int | None]) -> Any:
            raise OSError("disk on fire")

    console.app.catalog = BrokenCatalog()
    async with console.app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await wait_for(
            pilot,
            lambda: any("disk on fire" in n.message for n in console.app._notifications),
            "the failure to be shown",
        )
        await pilot.press("u")  # a screen's own worker fails the same way
        await wait_for(
            pilot,
            lambda: any("unreadable" in n.message for n in console.app._notifications),
            "the screen's failure to be shown",
        )
        await settle(pilot)
    entries = AuditLog(console.app.site.state_dir).read()
    assert [(e["action"], e["target"], e["detail"]["error"]) for e in entries] == [
        ("console.error", "list the backup catalog", "OSError: disk on fire"),
        ("console.error", "read and verify the audit log", "PermissionError: state dir unreadable"),
    ]


def test_suggestions_follow_the_fleet(tmp_path: Path) -> None:
    from kconsole.fleet import NodeStatus
    from kconsole.runbook import load_runbook
    from kconsole.site import load_site

    site = load_site(write_site(tmp_path))
    status = {n: NodeStatus(n, "", site.nodes[n].groups, "active", "", 1.0) for n in site.nodes}
    status["api1"].state = "unreachable"
    status["validator3"].state = "inactive"
    down = down_nodes(site, status.values())
    assert down == ["validator3", "api1"]  # validators first
    assert scenario_for(site, down[:1]) == "single-node"
    assert scenario_for(site, down) == "multiple-nodes"
    assert scenario_for(site, ["validator1", "validator2", "validator3"]) == "complete-network"
    runbook = load_runbook(tmp_path / "runbooks" / "recover-single-node.toml")
    assert default_params(runbook, site, down) == {"node": "validator3", "backup": "latest"}
    assert default_params(runbook, site, []) == {"node": "", "backup": "latest"}


def test_rto_levels() -> None:
    assert rto_level(600, 1200, 3600) == "ok"
    assert rto_level(600, 3000, 3600) == "amber"
    assert rto_level(600, 3700, 3600) == "red"
    assert rto_level(3600, 3600, 3600) == "breached"
    assert rto_level(99999, 99999, 0) == "ok"


def test_a_node_far_behind_its_peers_is_behind_not_active_and_not_down(tmp_path: Path) -> None:
    """A recovered node hundreds of blocks below the others shows as `behind`, saying by how
    much; it is not offered for recovery (it is catching up)."""
    from kconsole.fleet import BEHIND_BLOCKS, NodeStatus, mark_behind
    from kconsole.site import load_site

    site = load_site(write_site(tmp_path))
    heights = {"validator1": 5000, "validator2": 4550, "validator3": 5000 - BEHIND_BLOCKS + 1}
    statuses = [
        NodeStatus(
            n, "", site.nodes[n].groups, "active", "kaldrix-node active", 1.0, heights.get(n)
        )
        for n in site.nodes
    ]
    statuses[-1].state = "inactive"
    mark_behind(statuses)
    by_name = {s.name: s for s in statuses}
    assert by_name["validator2"].state == "behind"
    assert by_name["validator2"].detail.endswith(", 450 blocks behind validator1 (height 5000)")
    assert by_name["validator3"].state == "active"  # 99 blocks: within the limit
    assert by_name["validator1"].state == "active"
    assert [s.name for s in statuses if s.state not in ("active", "behind")] == [statuses[-1].name]
    assert down_nodes(site, statuses) == [statuses[-1].name]


async def test_the_dashboard_watches_the_fleet_and_names_a_node_behind(tmp_path: Path) -> None:
    """The app's `fleet` is a reactive the dashboard watches: a poll kept with show_fleet
    redraws it, and a node behind its peers is named apart from the down ones."""
    from dataclasses import replace

    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        statuses = list(app.fleet.values())
        behind = replace(statuses[1], state="behind", detail="412 blocks behind validator1")
        app.show_fleet([statuses[0], behind, *statuses[2:]], app.clock.now())
        summary = app.screen.query_one("#fleet-summary")
        await wait_for(pilot, lambda: "BEHIND" in str(summary.render()), "the redraw")
        assert f"BEHIND its peers: {behind.name}" in str(summary.render())
        assert "DOWN" not in str(summary.render())
