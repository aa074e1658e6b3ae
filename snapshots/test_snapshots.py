"""What the operator sees, screen by screen, at 80x24 (an SSH session's default) and 120x40.

Every source of chance is pinned: a fixed clock at 03:14 UTC, an in-memory fleet, fixed
run ids, audit timestamps, no animation and no cursor blink. Regenerate with
`pytest snapshots --snapshot-update` and look at every changed SVG before committing it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

import kconsole.audit
from screens.widgets import RtoClock
from tests.tui_support import NOW, Console, catalog_rows, make_console, settle, type_text, wait_for

SMALL = (80, 24)
LARGE = (120, 40)
Script = Callable[[Pilot[Any]], Awaitable[None]]


class _FixedDatetime(kconsole.audit.datetime):  # type: ignore[misc, name-defined]
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return NOW.astimezone(tz or UTC)


@pytest.fixture(autouse=True)
def _fixed_audit_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit entries stamped 03:14:00 like everything else."""
    monkeypatch.setattr(kconsole.audit, "datetime", _FixedDatetime)


@pytest.fixture(autouse=True)
def _utc_cron(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Cron reads its table in local time: make that UTC, so next-due times are the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def _still(pilot: Pilot[Any]) -> None:
    """Settle, stop every cursor blinking and clear toasts: the picture no longer moves."""
    await settle(pilot)
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    pilot.app.clear_notifications()
    await pilot.pause()


async def _open_incident(pilot: Pilot[Any]) -> None:
    """A recovery incident on validator3, opened through the console's desk, then ticked."""
    app = pilot.app
    app.desk.open(  # type: ignore[attr-defined]
        "recovery", "critical", "validator3 does not answer", nodes=["validator3"]
    )
    await _ticked(pilot)


async def _ticked(pilot: Pilot[Any]) -> None:
    """Let the console's incident tick run and its result reach the screens."""
    app = pilot.app
    await wait_for(pilot, lambda: not app._ticking, "the incident tick")  # type: ignore[attr-defined]
    app.tick_incidents()  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: not app._ticking and app.incidents, "the incidents")  # type: ignore[attr-defined]
    await pilot.pause()


def _then(*steps: Script) -> Script:
    async def run(pilot: Pilot[Any]) -> None:
        for step in steps:
            await step(pilot)
        await _still(pilot)

    return run


def _keys(*keys: str) -> Script:
    async def press(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press(*keys)
        await settle(pilot)

    return press


async def _first_gate(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("r", "enter", "enter", "enter")
    await wait_for(pilot, lambda: pilot.app.gate_open, "the first gate")  # type: ignore[attr-defined]


def _typed_gate(console: Console) -> Script:
    async def run(pilot: Pilot[Any]) -> None:
        await _first_gate(pilot)
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: (
                ("restore", "validator2") in console.app.session.model.steps  # type: ignore[union-attr]
                and console.app.session.model.steps[("restore", "validator2")].state == "gated"
            ),  # type: ignore[union-attr]
            "the typed gate",
        )
        await wait_for(pilot, lambda: console.app.gate_open, "the gate dialog")
        console.clock.advance(12 * 60)
        for screen in console.app.screen_stack:  # the clock is on the Run screen, under the gate
            for clock in screen.query(RtoClock):
                clock.post_message(RtoClock.Ticked())
        await type_text(pilot, "valid")

    return run


async def _waiting_run(pilot: Pilot[Any]) -> None:
    """The first gate confirmed, the second left for later: a run waiting at a gate."""
    await _first_gate(pilot)
    await pilot.press("y")
    await wait_for(
        pilot,
        lambda: pilot.app.gate_open and pilot.app.screen.request.kind == "type",  # type: ignore[attr-defined]
        "the typed gate",
    )
    await pilot.press("tab", "enter")
    await wait_for(pilot, lambda: not pilot.app.run_active, "the run to stop")  # type: ignore[attr-defined]


async def _report(pilot: Pilot[Any]) -> None:
    """Runs, then the highlighted run's report."""
    from screens.runs import ReportScreen

    await _keys("h", "p")(pilot)
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ReportScreen), "the report")


class TestDashboard:
    """The home screen: fleet by group, RPO strip, run strip, who to call."""

    def test_healthy_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """Every node active; no catalog in this engine: the RPO strip says so."""
        console = make_console(tmp_path, catalog=None)
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then())

    def test_degraded_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """validator2's service is down, api1 unreachable; a stale tier in the RPO strip."""
        console = make_console(
            tmp_path, down=["validator2"], unreachable=["api1"], catalog=catalog_rows(40)
        )
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then())

    def test_degraded_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """The same at 120x40."""
        console = make_console(
            tmp_path, down=["validator2"], unreachable=["api1"], catalog=catalog_rows(40)
        )
        assert snap_compare(console.app, terminal_size=LARGE, run_before=_then())

    def test_degraded_no_color(
        self, snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """NO_COLOR: states still read from their symbols and words."""
        monkeypatch.setenv("NO_COLOR", "1")
        console = make_console(
            tmp_path, down=["validator2"], unreachable=["api1"], catalog=catalog_rows(40)
        )
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then())

    def test_choose_down_node_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """Two nodes down, Enter on a healthy row: the console asks which down node to recover."""
        console = make_console(tmp_path, down=["validator2"], unreachable=["api1"])
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then(_keys("enter")))


class TestRunbooks:
    """Choosing, preparing and reviewing a runbook with a validator down."""

    def test_list_with_suggestion_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """recover-single-node is highlighted because validator2 is down."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then(_keys("r")))

    def test_params_healthy_node_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """A recovery's node set to one that is active: the warning under the field."""
        console = make_console(tmp_path, down=["validator2"])

        async def healthy(pilot: Pilot[Any]) -> None:
            await settle(pilot)
            pilot.app.screen.fields["node"].value = "validator1"  # type: ignore[attr-defined]
            await pilot.pause()

        assert snap_compare(
            console.app, terminal_size=SMALL, run_before=_then(_keys("r", "enter"), healthy)
        )

    def test_plan_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """The plan: steps, nodes, gates, estimate against the RTO; Start focused."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(
            console.app, terminal_size=LARGE, run_before=_then(_keys("r", "enter", "enter"))
        )


class TestRun:
    """A run in progress with a gate open."""

    def test_confirm_gate_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """The first gate: plain confirm, focus on Cancel."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then(_first_gate))

    def test_typed_gate_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """Twelve minutes in: isolate done, the typed gate of restore half typed."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(
            console.app, terminal_size=LARGE, run_before=_then(_typed_gate(console))
        )


class TestCatalog:
    """The backup catalog filtered as you type (stub rows)."""

    def test_filtered_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """Only stale backups."""
        console = make_console(tmp_path, catalog=catalog_rows(60))
        script = _then(_keys("b", "slash"), lambda pilot: type_text(pilot, "status:stale"))
        assert snap_compare(console.app, terminal_size=SMALL, run_before=script)

    def test_filtered_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """validator-keys of validator2 in every location."""
        console = make_console(tmp_path, catalog=catalog_rows(60))
        script = _then(
            _keys("b", "slash"), lambda pilot: type_text(pilot, "validator-keys validator2")
        )
        assert snap_compare(console.app, terminal_size=LARGE, run_before=script)


class TestContacts:
    """Who to call at 03:14 on a Thursday, and the escalation matrices."""

    def test_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """80x24: the matrices wrap, nothing is cut."""
        console = make_console(tmp_path)
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then(_keys("c")))

    def test_open_incident_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """80x24, the escalation panel: an open recovery incident paged at level 1, the next
        page in 5 minutes, acknowledge and escalate keys."""
        console = make_console(tmp_path, down=["validator3"])
        assert snap_compare(
            console.app, terminal_size=SMALL, run_before=_then(_open_incident, _keys("c"))
        )

    def test_open_incident_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """120x40: the same, after an escalation to level 2 (the matrix shows the level)."""
        console = make_console(tmp_path, down=["validator3"])
        assert snap_compare(
            console.app,
            terminal_size=LARGE,
            run_before=_then(_open_incident, _keys("c", "e", "y"), _ticked),
        )


class TestRunsAndAudit:
    """Past runs with a timeline; the audit log verified."""

    def test_runs_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """A run waiting at its typed gate, re-attachable."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(
            console.app, terminal_size=SMALL, run_before=_then(_waiting_run, _keys("h"))
        )

    def test_report_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """The report of a run waiting at its gate: the plan's labels, nothing overstated."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(
            console.app, terminal_size=SMALL, run_before=_then(_waiting_run, _report)
        )

    def test_report_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """The same report at 120x40."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(
            console.app, terminal_size=LARGE, run_before=_then(_waiting_run, _report)
        )

    def test_audit_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """The audit entries the run wrote; chain intact."""
        console = make_console(tmp_path, down=["validator2"])
        assert snap_compare(
            console.app, terminal_size=LARGE, run_before=_then(_waiting_run, _keys("u"))
        )


class TestDrills:
    """A drill's walkthrough before it starts: what is injected, each step's guide, the
    exact command per node and the expected outcome."""

    def test_walkthrough_small(self, snap_compare: Any, tmp_path: Path) -> None:
        """80x24 on a staging site: the scenarios, then the single-node walkthrough."""
        console = make_console(tmp_path, staging=True)
        assert snap_compare(console.app, terminal_size=SMALL, run_before=_then(_keys("i")))

    def test_walkthrough_large(self, snap_compare: Any, tmp_path: Path) -> None:
        """120x40: the same, with room for every step."""
        console = make_console(tmp_path, staging=True)
        assert snap_compare(console.app, terminal_size=LARGE, run_before=_then(_keys("i")))
