"""Trust boundary: the console never points at the wrong node. With a node down and the
cursor resting on a healthy row, Enter on the dashboard must prepare the recovery of the
node that is down, never of the highlighted healthy one; with several down it asks; and
the parameters screen says so whenever a recovery would run on a node that is active."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import OptionList, Static

from screens.dashboard import DashboardScreen
from screens.dialogs import ChooseNodeScreen
from screens.runbooks import ParamsScreen, RunbooksScreen
from tests.tui_support import make_console, settle, wait_for


def _summary(app: object) -> str:
    return str(app.screen.query_one("#fleet-summary", Static).render())  # type: ignore[attr-defined]


def _node_warning(screen: ParamsScreen) -> str:
    (note,) = screen.node_notes.values()
    return str(note.render()) if note.display else ""


async def test_enter_on_a_healthy_row_recovers_the_node_that_is_down(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#fleet").cursor_row == 0  # bootstrap1, healthy
        assert "DOWN: validator2 — Enter to recover it" in _summary(app)
        assert "bootstrap1 —" not in _summary(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunbooksScreen), "the runbooks")
        suggestion = str(app.screen.query_one("#suggestion", Static).render())
        assert suggestion.startswith("DOWN: validator2 — recover-single-node")
        await pilot.press("enter")
        assert isinstance(app.screen, ParamsScreen)
        assert app.screen.fields["node"].value == "validator2"
        assert _node_warning(app.screen) == ""


async def test_with_several_down_it_asks_which_and_never_offers_a_healthy_node(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path, down=["validator2"], unreachable=["api1"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert "choose which to recover" in _summary(app)
        await pilot.press("enter")  # on bootstrap1, healthy
        await wait_for(pilot, lambda: isinstance(app.screen, ChooseNodeScreen), "the chooser")
        options = app.screen.query_one(OptionList)
        ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
        assert ids == ["validator2", "api1", "*"]
        assert options.highlighted == 0
        await pilot.press("escape")  # chooses nothing
        assert isinstance(app.screen, DashboardScreen) and app.requested_node is None
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChooseNodeScreen), "the chooser")
        await pilot.press("down", "enter")  # api1
        await wait_for(pilot, lambda: isinstance(app.screen, RunbooksScreen), "the runbooks")
        assert app.down_for_recovery() == ["api1"]


async def test_with_several_down_all_of_them_is_a_choice(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2", "validator3"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChooseNodeScreen), "the chooser")
        await pilot.press("down", "down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunbooksScreen), "the runbooks")
        assert app.down_for_recovery() == ["validator2", "validator3"]


async def test_a_highlighted_down_node_is_recovered_without_asking(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2", "validator3"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "down", "enter")  # validator3, down itself
        await wait_for(pilot, lambda: isinstance(app.screen, RunbooksScreen), "the runbooks")
        assert app.down_for_recovery() == ["validator3"]


async def test_nothing_down_means_nothing_is_prepared(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        assert app.requested_node is None
        assert any("nothing to recover" in n.message for n in app._notifications)


async def test_the_params_screen_says_so_when_a_recovery_targets_a_healthy_node(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        entry = next(e for e in app.runbooks if e.id == "recover-single-node")
        assert entry.runbook is not None
        # Pre-selected healthy (as a runbook's own default or a stale request could do):
        app.push_screen(ParamsScreen(entry.runbook, {"node": "validator1", "backup": "latest"}))
        await wait_for(pilot, lambda: isinstance(app.screen, ParamsScreen), "the parameters")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ParamsScreen)
        assert _node_warning(screen).startswith("⚠ validator1 was active at the last poll")
        screen.fields["node"].value = "validator2"  # the node that is down: no warning
        await pilot.pause()
        assert _node_warning(screen) == ""
        screen.fields["node"].value = "bootstrap1"  # chosen by hand: said again
        await pilot.pause()
        assert "bootstrap1 was active" in _node_warning(screen)
