"""The console with a shared store: another console's incident is on the dashboard and the
escalation panel (with its console and account), and acknowledging it here reaches there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kconsole.incidents.sharing import IncidentMirror
from kconsole.shared import console_name
from screens.contacts import ContactsScreen
from screens.dialogs import ConfirmScreen
from tests.test_tui_shared import s3_endpoint, shared_console  # noqa: F401 - the fixture
from tests.tui_support import settle, utc_local_time, wait_for  # noqa: F401

pytestmark = pytest.mark.usefixtures("utc_local_time")


def _shared_desk(console: Any) -> Any:
    """The console's desk, sharing through the store `shared_console` set on its site."""
    desk = console.app.desk
    desk.store.mirror = IncidentMirror.for_site(console.app.site)
    return desk


def _text(app: Any, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def test_another_consoles_incident_is_shown_and_acknowledged_here(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = shared_console(tmp_path / "a", s3_endpoint, "alice", monkeypatch)
    da = _shared_desk(a)
    inc = da.open("recovery", "critical", "validator3 does not answer", nodes=["validator3"])
    assert da.close_shared() == ""

    b = shared_console(tmp_path / "b", s3_endpoint, "olga", monkeypatch)
    db = _shared_desk(b)
    where = f"opened by alice on {console_name(a.app.site)}"
    async with b.app.run_test(size=(160, 32)) as pilot:
        await settle(pilot)
        b.app.tick_incidents()
        await wait_for(pilot, lambda: any(i.id == inc.id for i in b.app.incidents), "A's incident")
        await pilot.pause()
        assert where in _text(b.app, "#incidents-strip")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(b.app.screen, ContactsScreen), "the panel")
        await pilot.pause()
        assert where in _text(b.app, "#incident-line")
        await pilot.press("k")
        assert isinstance(b.app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: db.get(inc.id).acknowledged_by == "olga", "the ack")
    assert db.close_shared() == ""
    assert da.pull_shared() == ""
    assert da.get(inc.id).acknowledged_by == "olga"
