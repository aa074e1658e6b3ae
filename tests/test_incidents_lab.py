"""Incidents on the lab: failed and aborted recoveries reach the channel with the node and
the reason, an incident's timeline holds its pages, acknowledgement, runs and notes, and
`kconsole incident report` renders the plan's emergency notification with no placeholder."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import pytest

from kconsole.executor import Executor
from kconsole.gates import GateRequest
from kconsole.incidents import IncidentDesk
from kconsole.journal import RunJournal, new_run_id
from kconsole.runbook import load_runbook, resolve_runbook_path
from kconsole.runbook.params import resolve_params
from kconsole.services import Services
from kconsole.site import current_user, load_site
from tests.lablive import LiveLab, live_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("lab")) as running:
        yield running


@pytest.fixture(autouse=True)
def lab_env(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)


def channel(lab: LiveLab) -> list[str]:
    """Every text the lab's Slack webhook sink received."""
    path = lab.dir / "notifications.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["body"].get("text", "") for x in path.read_text().splitlines()]


def test_a_failed_recovery_reaches_the_channel_and_its_incident(cli, lab: LiveLab) -> None:
    code, out, err = cli("--site", lab.site, "incident", "open", "--type", "recovery",
                         "--severity", "critical", "--summary", "validator3 is not answering",
                         "--node", "validator3")  # fmt: skip
    assert code == 0, err
    inc = out.splitlines()[0]
    assert any("# EMERGENCY NOTIFICATION" in t and inc in t for t in channel(lab))
    code, _, err = cli("--site", lab.site, "incident", "ack", inc)
    assert code == 0, err
    lab.fault("set", "down=validator3")
    try:
        code, out, err = cli("--site", lab.site, "run", "recover-single-node", "--param",
                             "node=validator3", "--yes", "--incident", inc)  # fmt: skip
    finally:
        lab.fault("clear", "down=validator3")
    assert code == 1, out + err
    failed = [t for t in channel(lab) if "FAILED at" in t]
    assert failed, channel(lab)
    line = failed[-1]
    assert "on validator3" in line and f"[incident {inc}]" in line
    assert re.search(r"FAILED at [\w-]+ on validator3: .+", line), line
    code, out, err = cli("--site", lab.site, "incident", "note", inc, "BMC shows the host off")
    assert code == 0, err
    code, out, _ = cli("--site", lab.site, "incident", "show", inc, "--json")
    shown = json.loads(out)
    events = [t["event"] for t in shown["timeline"]]
    for expected in ("opened", "paged", "acknowledged", "run-started", "run-finished", "note"):
        assert expected in events, events
    assert len(shown["runs"]) == 1
    run_id = shown["runs"][0]
    code, md, err = cli("--site", lab.site, "incident", "report", inc)
    assert code == 0, err
    assert "# EMERGENCY NOTIFICATION" in md and "**Incident Type**: Recovery Required" in md
    assert f"| {run_id} | recover-single-node | failed |" in md
    assert f"`kconsole report {run_id}`" in md
    assert "BMC shows the host off" in md
    for placeholder in ("[Action", "[Name/Phone]", "[Date/Time]", "[Description", "[Critical/"):
        assert placeholder not in md


def test_an_aborted_recovery_says_who_and_why(lab: LiveLab) -> None:
    site = load_site(lab.site)
    rb = load_runbook(resolve_runbook_path("recover-single-node"))
    raw = {"node": "validator2"}
    asked: list[str] = []

    async def refuse_then_abort(request: GateRequest) -> bool:
        asked.append(request.question())
        request.answered_by = "test"
        return "Abort the run?" in request.question()

    async def main() -> str:
        services = Services.for_site(site)
        journal = RunJournal.create(site.state_dir, new_run_id(), rb.text)
        executor = Executor(rb, site, resolve_params(rb, site, raw), journal=journal,
                            confirm=refuse_then_abort, services=services, user=current_user(),
                            raw_params=raw)  # fmt: skip
        try:
            outcome = await executor.run()
        finally:
            journal.close()
            await services.close()
        return outcome.status

    assert asyncio.run(main()) == "aborted"
    assert "Abort the run?" in asked[1]
    aborted = [t for t in channel(lab) if "ABORTED" in t]
    assert aborted and "on validator2" in aborted[-1]
    who = current_user()
    assert f"ABORTED: {who} refused the gate of stop-service" in aborted[-1]


def test_a_succeeded_recovery_names_the_backup_it_restored(cli, lab: LiveLab) -> None:
    code, out, err = cli("--site", lab.site, "run", "recover-single-node", "--param",
                         "node=validator1", "--yes")  # fmt: skip
    assert code == 0, out + err
    done = [t for t in channel(lab) if "succeeded in" in t and "on validator1" in t]
    assert done, channel(lab)
    assert re.search(r"restored \S+blockchain-state\S+@validator1", done[-1]), done[-1]
    assert "latest" not in done[-1].split("restored", 1)[1]
    assert IncidentDesk(load_site(lab.site)).outbox.pending() == []
