"""Each screen of the console: the dashboard and its background poll, the palette, the
keymap, contacts, runs, audit, catalog, and the layout at 80x24 and 200x60."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import DataTable, Input, Log, Static

from kconsole.errors import UsageError
from screens.app import KconsoleApp
from screens.audit import AuditScreen
from screens.catalog import CatalogScreen
from screens.catalog_source import WINDOW
from screens.contacts import ContactsScreen
from screens.dashboard import DashboardScreen
from screens.keys import binding_ids, check_keymap, load_keymap
from screens.run import RunScreen
from screens.runbooks import ParamsScreen, RunbooksScreen
from screens.runs import ReportScreen, RunsScreen
from tests.tui_support import (
    NOW,
    catalog_rows,
    make_console,
    settle,
    type_text,
    utc_local_time,  # noqa: F401 - the fixture below
    wait_for,
)

pytestmark = pytest.mark.usefixtures("utc_local_time")


def _text(app: KconsoleApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def _question(app: KconsoleApp) -> str:
    """The open gate's question ("" when no gate is open)."""
    return _text(app, "#question") if app.gate_open else ""


def _hits(app: KconsoleApp) -> list[str]:
    commands = app.screen.query_one(CommandList)
    return [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]


def _cells(table: DataTable[object], column: int) -> list[str]:
    return [str(table.get_row_at(i)[column]) for i in range(table.row_count)]


async def test_dashboard_shows_fleet_tiers_on_call_and_down_nodes(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"], unreachable=["api1"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        table = app.screen.query_one("#fleet", DataTable)
        assert _cells(table, 1) == ["bootstrap1", "validator1", "validator2", "validator3", "api1"]
        assert _cells(table, 0) == ["bootstrap", "validator", "", "", "api"]
        assert _cells(table, 2) == [
            "● active",
            "● active",
            "○ inactive",
            "● active",
            "✖ unreachable",
        ]
        assert "DOWN: validator2, api1" in _text(app, "#fleet-summary")
        assert "Jane Doe +1-555-0102" in _text(app, "#oncall")
        critical = str(app.screen.tier_cells["critical"].render())
        assert "critical RPO 15m RTO 1h" in critical and "no catalog" in critical
        await pilot.press("down", "down", "enter")  # validator2 is down: recover it
        await wait_for(pilot, lambda: isinstance(app.screen, RunbooksScreen), "the runbooks")
        await pilot.press("enter")
        assert isinstance(app.screen, ParamsScreen)
        assert app.screen.fields["node"].value == "validator2"


async def test_a_hung_poll_never_blocks_the_keys(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    hang = console.transport.hold(r"^probe:validator3$")
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert app._polling
        await pilot.press("c")
        assert isinstance(app.screen, ContactsScreen)
        await pilot.press("r")
        assert isinstance(app.screen, RunbooksScreen)
        assert app._polling and not app.fleet
        hang.set()
        await wait_for(pilot, lambda: app.fleet, "the poll to come back")


async def test_palette_reaches_every_screen_by_name_and_lists_screen_actions(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        # Three of them here; the tmux test walks the palette to every screen.
        for screen_cls in (RunbooksScreen, ContactsScreen, CatalogScreen):
            await pilot.press("ctrl+p")
            assert isinstance(app.screen, CommandPalette)
            await type_text(pilot, screen_cls.NAME)
            await wait_for(
                pilot,
                lambda name=screen_cls.NAME: _hits(app)[:1] and _hits(app)[0].startswith(name),
                "the screen as the first hit",
            )
            await pilot.press("enter")
            await wait_for(
                pilot,
                lambda cls=screen_cls: isinstance(app.screen, cls),
                f"the {screen_cls.NAME} screen",
            )
        await pilot.press("escape", "u", "ctrl+p")
        await type_text(pilot, "Verify")
        await wait_for(
            pilot,
            lambda: _hits(app)[:1] and _hits(app)[0].startswith("Audit: Verify"),
            "the screen's own action",
        )
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, AuditScreen)


async def test_every_screen_is_one_key_away(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        for key, cls in (
            ("r", RunbooksScreen),
            ("a", RunScreen),
            ("c", ContactsScreen),
            ("h", RunsScreen),
            ("u", AuditScreen),
            ("b", CatalogScreen),
        ):
            await pilot.press(key)
            assert isinstance(app.screen, cls), key
            if cls is CatalogScreen:
                await pilot.press("escape")  # the filter has focus; escape returns to the table
            await pilot.press("d")
            assert isinstance(app.screen, DashboardScreen)


async def test_keymap_remaps_by_binding_id(tmp_path: Path) -> None:
    console = make_console(tmp_path, keymap={"show-runbooks": "f2", "run-abort": "ctrl+x"})
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("f2")
        assert isinstance(app.screen, RunbooksScreen)
    assert app.key_for("run-abort") == "ctrl+x"


def test_binding_ids_are_stable_kebab_case_and_checked(tmp_path: Path) -> None:
    ids = binding_ids()
    assert {
        "show-dashboard",
        "show-runbooks",
        "quit",
        "run-abort",
        "run-pause",
        "gate-confirm",
        "gate-cancel",
        "runs-reattach",
        "catalog-filter",
    } <= set(ids)
    assert all(i == i.lower() and " " not in i and "_" not in i for i in ids)
    with pytest.raises(
        UsageError, match='unknown binding id "run-abrot" \\(did you mean "run-abort"'
    ):
        check_keymap({"run-abrot": "x"})
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys]\nshow-runbooks = "f2"\n\nrun-abrot = "x"\n')
    with pytest.raises(UsageError, match=f"{keys}:4:1: unknown binding id"):
        load_keymap(keys)
    keys.write_text('[keys]\nshow-runbooks = "f2"\n')
    assert load_keymap(keys) == {"show-runbooks": "f2"}
    assert load_keymap(tmp_path / "absent.toml") == {}


async def test_contacts_say_who_to_call_and_who_is_off_duty(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        assert "L1 Backup Engineer: Jane Doe +1-555-0102 · Recovery Issues" in _text(
            app, "#call-now"
        )
        table = app.screen.query_one("#contacts", DataTable)
        now = dict(zip(_cells(table, 0), _cells(table, 4), strict=True))
        assert (
            now["Mike Johnson"] == "off" and now["Jane Doe"] == "yes"
        )  # 03:14: out of business hours
        recovery = str(app.screen.matrix_lines["recovery"].render())
        assert "Recovery Issues: ▶ L1 Backup Engineer —5m→ L2 Operations Lead" in recovery


async def test_runs_list_timelines_open_read_only_and_show_the_report(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("r", "enter", "enter", "enter")
        await wait_for(pilot, lambda: app.gate_open, "the first gate")
        await pilot.press("escape")
        await wait_for(pilot, lambda: "Abort the run?" in _question(app), "the abort question")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.run_active, "the run to end")
        await pilot.press("h")
        await settle(pilot)
        table = app.screen.query_one("#runs", DataTable)
        assert _cells(table, 0) == ["20261126-031400-0001"]
        lines = app.screen.query_one("#timeline", Log).lines
        assert any("isolate" in line and "refused" in line for line in lines)
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), "the report")
        assert "Backup and Recovery" in app.screen.markdown and "refused" in app.screen.markdown
        await pilot.press("s")  # saved from the report view with one key
        report_screen = app.screen
        await wait_for(pilot, lambda: len(report_screen.saved) == 2, "the report saved")
        md_path, html_path = report_screen.saved
        assert md_path == console.app.site.state_dir / "reports" / "20261126-031400-0001.md"
        assert md_path.read_text() == app.screen.markdown
        assert "- **RTO Met**: No (the recovery aborted" in md_path.read_text()
        assert html_path.read_text().startswith("<!DOCTYPE html>")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ReportScreen), "back to the runs")
        app.session = None  # as if another console had run it: opened from its journal
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
        await pilot.pause()
        assert "(journal)" in _text(app, "#run-head")


async def test_audit_shows_entries_and_a_broken_chain(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app = console.app
    from kconsole.audit import AuditLog

    log = AuditLog(app.site.state_dir)
    for i in range(3):
        log.append("alice", "run.start", f"run-{i}", runbook="recover-single-node")
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("u")
        await settle(pilot)
        assert "✔ chain intact: 3 entries intact" in _text(app, "#verify-state")
        assert _cells(app.screen.query_one("#entries", DataTable), 4) == ["run-2", "run-1", "run-0"]
        text = log.path.read_text().replace("run-1", "run-X")
        log.path.write_text(text)
        await pilot.press("v")
        await settle(pilot)
        assert "✖ TAMPERED: entry 2 (line 2)" in _text(app, "#verify-state")


async def test_catalog_filters_as_you_type_within_a_window(tmp_path: Path) -> None:
    console = make_console(tmp_path, catalog=catalog_rows(5000))
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        table = app.screen.query_one("#backups", DataTable)
        assert table.row_count == WINDOW
        assert "showing 2,000 of 5,000" in _text(app, "#catalog-status")
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await type_text(pilot, "keys node:api1")
        await settle(pilot)
        assert set(_cells(table, 1)) == {"validator-keys"} and set(_cells(table, 2)) == {"api1"}
        assert table.row_count == 250
        assert "250 backups matching “keys node:api1” (of 5,000)" in _text(app, "#catalog-status")


async def test_catalog_without_the_engine_catalog_says_so(tmp_path: Path) -> None:
    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await pilot.pause()
        assert "catalog not available" in _text(app, "#catalog-status")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_every_screen_lays_out_at_small_and_large_sizes(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    console = make_console(tmp_path, down=["validator2"], catalog=catalog_rows(30))
    app = console.app
    width, height = size
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        for key in ("d", "r", "a", "c", "h", "u", "b"):
            await pilot.press(key)
            await settle(pilot)
            if isinstance(app.screen, CatalogScreen):
                await pilot.press("escape")
            for widget in app.screen.query("DataTable, Footer, Header"):
                if not widget.display:
                    continue  # hidden on purpose (no open incident: no incident table)
                region = widget.region
                assert region.width > 0 and region.height > 0, (key, widget)
                assert region.right <= width and region.bottom <= height, (key, widget)


async def test_the_dashboard_catches_up_with_polls_made_while_it_was_hidden(tmp_path: Path) -> None:
    """Polls do not redraw a hidden dashboard; coming back to it shows the latest one."""
    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#fleet", DataTable)
        assert _cells(table, 2)[3] == "● active"
        await pilot.press("c")
        assert isinstance(app.screen, ContactsScreen)
        console.transport.down("validator3", "connection refused")
        app.poll_fleet()
        await wait_for(pilot, lambda: app.fleet["validator3"].state == "unreachable", "the poll")
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        table = app.screen.query_one("#fleet", DataTable)
        assert _cells(table, 2)[3] == "✖ unreachable"
        assert "DOWN: validator3" in _text(app, "#fleet-summary")


def _journal_run(site_root: Path, run_id: str, runbook: str, when: str, status: str) -> None:
    """A finished run of `runbook` in the journal, as the executor writes it."""
    import json

    d = site_root / "state" / "runs" / run_id
    d.mkdir(parents=True)
    records = [
        {
            "type": "run",
            "event": "created",
            "run": run_id,
            "runbook": runbook,
            "title": runbook,
            "params": {},
            "drill": False,
            "user": "cron",
            "time": when,
            "site": "tui",
        },
        {
            "type": "run",
            "event": "finished",
            "run": run_id,
            "status": status,
            "reason": "",
            "time": when,
        },
    ]
    (d / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


async def test_the_dashboard_shows_next_due_and_overdue_backup_runs(tmp_path: Path) -> None:
    # 03:14 now: chain state last ran 02:00 (14 runs missed), transaction logs at 03:00 (on time).
    _journal_run(
        tmp_path,
        "20261126-020000-0001",
        "backup-blockchain-state",
        "2026-11-26T02:00:05Z",
        "succeeded",
    )
    _journal_run(
        tmp_path,
        "20261126-020000-0002",
        "backup-validator-keys",
        "2026-11-26T03:00:05Z",
        "succeeded",
    )
    _journal_run(
        tmp_path,
        "20261126-030000-0003",
        "backup-transaction-logs",
        "2026-11-26T03:00:05Z",
        "succeeded",
    )
    console = make_console(tmp_path, catalog=catalog_rows(20))
    app = console.app
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await wait_for(pilot, lambda: app.schedule is not None, "the schedule")
        await settle(pilot)
        critical = str(app.screen.tier_cells["critical"].render())
        important = str(app.screen.tier_cells["important"].render())
        assert "next 03:15 · ! 1 OVERDUE" in critical
        assert "next 04:00 · on time" in important
        assert "OVERDUE: backup-blockchain-state" in _text(app, "#run-title")
        assert app.screen.tier_cells["critical"].has_class("-stale")


async def test_the_dashboard_warns_when_the_backup_key_is_due_for_rotation(tmp_path: Path) -> None:
    import os

    from kconsole.crypto import keygen

    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    keygen(keys / "k1.key")
    old = NOW.timestamp() - 100 * 86400
    os.utime(keys / "k1.key", (old, old))
    console = make_console(tmp_path, site_extra='\n[keys]\ndir = "keys"\nrotate_after = "90d"\n')
    app = console.app
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.key_rotation is not None, "the key's age")
        await settle(pilot)
        assert app.key_rotation is not None and round(app.key_rotation.age_s / 86400) == 100
        assert "backup key rotation" in _text(app, "#run-title")


async def test_the_parameters_say_which_backup_will_be_restored(tmp_path: Path) -> None:
    rows = catalog_rows(40)
    mine = sorted(
        (r for r in rows if r["node"] == "validator2" and r["kind"] == "blockchain-state"),
        key=lambda r: r["created"],
        reverse=True,
    )
    newest, older = mine[0], mine[1]
    console = make_console(tmp_path, down=["validator2"], catalog=rows)
    app = console.app
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await wait_for(pilot, lambda: app.catalog_reading is not None, "the catalog")
        await pilot.press("r", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ParamsScreen), "the parameters")
        await settle(pilot)
        note = str(app.screen.backup_notes["backup"].render())
        assert newest["id"] in note and "old" in note and newest["location"] in note
        field = app.screen.fields["backup"]
        assert isinstance(field, Input)
        field.value = f"before:{newest['created']}"
        await settle(pilot)
        assert older["id"] in str(app.screen.backup_notes["backup"].render())
        field.value = "before:1999-01-01T00:00Z"
        await settle(pilot)
        assert "no good blockchain-state backup of validator2 made before 1999-01-01" in str(
            app.screen.backup_notes["backup"].render()
        )


async def test_screen_keys_work_as_soon_as_the_catalog_opens(tmp_path: Path) -> None:
    """The catalog opens on its table: `d` goes to the dashboard instead of into the filter;
    `/` is how to type a filter, and escape leaves it for the screen keys again."""
    console = make_console(tmp_path, catalog=catalog_rows(30))
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        assert isinstance(app.focused, DataTable)
        await pilot.press("d")
        await wait_for(pilot, lambda: app.current_mode == "dashboard", "the dashboard")
        await pilot.press("b")
        await settle(pilot)
        await pilot.press("slash", "d")
        assert app.current_mode == "catalog"
        assert app.screen.query_one("#filter", Input).value == "d"
        await pilot.press("escape", "d")
        await wait_for(pilot, lambda: app.current_mode == "dashboard", "the dashboard")


async def test_at_80x24_the_run_header_keeps_the_failure_and_runs_keep_the_time(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r", "enter", "enter", "enter")
        await wait_for(pilot, lambda: app.gate_open, "the first gate")
        await pilot.press("escape")
        await wait_for(pilot, lambda: "Abort the run?" in _question(app), "the abort question")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.run_active, "the run to end")
        await pilot.pause()
        # A failure as long as a real one (the refusal's own reason is short).
        reason = (
            "restore on validator2 failed: exit code 2, expected 0: tar: "
            "./chain/blocks/000123.ldb: Cannot write: No space left on device"
        )
        app.shown_run.reason = reason
        app.post_message(app.RunChanged())
        await pilot.pause()
        head = app.screen.query_one("#run-head")
        assert reason in _text(app, "#run-head")
        # Every line of the header, the failure wrapped onto its own, fits: nothing is cut.
        width = head.content_region.width
        assert head.get_content_height(head.size, app.size, width) <= head.content_region.height
        await pilot.press("h")
        await settle(pilot)
        table = app.screen.query_one("#runs", DataTable)
        assert _cells(table, 1) == ["2026-11-26 03:14"]
        shown = table.scrollable_content_region.width
        run_and_started = sum(c.get_render_width(table) for c in table.ordered_columns[:2])
        assert run_and_started <= shown


async def test_drill_screen_previews_and_runs_a_walked_through_drill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a production site the Drill screen only previews; on a staging site Enter injects
    the failure (the service stopped over SSH), starts the recovery as a drill, and every step's
    gate carries its briefing: guide, the exact command per node, the expected outcome."""
    from kconsole.reports import read_evidence
    from screens.drills import DrillScreen

    # The scripted fleet keeps answering "active" after the stop: poll twice, not for a minute.
    monkeypatch.setattr("kconsole.drills.DETECT_WITHIN", 1.0)
    (tmp_path / "prod").mkdir()
    (tmp_path / "staging").mkdir()
    console = make_console(tmp_path / "prod")
    app = console.app
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        assert isinstance(app.screen, DrillScreen)
        text = str(app.screen.query_one("#drill-walkthrough", Static).render())
        assert "validator1$ systemctl stop kaldrix-node" in text and "expected: exit code 0" in text
        assert "Preview only" in str(app.screen.query_one("#drill-info", Static).render())
        await pilot.press("enter")
        await settle(pilot)
        assert not app.run_active and app.session is None
        await pilot.press("t")
        await settle(pilot)
        schedule = str(app.screen.query_one("#drill-walkthrough", Static).render())
        assert "bi-annually" in schedule and "Full-scale recovery exercise" in schedule

    console = make_console(tmp_path / "staging", staging=True)
    app = console.app
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        drills = app.screen
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.gate_open, "the first step's gate")
        guide = app.screen.request.guide
        assert "Commands:" in guide and "Expected: exit code 0" in guide
        assert "validator1$ systemctl stop kaldrix-node" in guide
        first = app.screen
        await pilot.press("s")  # skip this step: recorded, the drill goes on
        await wait_for(
            pilot, lambda: app.gate_open and app.screen is not first, "the next step's gate"
        )
        second = app.screen
        await pilot.press("escape")  # stop the drill here
        await wait_for(
            pilot, lambda: app.gate_open and app.screen is not second, "the abort question"
        )
        await pilot.press("y")  # yes, abort
        await wait_for(pilot, lambda: not app.run_active, "the drill to stop")
        await wait_for(pilot, lambda: drills.last_drill is not None, "the drill's run id")
        run_id = drills.last_drill
        evidence = read_evidence(app.site, run_id)
        assert evidence["scenario"] == "single-node"
        assert evidence["injected"] == ["stopped kaldrix-node on validator1"]
        assert any(
            c.node == "validator1" and c.command == "sudo -n systemctl stop kaldrix-node"
            for c in console.transport.calls
        )
        await pilot.press("h", "p")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), "the drill's report")
        md = app.screen.markdown
        assert md.startswith("# Backup and Recovery Test Report")
        assert "- **Injected Failure**: stopped kaldrix-node on validator1" in md
        assert "- **RTO Met**: No (the recovery aborted" in md
        assert (
            "Step isolate on validator1 was skipped: skipped by alice in the drill walkthrough."
            in md
        )
        assert not any(
            c.command == "systemctl stop kaldrix-node" for c in console.transport.calls
        )  # the skipped step did not run


async def test_drill_switch_is_on_by_default_for_test_runbooks(tmp_path: Path) -> None:
    from textual.widgets import Checkbox

    from kconsole.runbook import load_runbook, resolve_runbook_path

    console = make_console(tmp_path)
    app = console.app
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for name, ticked in (("test-single-node-recovery", True), ("recover-single-node", False)):
            rb = load_runbook(resolve_runbook_path(name, [tmp_path / "runbooks"]))
            await app.push_screen(ParamsScreen(rb, {}))
            await settle(pilot)
            assert app.screen.query_one("#drill", Checkbox).value is ticked, name
            app.pop_screen()
            await settle(pilot)
