"""The executor: concurrency, timeouts, retries, rollback, gates, expect, quoting."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kconsole.actions import REGISTRY
from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed, UsageError
from kconsole.executor import Executor
from kconsole.gates import GateRequest
from kconsole.journal import RunJournal, new_run_id, read_records, summarise
from kconsole.runbook import load_runbook
from kconsole.runbook.params import resolve_params
from kconsole.services import Clock, Services
from kconsole.site import load_site
from tests.memory_transport import MemoryTransport


class FakeClock(Clock):
    """Sleeps take no time; monotonic advances by what was slept."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class Probe(Action):
    """Test action: records concurrency, can fail N times, hang, or fail by node."""

    name = "test.probe"
    fields: ClassVar[dict[str, Field]] = {
        "fail_times": Field("int"),
        "hang": Field("bool"),
        "fail_on": Field("str"),
        "label": Field("text"),
        "exit": Field("int"),
        "out": Field("text"),
    }
    active = 0
    peak = 0
    calls: ClassVar[list[tuple[str, str | None]]] = []
    failures: ClassVar[dict[str, int]] = {}

    async def run(self, ctx: StepContext) -> ActionResult:
        cls = type(self)
        cls.calls.append((ctx.step.id, ctx.node.name if ctx.node else None))
        cls.active += 1
        cls.peak = max(cls.peak, cls.active)
        try:
            await asyncio.sleep(0.01)
            if ctx.values.get("hang"):
                await asyncio.sleep(3600)
            key = f"{ctx.step.id}/{ctx.node.name if ctx.node else ''}"
            if cls.failures.get(key, 0) < int(ctx.values.get("fail_times") or 0):
                cls.failures[key] = cls.failures.get(key, 0) + 1
                raise OperationFailed("probe failure")
            if ctx.node and ctx.values.get("fail_on") == ctx.node.name:
                raise OperationFailed(f"probe failed on {ctx.node.name}")
            if ctx.values.get("label"):
                await ctx.emit("stdout", ctx.values["label"])
            return ActionResult(
                exit_code=int(ctx.values.get("exit") or 0), stdout=ctx.values.get("out") or ""
            )
        finally:
            cls.active -= 1


@pytest.fixture(autouse=True)
def probe_action(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(REGISTRY, "test.probe", Probe)
    Probe.active = Probe.peak = 0
    Probe.calls = []
    Probe.failures = {}
    yield Probe


class Answers:
    """A scripted operator: answers gates in order, records the questions."""

    def __init__(self, *answers: bool | None) -> None:
        self.answers = list(answers)
        self.asked: list[GateRequest] = []

    async def __call__(self, request: GateRequest) -> bool | None:
        self.asked.append(request)
        answer = self.answers.pop(0) if self.answers else True
        request.answered_by = "test"
        return answer


async def execute(
    site_path: Path,
    text: str,
    params: dict[str, Any] | None = None,
    confirm: Any = None,
    clock: FakeClock | None = None,
    run_id: str | None = None,
    prior: Any = None,
    transport: Any = None,
):
    site = load_site(site_path)
    rb_path = site_path.parent / "rb.toml"
    rb_path.write_text(textwrap.dedent(text).lstrip())
    rb = load_runbook(rb_path)
    resolved = resolve_params(rb, site, params or {})
    run_id = run_id or new_run_id()
    if prior is None:
        journal = RunJournal.create(site.state_dir, run_id, rb.text)
    else:
        journal = RunJournal(site.state_dir, run_id)
        journal.open()
    events: list[dict[str, Any]] = []
    ex = Executor(
        rb,
        site,
        resolved,
        journal=journal,
        confirm=confirm or Answers(),
        services=Services(clock=clock or FakeClock(), transport=transport),
        user="tester",
        on_event=events.append,
        prior=prior,
        raw_params=params or {},
    )
    try:
        outcome = await ex.run(resumed=prior is not None)
    finally:
        journal.close()
    return outcome, events, site


def step_events(events: list[dict[str, Any]], event: str) -> list[tuple[str, str | None]]:
    return [
        (e["step"], e["node"]) for e in events if e.get("type") == "step" and e["event"] == event
    ]


HEAD = """
[runbook]
id = "t"
title = "T"
rto = "1h"
"""


async def test_concurrency_limit_and_fan_out(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
        [[steps]]
        id = "fan"
        action = "test.probe"
        for_each = ["bootstrap1", "validator1", "validator2", "validator3"]
        concurrency = 2
    """.replace("        ", ""),
    )
    assert outcome.status == "succeeded"
    assert Probe.peak == 2
    assert len(step_events(events, "finished")) == 4


async def test_independent_steps_run_concurrently(site_path: Path) -> None:
    outcome, _, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "a"
action = "test.probe"

[[steps]]
id = "b"
action = "test.probe"

[[steps]]
id = "c"
action = "test.probe"
needs = ["a", "b"]
""",
    )
    assert outcome.status == "succeeded"
    assert Probe.peak == 2
    assert Probe.calls[-1][0] == "c"


async def test_timeout_fails_the_step(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "slow"
action = "test.probe"
hang = true
timeout = "50ms"
""",
    )
    assert outcome.status == "failed"
    failed = [e for e in events if e.get("event") == "failed"]
    assert "timed out after" in failed[0]["reason"]


class VirtualClock(FakeClock):
    """Timeouts run on this clock's own time, which its sleeps advance at once."""

    async def wait_for(self, work: Any, seconds: float) -> Any:
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.sleep(seconds))
        done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            timer.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise TimeoutError


async def test_the_step_timeout_runs_on_the_injected_clock(site_path: Path) -> None:
    clock = VirtualClock()
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "scan"
action = "test.probe"
hang = true
timeout = "30m"
""",
        clock=clock,
    )
    assert outcome.status == "failed"
    assert "timed out after 30m" in next(e for e in events if e.get("event") == "failed")["reason"]
    assert clock.slept == [1800.0]  # thirty minutes of the clock's time, none of the wall's


async def test_the_step_timeout_is_the_command_limit_on_the_node(site_path: Path) -> None:
    transport = MemoryTransport()
    transport.reply("*", r".")
    outcome, _, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "scan"
action = "ssh.exec"
node = "validator1"
command = "clamscan -r /"
timeout = "30m"

[[steps]]
id = "capture"
action = "ssh.capture"
node = "validator1"
command = "journalctl"
dest = "JOURNAL"
timeout = "2m"
needs = ["scan"]

[[steps]]
id = "quick"
action = "ssh.exec"
node = "validator1"
command = "true"
needs = ["capture"]
""".replace("JOURNAL", str(site_path.parent / "journal.txt")),
        transport=transport,
    )
    assert outcome.status == "succeeded", outcome
    # The step's timeout, not [ssh] command_timeout; a step without one leaves the site's.
    assert [(c.command, c.timeout) for c in transport.calls] == [
        ("clamscan -r /", 1800.0),
        ("journalctl", 120.0),
        ("true", None),
    ]


async def test_retries_with_exponential_backoff(site_path: Path) -> None:
    clock = FakeClock()
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "flaky"
action = "test.probe"
fail_times = 3
retries = 3
backoff = "2s"
""",
        clock=clock,
    )
    assert outcome.status == "succeeded"
    assert clock.slept == [2.0, 4.0, 8.0]
    assert len(step_events(events, "retrying")) == 3
    assert len(step_events(events, "started")) == 4


async def test_retries_exhausted(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "flaky"
action = "test.probe"
fail_times = 5
retries = 1
""",
    )
    assert outcome.status == "failed"
    assert step_events(events, "failed") == [("flaky", None)]


async def test_rollback_runs_on_the_failed_node_then_aborts(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "restore"
action = "test.probe"
for_each = "group:validator"
fail_on = "validator2"
on_failure = "undo"

[[steps]]
id = "after"
action = "test.probe"
needs = ["restore"]

[[steps]]
id = "undo"
action = "test.probe"
label = "undo {node}"
""",
    )
    assert outcome.status == "failed"
    assert ("undo", "validator2") in step_events(events, "finished")
    assert ("after", None) in step_events(events, "skipped")
    assert not any(c[0] == "after" for c in Probe.calls)


async def test_continue_lets_dependents_run(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "notify"
action = "test.probe"
fail_times = 1
on_failure = "continue"

[[steps]]
id = "after"
action = "test.probe"
needs = ["notify"]
""",
    )
    assert outcome.status == "succeeded"
    assert ("after", None) in step_events(events, "finished")
    assert ("notify", None) in step_events(events, "failed")


async def test_expect_exit_and_stdout(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "a"
action = "test.probe"
exit = 1
expect = { exit = [0, 1], stdout = "^active$" }
out = "inactive"
""",
    )
    assert outcome.status == "failed"
    assert "does not match" in [e for e in events if e.get("event") == "failed"][0]["reason"]


GATED = (
    HEAD
    + """
[params.node]
type = "node"
default = "validator1"

[[steps]]
id = "stop"
action = "test.probe"
for_each = "node"
gate = "type:{node}"

[[steps]]
id = "start"
action = "test.probe"
for_each = "node"
needs = ["stop"]
gate = "confirm"
"""
)


async def test_gate_confirmed(site_path: Path) -> None:
    answers = Answers(True, True)
    outcome, events, _ = await execute(site_path, GATED, confirm=answers)
    assert outcome.status == "succeeded"
    assert answers.asked[0].kind == "type" and answers.asked[0].expected == "validator1"
    assert answers.asked[1].kind == "confirm"
    assert len(step_events(events, "confirmed")) == 2


async def test_gate_refused_aborts_and_runs_nothing(site_path: Path) -> None:
    outcome, events, _ = await execute(site_path, GATED, confirm=Answers(False))
    assert outcome.status == "aborted"
    assert Probe.calls == []
    assert ("start", "validator1") in step_events(events, "skipped")


async def test_a_refused_gate_asks_before_aborting_and_no_goes_back_to_it(
    site_path: Path,
) -> None:
    answers = Answers(False, False, True, True)  # refuse, "abort?" no, confirm, confirm
    outcome, _, _ = await execute(site_path, GATED, confirm=answers)
    assert outcome.status == "succeeded"
    asked = [r.question() for r in answers.asked]
    assert "Abort the run? (no: back to the gate)" in asked[1]
    assert asked[2] == asked[0]
    # Only the run's first refusal asks: refusing again aborts.
    Probe.calls.clear()
    answers = Answers(False, False, False)
    outcome, _, _ = await execute(site_path, GATED, confirm=answers)
    assert outcome.status == "aborted" and len(answers.asked) == 3 and Probe.calls == []


async def test_gate_without_terminal_stops_resumable(site_path: Path) -> None:
    outcome, events, site = await execute(site_path, GATED, confirm=Answers(None))
    assert outcome.status == "waiting"
    assert Probe.calls == []
    summary = summarise(site.state_dir / "runs" / outcome.run_id)
    assert summary.status == "waiting"
    # Resume answers the gate and finishes.
    outcome2, _, _ = await execute(
        site_path,
        GATED,
        confirm=Answers(True, True),
        run_id=outcome.run_id,
        prior=summary.instances,
    )
    assert outcome2.status == "succeeded"
    assert [c[0] for c in Probe.calls] == ["stop", "start"]


async def test_resume_never_reruns_finished_and_asks_for_in_flight(site_path: Path) -> None:
    text = (
        HEAD
        + """
[[steps]]
id = "one"
action = "test.probe"

[[steps]]
id = "two"
action = "test.probe"
needs = ["one"]
"""
    )
    outcome, _, site = await execute(site_path, text)
    run = site.state_dir / "runs" / outcome.run_id
    # Forge a crash in step two: drop its finish and the run's end from the journal.
    journal = run / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    kept = [
        ln
        for ln in lines
        if '"step":"two","node":null,"event":"finished"' not in ln
        and '"type":"run","event":"finished"' not in ln
    ]
    journal.write_text("".join(kept) + '{"torn":')
    summary = summarise(run)
    assert summary.status == "interrupted"
    Probe.calls = []
    answers = Answers(True)
    outcome2, _, _ = await execute(
        site_path, text, confirm=answers, run_id=outcome.run_id, prior=summary.instances
    )
    assert outcome2.status == "succeeded"
    assert Probe.calls == [("two", None)]
    assert answers.asked[0].kind == "rerun"
    records, torn = read_records(journal)
    assert not torn


async def test_shell_values_are_quoted(site_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = (
        HEAD
        + """
[params.label]
type = "string"

[[steps]]
id = "echo"
action = "shell"
command = "echo {label}"
"""
    )
    evil = f"x; touch {marker}; echo $(id) `id` && true"
    outcome, events, _ = await execute(site_path, text, params={"label": evil})
    assert outcome.status == "succeeded"
    assert not marker.exists()
    outputs = [e["text"] for e in events if e.get("event") == "output"]
    assert outputs == [evil]


async def test_unknown_node_param_is_usage_error(site_path: Path) -> None:
    with pytest.raises(UsageError, match='unknown node "validator9"'):
        await execute(site_path, GATED, params={"node": "validator9"})
    assert not (site_path.parent / "state" / "runs").exists()


async def test_notify_without_webhook_is_reported_not_fatal(site_path: Path) -> None:
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + """
[[steps]]
id = "tell"
action = "notify"
text = "recovery started"
""",
    )
    assert outcome.status == "succeeded"
    assert any("KCONSOLE_TEST_WEBHOOK is not set" in e.get("text", "") for e in events)


async def test_wait_until_advancing(site_path: Path, tmp_path: Path) -> None:
    counter = tmp_path / "height"
    counter.write_text("0")
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + f"""
[[steps]]
id = "height"
action = "wait.until"
command = "n=$(cat {counter}); echo $((n+1)) > {counter}; echo $n"
advancing = true
interval = "1s"
within = "1m"
""",
    )
    assert outcome.status == "succeeded", events
    stuck = tmp_path / "stuck"
    stuck.write_text("7")
    outcome, events, _ = await execute(
        site_path,
        HEAD
        + f"""
[[steps]]
id = "height"
action = "wait.until"
command = "cat {stuck}"
advancing = true
interval = "10s"
within = "1m"
""",
    )
    assert outcome.status == "failed"
    assert "has not advanced" in [e for e in events if e.get("event") == "failed"][0]["reason"]


async def test_refused_step_gate_ends_the_run_aborted(site_path: Path) -> None:
    """A refused run-wide gate ends the run as aborted, journaled, not as a crash."""
    text = (
        HEAD
        + """
[[steps]]
id = "first"
action = "test.probe"

[[steps]]
id = "danger"
action = "test.probe"
needs = ["first"]
for_each = "group:validator"
gate = "confirm"

[[steps]]
id = "after"
action = "test.probe"
needs = ["danger"]
"""
    )
    outcome, events, site = await execute(site_path, text, confirm=Answers(False))
    assert outcome.status == "aborted"
    assert [c[0] for c in Probe.calls] == ["first"]
    assert summarise(site.state_dir / "runs" / outcome.run_id).status == "aborted"
    assert ("danger", "validator1") in step_events(events, "skipped")


async def test_auditor_is_refused_by_the_engine(site_path: Path) -> None:
    """The executor itself refuses an auditor, whatever front end called it."""
    from kconsole.errors import AccessDenied

    site_path.write_text(site_path.read_text() + '\n[access]\nauditor = ["tester"]\n')
    with pytest.raises(AccessDenied, match="tester is an auditor"):
        await execute(site_path, HEAD + '\n[[steps]]\nid = "a"\naction = "test.probe"\n')
    assert Probe.calls == []
