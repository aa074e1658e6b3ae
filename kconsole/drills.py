"""Drills: one of the plan's recovery scenarios rehearsed end to end, and the plan's testing
schedule with what is due.

`run_drill` injects the scenario's failure (on the lab through its fault file; on a site
marked `staging = true` by stopping the node's service over SSH), polls the fleet until the
console sees the failure (that poll is the detection time the report counts RTO from),
starts the scenario's recovery runbook as a drill, walks the operator through every step
(guide, the exact commands per node, the expected outcome; proceed or stop) unless `--yes`,
then compares the recovered nodes' chain heights with their peers (the report's data
consistency check) and keeps all of it as the run's evidence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kconsole.actions.base import Confirm
from kconsole.audit import AuditLog
from kconsole.errors import EXIT_FAILED, EXIT_INTERRUPTED, UsageError
from kconsole.executor import Executor
from kconsole.fleet import poll_fleet
from kconsole.gates import (
    GateRequest,
    ask_line,
    confirm_on_terminal,
    confirm_unattended,
    confirm_yes,
)
from kconsole.headless import EXIT_FOR_STATUS, event_printer, install_stop_signals
from kconsole.journal import RunJournal, iso, list_runs, new_run_id
from kconsole.recovery_check import check_heights
from kconsole.reports import (
    build_report,
    console_cpu,
    console_usage,
    previous_drills,
    read_evidence,
    write_evidence,
)
from kconsole.runbook import load_runbook, resolve_runbook_path
from kconsole.runbook.model import Runbook, Step
from kconsole.runbook.params import parse_param_args, resolve_params, step_nodes
from kconsole.runbook.template import NodeRef
from kconsole.runs import check_named_backups
from kconsole.services import Services
from kconsole.site import Site, current_user

DETECT_WITHIN = 60.0
"""Seconds the drill polls for the injected failure before starting without a detection."""
CATCHUP_WITHIN = 30.0
"""Seconds the drill lets recovered nodes catch up with their peers before the check."""


@dataclass(frozen=True)
class Scenario:
    """One of the plan's recovery scenarios as a drill."""

    id: str
    title: str
    runbook: str
    fault: str
    """The lab fault injected on each target node (`wipe`, `crash`, `compromise`)."""


SILENT_FAULTS = ("compromise",)
"""Faults a fleet poll cannot see (the nodes stay active): a drill does not poll for them,
and its report counts from the run's start."""


def not_seen(sc: Scenario) -> str:
    """Why a drill has no detection time."""
    if sc.fault in SILENT_FAULTS:
        return (
            f"a {sc.fault} leaves the nodes active, so the fleet poll cannot see it; "
            "the report counts RTO from the run's start"
        )
    return f"not seen within {DETECT_WITHIN:g}s"


SCENARIOS: dict[str, Scenario] = {
    s.id: s
    for s in (
        Scenario("single-node", "Single node failure", "recover-single-node", "wipe"),
        Scenario("multiple-nodes", "Multiple node failure", "recover-multiple-nodes", "crash"),
        Scenario(
            "complete-network", "Complete network failure", "recover-complete-network", "crash"
        ),
        Scenario(
            "security-incident", "Security incident", "recover-security-incident", "compromise"
        ),
    )
}


@dataclass(frozen=True)
class PlannedTest:
    """One line of the plan's "Testing Schedule"."""

    cadence: str
    period: timedelta
    mode: str
    """Automated or Manual, as the plan files it."""
    title: str
    counts: tuple[str, ...]
    """Scenarios whose runs count as this test (a drill, or a run of the named runbook)."""
    command: str


PLAN_TESTS: tuple[PlannedTest, ...] = (
    PlannedTest(
        "daily",
        timedelta(days=1),
        "Automated",
        "Automated backup verification",
        ("verification",),
        "kconsole run verify-backups --yes",
    ),
    PlannedTest(
        "weekly",
        timedelta(days=7),
        "Automated",
        "Single node recovery test",
        ("single-node", "recovery-test"),
        "kconsole run test-single-node-recovery --yes --drill",
    ),
    PlannedTest(
        "monthly",
        timedelta(days=30),
        "Automated",
        "Multiple node recovery test",
        ("multiple-nodes",),
        "kconsole drill multiple-nodes --yes",
    ),
    PlannedTest(
        "quarterly",
        timedelta(days=91),
        "Automated",
        "Complete network recovery test",
        ("complete-network",),
        "kconsole drill complete-network --yes",
    ),
    PlannedTest(
        "monthly",
        timedelta(days=30),
        "Manual",
        "Security incident recovery simulation",
        ("security-incident",),
        "kconsole drill security-incident",
    ),
    PlannedTest(
        "quarterly",
        timedelta(days=91),
        "Manual",
        "Disaster recovery drill",
        ("exercise:dr-drill",),
        "kconsole drill complete-network --exercise dr-drill",
    ),
    PlannedTest(
        "bi-annually",
        timedelta(days=182),
        "Manual",
        "Full-scale recovery exercise",
        ("exercise:full-scale",),
        "kconsole drill complete-network --exercise full-scale",
    ),
)
EXERCISES = ("dr-drill", "full-scale")

CRON = {
    "daily": "30 4 * * *",
    "weekly": "0 5 * * 1",
    "monthly": "0 6 1 * *",
    "quarterly": "0 6 1 1,4,7,10 *",
}


TEST_SCENARIOS = ("recovery-test", "drill")
"""Runbook scenarios that exist to rehearse (their runs are drills by default)."""


def is_test_runbook(rb: Runbook) -> bool:
    """Whether a runbook is a recovery test or drill (the plan's test procedures)."""
    return rb.scenario in TEST_SCENARIOS or rb.id.startswith("test-")


def scenario(name: str) -> Scenario:
    """The scenario called `name`; UsageError naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UsageError(
            f'unknown scenario "{name}"; drills cover: {", ".join(SCENARIOS)}.'
        ) from None


def is_lab(site: Site) -> bool:
    """Whether the site is the embedded lab's (its fault file sits beside the site file)."""
    return (site.base_dir / "faults.toml").exists() and (site.base_dir / "lab").is_dir()


def is_staging(site: Site) -> bool:
    """Whether the site file marks itself `staging = true` under [site]."""
    return bool((site.raw.get("site") or {}).get("staging") is True)


def targets(site: Site, sc: Scenario) -> list[str]:
    """The nodes the scenario fails: a validator; a validator and an API node; every node
    but the DR host; a validator (compromised)."""
    groups = site.groups()
    validators = groups.get("validator") or [
        n for n in site.nodes if "dr" not in site.nodes[n].groups
    ]
    if not validators:
        raise UsageError(f"site {site.name} has no node a drill can fail.")
    if sc.id in ("single-node", "security-incident"):
        return [validators[0]]
    if sc.id == "multiple-nodes":
        other = (groups.get("api") or validators[1:] or [])[:1]
        return [validators[-1]] + [n for n in other if n != validators[-1]]
    return [n for n, node in site.nodes.items() if "dr" not in node.groups]


def drill_params(
    site: Site, sc: Scenario, nodes: list[str], extra: dict[str, str], lab: bool
) -> dict[str, str]:
    """The recovery runbook's parameters for the injected failure (`extra` wins)."""
    params: dict[str, str] = {}
    if sc.id == "single-node":
        params["node"] = nodes[0]
    elif sc.id == "multiple-nodes":
        params["nodes"] = ",".join(nodes)
    elif sc.id == "security-incident" and lab:
        params["ops_network"] = "127.0.0.0/8"
    params.update(extra)
    return params


# -- the walkthrough -------------------------------------------------------------------------


def expected_outcome(step: Step) -> str:
    """What the operator should see when the step works."""
    parts = []
    exp = step.expect
    codes = exp.exit if exp else (0,)
    parts.append("exit code " + " or ".join(str(c) for c in codes))
    if exp and exp.stdout:
        parts.append(f"output matching /{exp.stdout}/")
    if step.fields.get("match"):
        parts.append(f"polled until the output matches /{step.fields['match']}/")
    if step.fields.get("advancing"):
        parts.append("the chain height advancing")
    if step.action == "http.check":
        parts.append("HTTP 200")
    return ", ".join(parts)


_ACTION_FIELDS = ("backup", "kind", "url", "json", "text", "prompt")
"""What a step without a command shows of its action in a briefing."""


def briefing(executor: Executor, step: Step) -> dict[str, Any]:
    """Before a step: its guide, the exact commands per node, and the expected outcome."""
    try:
        nodes = step_nodes(step, executor.site, executor.params)
    except Exception:  # noqa: BLE001 - the step reports its own bad reference when it runs
        nodes = [None]
    commands = []
    for node in nodes:
        cmd = executor.rendered_command(step, node if isinstance(node, NodeRef) else None)
        if cmd is None:
            shown = ", ".join(f"{k}={step.fields[k]}" for k in _ACTION_FIELDS if k in step.fields)
            cmd = f"({step.action}{': ' + shown if shown else ''})"
        commands.append({"node": node.name if node else None, "command": cmd})
    first = nodes[0] if nodes and isinstance(nodes[0], NodeRef) else None
    return {
        "step": step.id,
        "title": executor.rendered_text(step.title, first) if step.title else step.id,
        "guide": step.guide.strip(),
        "commands": commands,
        "expected": expected_outcome(step),
    }


def gated_for_walkthrough(rb: Runbook) -> Runbook:
    """A copy of the runbook where every step without a gate asks "proceed?" first."""
    steps = {
        sid: s if s.gate else dataclasses.replace(s, gate="confirm") for sid, s in rb.steps.items()
    }
    return dataclasses.replace(rb, steps=steps)


def terminal_walkthrough(executor_ref: list[Executor], printer: Callable[[str], None]) -> Confirm:
    """A gate callback that prints the step's briefing, then asks on the terminal."""

    async def confirm(request: GateRequest) -> bool:
        executor = executor_ref[0]
        step = executor.runbook.steps.get(request.step_id)
        if step is not None and request.kind != "rerun":
            b = briefing(executor, step)
            printer(f"\n== step {b['step']}: {b['title']}")
            if b["guide"]:
                printer(b["guide"])
            for c in b["commands"]:
                printer(f"  {c['node'] or 'console'}$ {c['command']}")
            printer(f"  expected: {b['expected']}")
        if request.kind == "confirm" and request.skippable:
            printer("  y: proceed · s: skip this step (recorded) · Enter: stop the drill")
            answer = (await ask_line("> ") or "").strip().lower()
            request.answered_by = "terminal"
            if answer in ("s", "skip"):
                request.skipped = True
                return True
            return answer in ("y", "yes")
        printer("  proceed: the typed value (or y); stop the drill: Enter")
        return await confirm_on_terminal(request)

    return confirm


# -- injection and detection -----------------------------------------------------------------


def _inject_lab(site: Site, sc: Scenario, nodes: list[str]) -> list[str]:
    from kconsole.lab.faults import parse_faults, read_fault_file, write_fault_file

    path = site.base_dir / "faults.toml"
    specs = [f"{sc.fault}={n}" for n in nodes]
    new = parse_faults(",".join(specs))
    ids = {f.identity for f in new}
    write_fault_file(path, [f for f in read_fault_file(path) if f.identity not in ids] + new)
    return specs


def _clear_lab(site: Site, specs: list[str]) -> None:
    from kconsole.lab.faults import parse_fault, read_fault_file, write_fault_file

    path = site.base_dir / "faults.toml"
    patterns = [parse_fault(s, pattern=True) for s in specs]
    write_fault_file(
        path, [f for f in read_fault_file(path) if not any(p.covers(f) for p in patterns)]
    )


async def _inject_staging(
    site: Site, sc: Scenario, nodes: list[str], services: Services
) -> list[str]:
    if sc.id == "security-incident":
        raise UsageError(
            "a security-incident drill injects its compromise only on the lab (--lab)."
        )
    done = []
    for name in nodes:
        node = site.node(name)
        result = await services.transport.run(
            node, f"sudo -n systemctl stop {node.service}", timeout=120
        )
        if result.exit_status != 0:
            raise UsageError(
                f"could not stop {node.service} on {name} for the drill (exit {result.exit_status})."
            )
        done.append(f"stopped {node.service} on {name}")
    return done


async def _detect(
    site: Site, nodes: list[str], services: Services, within: float
) -> datetime | None:
    """The time of the first poll that saw every target node not active (None: never)."""
    for _ in range(max(1, int(within / 0.5))):
        statuses = await poll_fleet(site, services, timeout=5, source="a drill's detection poll")
        seen = services.clock.now()
        states = {s.name: s.state for s in statuses}
        if all(states.get(n) != "active" for n in nodes):
            return seen
        await services.clock.sleep(0.5)
    return None


# -- the drill -------------------------------------------------------------------------------


@dataclass
class DrillPlan:
    """What a drill will do: the scenario, its recovery runbook, the nodes it fails and the
    runbook's parameters."""

    scenario: Scenario
    runbook: Runbook
    nodes: list[str]
    raw_params: dict[str, str]
    params: dict[str, Any]
    on_lab: bool
    user: str
    exercise: str = ""

    @property
    def injects(self) -> list[str]:
        """The failure, as the lab's fault spec (or what is done on a staging site)."""
        if self.on_lab:
            return [f"{self.scenario.fault}={n}" for n in self.nodes]
        return [f"stop kaldrix-node on {n}" for n in self.nodes]


def plan_drill(
    site: Site,
    name: str,
    *,
    lab: bool = False,
    params: list[str] | None = None,
    exercise: str = "",
    user: str | None = None,
    check_site: bool = True,
) -> DrillPlan:
    """Check the drill may run here and resolve its runbook and parameters (nothing is
    touched yet). `check_site=False` only previews (the console shows the walkthrough of any
    site, and starts it only on the lab or a staging site)."""
    sc = scenario(name)
    if exercise and exercise not in EXERCISES:
        raise UsageError(f"--exercise must be one of {', '.join(EXERCISES)}, not {exercise!r}.")
    on_lab = is_lab(site)
    if check_site:
        if lab and not on_lab:
            raise UsageError(
                f"--lab needs the lab's site file; {site.path} is not one "
                "(start it with `kconsole lab serve`)."
            )
        if not on_lab and not is_staging(site):
            raise UsageError(
                f"site {site.name} is neither the lab nor marked `staging = true`: "
                "a drill injects real failures, so it refuses."
            )
    who = user if user is not None else current_user()
    if check_site:
        site.access.require_operate(who, "run drills")
    rb = load_runbook(resolve_runbook_path(sc.runbook, [site.base_dir / "runbooks"]))
    nodes = targets(site, sc)
    raw_params = drill_params(site, sc, nodes, parse_param_args(params or []), on_lab)
    resolved = resolve_params(rb, site, raw_params)
    return DrillPlan(sc, rb, nodes, raw_params, resolved, on_lab, who, exercise)


def walkthrough(site: Site, plan: DrillPlan, services: Services) -> list[dict[str, Any]]:
    """Every step's briefing before the drill starts (commands rendered for a run id to be
    given: `{run.id}` shows as `preview`)."""
    executor = Executor(
        plan.runbook,
        site,
        plan.params,
        journal=RunJournal(site.state_dir, "preview"),  # never opened: nothing is written
        confirm=confirm_yes,
        services=services,
        user=plan.user,
        drill=True,
        raw_params=plan.raw_params,
    )
    return [briefing(executor, step) for step in plan.runbook.steps.values()]


def briefing_text(b: dict[str, Any]) -> str:
    """A briefing as plain text (the gate dialog's guide during a drill)."""
    lines = [b["guide"]] if b["guide"] else []
    lines.append("Commands:")
    lines += [f"  {c['node'] or 'console'}$ {c['command']}" for c in b["commands"]]
    lines.append(f"Expected: {b['expected']}")
    return "\n".join(lines)


async def inject_and_detect(
    site: Site, plan: DrillPlan, services: Services
) -> tuple[list[str], datetime | None]:
    """Inject the scenario's failure (audited) and poll until the console sees it."""
    if plan.on_lab:
        injected = _inject_lab(site, plan.scenario, plan.nodes)
    else:
        injected = await _inject_staging(site, plan.scenario, plan.nodes, services)
    AuditLog(site.state_dir).append(
        plan.user, "drill.inject", plan.scenario.id, injected=injected, lab=plan.on_lab
    )
    detected = (
        await _detect(site, plan.nodes, services, DETECT_WITHIN)
        if plan.scenario.fault not in SILENT_FAULTS
        else None
    )
    if plan.on_lab:
        # The damage is done (wiped state, killed unit, planted implant): clear the fault
        # so the recovery meets a node that can come back.
        _clear_lab(site, injected)
    return injected, detected


def record_start(
    site: Site, run_id: str, plan: DrillPlan, injected: list[str], detected: datetime | None
) -> None:
    """The drill's evidence beside the run's journal: scenario, injection, detection."""
    write_evidence(
        site,
        run_id,
        scenario=plan.scenario.id,
        exercise=plan.exercise,
        injected=injected,
        detected={
            "time": iso(detected),
            "source": f"the first failure the console saw on {', '.join(plan.nodes)} "
            "(drill poll after injection)",
        }
        if detected
        else None,
    )


async def check_after(
    site: Site, run_id: str, plan: DrillPlan, services: Services, catchup: float | None = None
) -> dict[str, Any]:
    """After a successful recovery: the nodes' heights against their peers, kept as evidence."""
    check = await check_heights(
        site,
        plan.nodes,
        services,
        CATCHUP_WITHIN if catchup is None else catchup,
        source="a drill's consistency check",
    )
    write_evidence(site, run_id, consistency=check)
    return check


def run_drill(
    *,
    site: Site,
    name: str,
    lab: bool,
    yes: bool,
    as_json: bool,
    printer: Callable[[str], None],
    params: list[str] | None = None,
    exercise: str = "",
    catchup: float | None = None,
) -> tuple[int, str]:
    """Inject, detect, recover as a drill, check, compare; (exit code, run id)."""
    plan = plan_drill(site, name, lab=lab, params=params, exercise=exercise)
    check_named_backups(site, plan.runbook, plan.raw_params)
    sc = plan.scenario

    def say(text: str) -> None:
        if as_json:
            printer(json.dumps({"drill": sc.id, "event": "info", "text": text}))
        else:
            printer(text)

    services = Services.for_site(site)

    cpu_before = console_cpu()

    async def main() -> tuple[int, str]:
        try:
            say(f"drill {sc.id}: injecting {', '.join(plan.injects)}")
            injected, detected = await inject_and_detect(site, plan, services)
            say(
                f"injected {', '.join(injected)}; detected at {iso(detected)}"
                if detected
                else f"injected {', '.join(injected)}; " + not_seen(sc)
            )
            run_id = new_run_id()
            journal = RunJournal.create(site.state_dir, run_id, plan.runbook.text)
            record_start(site, run_id, plan, injected, detected)
            ref: list[Executor] = []
            confirm: Confirm
            runbook = plan.runbook
            if yes:
                confirm = confirm_yes
            elif _tty():
                runbook = gated_for_walkthrough(plan.runbook)
                confirm = terminal_walkthrough(ref, printer)
            else:
                confirm = confirm_unattended

            on_event = event_printer(as_json, printer)
            executor = Executor(
                runbook,
                site,
                plan.params,
                journal=journal,
                confirm=confirm,
                services=services,
                user=plan.user,
                drill=True,
                on_event=on_event,
                raw_params=plan.raw_params,
            )
            ref.append(executor)
            try:
                outcome = await executor.run()
            except asyncio.CancelledError:
                return EXIT_INTERRUPTED, run_id
            finally:
                journal.close()
            if outcome.status == "succeeded":
                await check_after(site, run_id, plan, services, catchup)
            write_evidence(site, run_id, console_resources=console_usage(cpu_before))
            return EXIT_FOR_STATUS.get(outcome.status, EXIT_FAILED), run_id
        finally:
            await services.close()

    async def guarded() -> tuple[int, str]:
        task = asyncio.create_task(main())
        # As `kconsole run`: a stop signal ends the drill's run as interrupted, resumable.
        install_stop_signals(asyncio.get_running_loop(), task)
        try:
            return await task
        except asyncio.CancelledError:
            return EXIT_INTERRUPTED, ""

    code, run_id = asyncio.run(guarded())
    if run_id:
        _print_outcome(site, run_id, as_json, printer)
    return code, run_id


def _tty() -> bool:
    import sys

    return sys.stdin.isatty()


def _print_outcome(site: Site, run_id: str, as_json: bool, printer: Callable[[str], None]) -> None:
    rep = build_report(site, run_id)
    summary = {
        "run": run_id,
        "status": rep["status"],
        "recovery_s": rep["recovery_s"],
        "rto_met": rep["rto_met"],
        "rpo_window_s": rep["rpo_window_s"],
        "rpo_lag_blocks": rep["rpo_lag_blocks"],
        "consistency": rep["data_consistency"]["text"],
        "issues": len(rep["issues"]),
        "previous": rep.get("previous_drills", [])[:1],
    }
    if as_json:
        printer(json.dumps({"drill": rep["scenario"], "event": "result", **summary}, default=str))
        return
    printer(f"drill run {run_id}: {rep['status']}")
    printer(f"  RTO met: {summary['rto_met']}; data consistency: {summary['consistency']}")
    prev = summary["previous"]
    if prev:
        p = prev[0]
        printer(
            f"  previous drill {p['run']}: {p['status']}, {p['issues']} issues"
            f" (now {summary['issues']}); full comparison in `kconsole report {run_id}`"
        )
    else:
        printer("  first drill of this scenario: nothing to compare with yet")


# -- history and the plan's testing schedule ---------------------------------------------------


def _counts(planned: PlannedTest, scenario_id: str, exercise: str, drill: bool) -> bool:
    for c in planned.counts:
        if c.startswith("exercise:"):
            if exercise == c.split(":", 1)[1]:
                return True
        elif c == scenario_id and (drill or c in ("verification", "recovery-test")):
            return True
    return False


def drills_status(site: Site, now: datetime | None = None) -> dict[str, Any]:
    """Drill history per scenario and the plan's testing schedule (last, next due, overdue)."""
    now = now or datetime.now(UTC)
    history: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
    runs: list[tuple[str, str, str, bool, str]] = []  # (started, scenario, exercise, drill, status)
    for s in list_runs(site.state_dir):
        try:
            rb = load_runbook(site.state_dir / "runs" / s.id / "runbook.toml")
        except Exception:  # noqa: BLE001 - an unreadable old run is skipped
            continue
        exercise = str(read_evidence(site, s.id).get("exercise") or "")
        runs.append((s.started, rb.scenario, exercise, s.drill, s.status))
    for sc_id in SCENARIOS:
        history[sc_id] = previous_drills(site, sc_id, "9999")
    schedule = []
    for planned in PLAN_TESTS:
        done = [r for r in runs if _counts(planned, r[1], r[2], r[3]) and r[4] == "succeeded"]
        last = max((r[0] for r in done), default="")
        last_t = datetime.fromisoformat(last.replace("Z", "+00:00")) if last else None
        due = last_t + planned.period if last_t else None
        schedule.append(
            {
                "cadence": planned.cadence,
                "mode": planned.mode,
                "test": planned.title,
                "last": last or None,
                "next_due": iso(due) if due else None,
                "overdue": due is None or due < now,
                "command": planned.command,
            }
        )
    return {"history": history, "schedule": schedule}


def drills_crontab(site_path: str) -> str:
    """Cron lines for the plan's automated tests (drills need a lab or staging site)."""
    lines = [f"# The plan's automated recovery tests for {site_path}"]
    for planned in PLAN_TESTS:
        if planned.mode == "Automated":
            lines.append(
                f"{CRON[planned.cadence]} {planned.command} --site {site_path}  # {planned.title}"
            )
    return "\n".join(lines) + "\n"
