"""Incidents in the console: acknowledge and escalate from the escalation panel (each asks
first), a recovery started here opens an incident, and a host that cannot be reached says
what to do next with one key to escalate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from screens.contacts import ContactsScreen
from screens.dialogs import ConfirmScreen, GateScreen
from screens.run import RunScreen
from tests.tui_support import (
    make_console,
    settle,
    utc_local_time,  # noqa: F401 - the fixture below
    wait_for,
)

pytestmark = pytest.mark.usefixtures("utc_local_time")


def _text(app: Any, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def _with_incident(pilot: Pilot[Any]) -> str:
    app: Any = pilot.app
    await settle(pilot)
    inc = app.desk.open("recovery", "critical", "validator3 does not answer", nodes=["validator3"])
    app.tick_incidents()
    await wait_for(pilot, lambda: app.incidents, "the incident on screen")
    await pilot.press("c")
    await wait_for(pilot, lambda: isinstance(app.screen, ContactsScreen), "the escalation panel")
    await pilot.pause()
    return str(inc.id)


async def test_acknowledge_asks_first_and_stops_the_clock(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app: Any = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        inc = await _with_incident(pilot)
        assert "next page: level 2 in 5m" in _text(app, "#incident-line")
        assert "Call now: L1 Backup Engineer: Jane Doe" in _text(app, "#call-now")
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")  # changed my mind: nothing happens
        assert not app.desk.get(inc).acknowledged_by
        await pilot.press("k")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.desk.get(inc).acknowledged_by == "alice", "the ack")
        await wait_for(
            pilot, lambda: "acknowledged by alice" in _text(app, "#incident-line"), "the panel"
        )
        assert app.screen.check_action("acknowledge", ()) is False
    assert app.desk.next_page_at(app.desk.get(inc)) is None


async def test_escalate_pages_the_next_level_and_the_panel_follows(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app: Any = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        inc = await _with_incident(pilot)
        for level in (2, 3, 4):
            await pilot.press("e")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_for(pilot, lambda lv=level: app.desk.get(inc).level == lv, f"level {level}")
            await wait_for(
                pilot, lambda lv=level: f"level {lv} ·" in _text(app, "#incident-line"), "panel"
            )
        assert "Call now: L4 CEO" in _text(app, "#call-now")
        assert app.screen.check_action("escalate", ()) is False  # the top of the matrix
    paged = [e["level"] for e in app.desk.store.events(inc) if e["event"] == "paged"]
    assert paged == [1, 2, 3, 4]


async def test_a_recovery_started_here_opens_an_incident_named_on_the_run(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app: Any = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("r", "enter", "enter", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GateScreen), "the first gate")
        (inc,) = app.desk.incidents()
        assert inc.type == "recovery" and inc.nodes == ["validator2"] and inc.level == 1
        assert inc.runs == ["20261126-031400-0001"]
        run = next(s for s in app.screen_stack if isinstance(s, RunScreen))
        assert f"incident {inc.id}" in str(run.query_one("#run-head").render())


async def test_the_dashboard_shows_open_incidents(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app: Any = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert not app.screen.query_one("#incidents-strip").display
        inc = app.desk.open("backup", "high", "backups of validator1 failing", nodes=["validator1"])
        app.tick_incidents()
        await wait_for(pilot, lambda: app.incidents, "the incident read")
        await pilot.pause()
        strip = _text(app, "#incidents-strip")
        assert f"! {inc.id} high backup L1 NOT acknowledged" in strip and "c escalation" in strip
        assert app.screen.query_one("#incidents-strip").display


async def test_an_unreachable_host_says_what_next_and_one_key_escalates(tmp_path: Path) -> None:
    console = make_console(tmp_path, unreachable=["validator2"])
    app: Any = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("r", "enter", "enter", "enter", "y")
        await wait_for(pilot, lambda: not app.run_active and app.session, "the run to end")
        assert app.session.model.status == "failed"
        await wait_for(pilot, lambda: app.incidents, "the incident read")
        await pilot.pause()
        head = _text(app, "#run-head")
        assert "validator2 is unreachable: the host itself is gone: replace it" in head
        assert "E escalates INC-20261126-031400-0001" in head
        assert app.screen.check_action("escalate", ()) is True
        await pilot.press("E")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.desk.incidents()[0].level == 2, "level 2 paged")
