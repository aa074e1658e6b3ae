"""The run flow in the console: gates (confirm, cancel, typed, checklist, later), pause,
abort, notes, the RTO clock, quitting during a run and re-attaching to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import Button, Input

from kconsole.audit import AuditLog
from kconsole.journal import summarise
from screens.dialogs import ConfirmScreen, GateScreen, NoteScreen
from screens.run import RunScreen
from screens.runbooks import PlanScreen, RunbooksScreen
from screens.widgets import RtoClock
from tests.tui_support import (
    journal,
    make_console,
    settle,
    step_events,
    type_text,
    utc_local_time,  # noqa: F401 - the fixture below
    wait_for,
)

SCENARIO_1 = ["r", "enter", "enter", "enter", "y"]
"""From launch to the first confirmed step of recover-single-node, with a validator down."""

pytestmark = pytest.mark.usefixtures("utc_local_time")


def _gate(app: object) -> GateScreen | None:
    screen = app.screen  # type: ignore[attr-defined]
    return screen if isinstance(screen, GateScreen) else None


async def _to_first_gate(pilot, console) -> GateScreen:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press(*SCENARIO_1[:-1])
    await wait_for(pilot, lambda: _gate(console.app), "the first gate")
    gate = _gate(console.app)
    assert gate is not None
    return gate


async def test_scenario_1_reaches_the_first_confirmed_step_in_at_most_six_keys(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path, down=["validator2"])
    async with console.app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        for key in SCENARIO_1:
            await pilot.press(key)
            await pilot.pause()
        await wait_for(
            pilot, lambda: ("isolate", "finished") in step_events(console), "isolate to finish"
        )
    assert len(SCENARIO_1) <= 6
    assert ("isolate", "confirmed") in step_events(console)
    assert console.transport.commands("validator2")[-1] == "systemctl stop kaldrix-node"
    head = next(r for r in journal(console) if r.get("event") == "created")
    assert head["params"] == {"node": "validator2", "backup": "latest"}


async def test_gate_opens_with_focus_on_cancel_and_escape_refuses(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    async with console.app.run_test(size=(100, 32)) as pilot:
        gate = await _to_first_gate(pilot, console)
        assert isinstance(console.app.focused, Button) and console.app.focused.id == "cancel"
        await pilot.press("enter")  # a reflexive Enter cancels, it never confirms
        # ... and a refusal asks before it ends the run; Enter (Cancel) goes back to the gate.
        await wait_for(pilot, lambda: _asks_abort(console.app), "the abort question")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: _gate(console.app) is not None and not _asks_abort(console.app),
            "the gate again",
        )
        await pilot.press("enter")  # refused a second time: no more questions
        await wait_for(pilot, lambda: not console.app.run_active, "the run to end")
        assert gate is not console.app.screen
        await pilot.press(
            "r"
        )  # the parameter and plan screens were left behind when the run started
        assert isinstance(console.app.screen, RunbooksScreen)
    events = step_events(console)
    assert ("isolate", "refused") in events and ("isolate", "confirmed") not in events
    assert "systemctl stop kaldrix-node" not in console.transport.commands("validator2")
    assert console.app.session is not None and console.app.session.model.status == "aborted"


def _asks_abort(app) -> bool:  # type: ignore[no-untyped-def]
    gate = _gate(app)
    return gate is not None and "Abort the run?" in gate.request.question()


async def test_refusing_then_confirming_the_abort_ends_the_run_aborted(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    async with console.app.run_test(size=(100, 32)) as pilot:
        await _to_first_gate(pilot, console)
        await pilot.press("escape")
        await wait_for(pilot, lambda: _asks_abort(console.app), "the abort question")
        await pilot.press("y")
        await wait_for(pilot, lambda: not console.app.run_active, "the run to end")
    assert console.app.session is not None and console.app.session.model.status == "aborted"
    assert "systemctl stop kaldrix-node" not in console.transport.commands("validator2")


async def test_typed_gate_needs_the_exact_value_and_checklist_needs_every_box(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await _to_first_gate(pilot, console)
        await pilot.press("y")
        await wait_for(
            pilot, lambda: (g := _gate(app)) and g.request.kind == "type", "the typed gate"
        )
        assert app.focused is not None and app.focused.id == "cancel"
        await type_text(pilot, "v1")  # typing from Cancel types into the value
        await pilot.press("enter")
        gate = _gate(app)
        assert gate is not None and gate.query_one("#typed", Input).value == "v1"
        assert "does not match" in str(gate.query_one("#gate-error").render())
        gate.query_one("#typed", Input).value = ""
        await type_text(pilot, "validator2")
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: (g := _gate(app)) and g.request.kind == "checklist", "the checklist gate"
        )
        await pilot.press("y")  # nothing ticked yet: refused with a reason, gate stays
        await pilot.pause()
        gate = _gate(app)
        assert gate is not None and "not ticked" in str(gate.query_one("#gate-error").render())
        await pilot.press("shift+tab", "shift+tab", "space", "shift+tab", "space", "tab", "tab")
        await type_text(pilot, "ok")
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.run_active, "the run to finish")
    events = step_events(console)
    assert [e for e in events if e[1] in ("confirmed", "finished")] == [
        ("isolate", "confirmed"),
        ("isolate", "finished"),
        ("restore", "confirmed"),
        ("restore", "finished"),
        ("start", "finished"),
        ("verify", "finished"),
    ]
    assert summarise(app.site.state_dir / "runs" / "20261126-031400-0001").status == "succeeded"
    verify = next(
        r for r in journal(console) if r.get("step") == "verify" and r.get("event") == "finished"
    )
    assert verify["data"]["note"] == "ok"


async def test_pause_abort_and_note_on_a_running_step(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    release = console.transport.hold(r"^tar ")
    async with app.run_test(size=(100, 32)) as pilot:
        await _to_first_gate(pilot, console)
        await pilot.press("y")
        await wait_for(
            pilot, lambda: (g := _gate(app)) and g.request.kind == "type", "the typed gate"
        )
        await type_text(pilot, "validator2")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: app.session.model.steps[("restore", "validator2")].state == "running",
            "restore to run",
        )
        assert isinstance(app.screen, RunScreen)
        await pilot.press("p")
        assert app.session.executor.paused
        assert "PAUSED" in str(app.screen.query_one("#run-head").render())
        await pilot.press("n")
        assert isinstance(app.screen, NoteScreen)
        await type_text(pilot, "Jane")
        await pilot.press("enter")
        await wait_for(  # the note is journaled and audited in a worker, off the event loop
            pilot,
            lambda: (
                "✎ 1 note(s), last: 03:14:00 alice: Jane"
                in str(app.screen.query_one("#run-head").render())
            ),
            "the note in the run header",
        )
        await pilot.press("x")
        assert (
            isinstance(app.screen, ConfirmScreen)
            and app.focused is not None
            and app.focused.id == "cancel"
        )
        await pilot.press("y")
        release.set()
        await wait_for(pilot, lambda: not app.run_active, "the run to end")
    events = step_events(console)
    assert ("restore", "finished") in events  # a running step finishes
    assert ("start", "started") not in events  # nothing new starts after abort
    assert summarise(app.site.state_dir / "runs" / "20261126-031400-0001").status == "aborted"
    notes = [r for r in journal(console) if r.get("type") == "note"]
    assert [n["text"] for n in notes] == ["Jane"]
    assert "run.note" in [e["action"] for e in AuditLog(app.site.state_dir).read()]


async def test_rto_clock_turns_amber_red_then_breached(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await _to_first_gate(pilot, console)
        clock = app.screen_stack[-2].query_one(RtoClock)
        assert not clock.has_class("-amber") and "on track" in str(clock.render())
        for minutes, level in ((40, "-amber"), (10, "-red"), (11, "-breached")):
            console.clock.advance(minutes * 60)
            clock.post_message(RtoClock.Ticked())
            await pilot.pause()
            assert clock.has_class(level), (minutes, clock.classes)
        assert "RTO BREACHED" in str(clock.render())


async def test_later_leaves_the_run_waiting_and_runs_re_attaches_it(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await _to_first_gate(pilot, console)
        await pilot.press("l")
        await wait_for(pilot, lambda: not app.run_active, "the run to stop")
        rdir = app.site.state_dir / "runs" / "20261126-031400-0001"
        assert summarise(rdir).status == "waiting"
        await pilot.press("h")
        await settle(pilot)
        await pilot.press("e")
        await wait_for(
            pilot, lambda: (g := _gate(app)) and g.request.step_id == "isolate", "the gate again"
        )
        await pilot.press("y")
        await wait_for(
            pilot, lambda: (g := _gate(app)) and g.request.kind == "type", "the typed gate"
        )
        await pilot.press("tab", "enter")  # Later again
        await wait_for(pilot, lambda: not app.run_active, "the run to stop again")
    records = journal(console)
    assert [r["event"] for r in records if r.get("type") == "run"] == [
        "created",
        "stopped",
        "resumed",
        "stopped",
    ]
    assert step_events(console).count(("isolate", "finished")) == 1


async def test_quit_during_a_run_asks_then_interrupts_and_a_new_console_re_attaches(
    tmp_path: Path,
) -> None:
    console = make_console(tmp_path, down=["validator2"])
    async with console.app.run_test(size=(100, 32)) as pilot:
        await _to_first_gate(pilot, console)
        await pilot.press("ctrl+q")
        assert isinstance(console.app.screen, ConfirmScreen)
        await pilot.press("escape")
        assert isinstance(console.app.screen, GateScreen) and console.app.run_active
        await pilot.press("ctrl+q")
        await pilot.press("y")
        await wait_for(pilot, lambda: not console.app.is_running, "the console to exit", limit=10)
    assert console.app.return_value == 3
    assert (
        summarise(console.app.site.state_dir / "runs" / "20261126-031400-0001").status
        == "interrupted"
    )

    again = make_console(tmp_path, down=["validator2"])
    async with again.app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("h")
        await settle(pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: _gate(again.app), "the gate of the re-attached run")
        await pilot.press("y")
        await wait_for(
            pilot, lambda: (g := _gate(again.app)) and g.request.kind == "type", "the typed gate"
        )
    assert ("isolate", "confirmed") in step_events(again)


async def test_an_auditor_sees_the_plan_but_cannot_start_or_re_attach(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"], user="audrey")
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        assert "auditor" in app.identity and app.read_only
        await pilot.press("r", "enter", "enter")
        assert isinstance(app.screen, PlanScreen)
        assert "auditor" in str(app.screen.query_one("#plan-note").render())
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PlanScreen) and not app.run_active
        assert any("auditor" in n.message for n in app._notifications)
        assert not app.reattach_run("20261126-031400-0001")
    assert not (app.site.state_dir / "runs").exists()


HOLD_LOCK = """
import fcntl, os, sys, threading
fh = open(sys.argv[1], "ab")
fcntl.flock(fh, fcntl.LOCK_EX)
print("locked", flush=True)
threading.Timer(60, os._exit, args=(0,)).start()  # never outlive a test that went wrong
sys.stdin.read()
os._exit(0)
"""


async def test_keys_answer_while_another_process_holds_the_audit_lock(tmp_path: Path) -> None:
    """A headless run (here: another process) holding the audit log's lock does not freeze
    the console: the run started from the console waits for the lock, the keys do not."""
    console = make_console(tmp_path, down=["validator2"])
    app = console.app
    log = AuditLog(app.site.state_dir).path
    log.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        async with app.run_test(size=(100, 32)) as pilot:
            await settle(pilot)
            # Starts the recovery: its incident and its run are audited, so they wait for the lock.
            await pilot.press(*SCENARIO_1[:-1])
            await pilot.press("d")
            await wait_for(pilot, lambda: app.current_mode == "dashboard", "the dashboard")
            await pilot.press("c")
            await wait_for(pilot, lambda: app.current_mode == "contacts", "the contacts")
            assert b"run.start" not in log.read_bytes()  # the run is still waiting for the lock
            assert holder.stdin is not None
            holder.stdin.close()  # the other process lets go; the run carries on to its gate
            await wait_for(pilot, lambda: _gate(app), "the first gate")
            await pilot.press("escape")
            await wait_for(pilot, lambda: _asks_abort(app), "the abort question")
            await pilot.press("y")
            await wait_for(pilot, lambda: not app.run_active, "the run to end")
    finally:
        if holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=70)
    assert "run.start" in [e["action"] for e in AuditLog(app.site.state_dir).read()]
