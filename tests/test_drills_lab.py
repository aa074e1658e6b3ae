"""Drills and truthful reports on the lab: a failed recovery is not within its RTO, a node
that came back behind its peers is not "Verified", a second drill compares with the first."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.lablive import LiveLab, live_lab
from tests.test_reports import assert_template_filled


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("lab")) as running:
        yield running


@pytest.fixture(autouse=True)
def lab_env(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    # The consistency check takes the heights as they are right after the recovery: a
    # restored lab node keeps its backup's height gap, so waiting would not change it.
    monkeypatch.setattr("kconsole.drills.CATCHUP_WITHIN", 0.0)


def latest_run(cli, lab: LiveLab) -> str:
    code, out, err = cli("--site", lab.site, "runs", "--json")
    assert code == 0, err
    return str(json.loads(out.splitlines()[0])["id"])


def report(cli, lab: LiveLab, run_id: str) -> tuple[str, dict]:
    code, md, err = cli("--site", lab.site, "report", run_id)
    assert code == 0, err
    code, js, err = cli("--site", lab.site, "report", run_id, "--format", "json")
    assert code == 0, err
    return md, json.loads(js)


def test_a_failed_recovery_says_rto_not_met(cli, lab: LiveLab) -> None:
    lab.fault("set", "fail=validator2:systemctl")
    try:
        code, out, err = cli(
            "--site", lab.site, "run", "recover-single-node", "--param", "node=validator2", "--yes"
        )
    finally:
        lab.fault("clear", "fail=validator2:systemctl")
    assert code == 1, out + err
    md, rep = report(cli, lab, latest_run(cli, lab))
    assert rep["status"] == "failed" and rep["rto_met"] is False
    assert "- **RTO Met**: No (the recovery failed; target 1h00m)" in md
    assert "- **Recovery Success**: Fail (failed)" in md
    assert "Step stop-service on validator2 failed:" in md
    assert "`systemctl stop kaldrix-node`" in md  # the appendix shows the command as run
    assert_template_filled(md)


def test_a_drill_twice_compares_and_a_lagging_node_is_not_verified(cli, lab: LiveLab) -> None:
    code, out, err = cli("--site", lab.site, "drill", "single-node", "--lab", "--yes")
    assert code == 0, out + err
    assert "injected wipe=validator1" in out
    assert "first drill of this scenario" in out
    first = latest_run(cli, lab)
    md, rep = report(cli, lab, first)
    assert rep["drill"] is True and rep["status"] == "succeeded"
    assert rep["detected_source"].startswith("the first failure the console saw on validator1")
    assert rep["recovery_s"] is not None and rep["rto_met"] is True
    assert rep["rpo_window_s"] is not None and rep["injected"] == ["wipe=validator1"]
    check = rep["consistency"]["nodes"][0]
    assert check["node"] == "validator1" and check["height"] is not None
    if check["lag_blocks"] > rep["consistency"]["limit_blocks"]:
        # Restored from a backup minutes old: behind its peers, so not "Verified".
        assert rep["data_consistency"]["verified"] is False
        assert "- **Data Consistency**: Not Verified: validator1 is " in md
        assert f"plus {check['lag_blocks']} blocks of lag" in md
    else:
        assert "- **Data Consistency**: Verified: validator1 at height" in md
    assert "None: this is the first drill of this scenario." in md
    assert_template_filled(md)

    code, out, err = cli("--site", lab.site, "drill", "single-node", "--lab", "--yes", "--json")
    assert code == 0, out + err
    result = json.loads(out.splitlines()[-1])
    assert result["event"] == "result" and result["previous"][0]["run"] == first
    second = latest_run(cli, lab)
    md, rep = report(cli, lab, second)
    assert [p["run"] for p in rep["previous_drills"]] == [first]
    assert "## Compared With Previous Drills" in md and f"| {first} | succeeded |" in md
    assert "against the previous drill" in md

    code, out, err = cli("--site", lab.site, "drills", "--json")
    history = next(json.loads(x) for x in out.splitlines() if '"scenario": "single-node"' in x)
    assert [d["run"] for d in history["drills"]] == [second, first]
    weekly = next(
        json.loads(x)["schedule"] for x in out.splitlines() if "Single node recovery test" in x
    )
    assert weekly["overdue"] is False and weekly["last"]


def test_a_plain_recovery_is_verified_only_when_the_check_proved_it(
    cli, lab: LiveLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a drill: `kconsole run` itself checks the restored node against its peers. Lab
    # nodes do not sync from peers, so "caught up" is a lag within the limit the check uses
    # (and a lagging node, never getting closer, ends the check after two polls).
    monkeypatch.setattr("kconsole.reports.CONSISTENCY_BLOCKS", 10**6)
    args = ("--site", lab.site, "run", "recover-single-node", "--param", "node=validator2")
    code, out, err = cli(*args, "--yes")
    assert code == 0, out + err
    assert "consistency: validator2 " in out and ": consistent" in out
    md, rep = report(cli, lab, latest_run(cli, lab))
    assert rep["drill"] is False and rep["data_consistency"]["verified"] is True
    assert "- **Data Consistency**: Verified: validator2 at height" in md
    assert "MB/s restored (" in md  # the restore's bytes over its duration
    assert "- **System Resource Usage**: the console process only: " in md
    assert_template_filled(md)

    # The same recovery against the usual limit: a node restored from a backup minutes old
    # is blocks behind peers that kept producing, and the report says so.
    monkeypatch.setattr("kconsole.reports.CONSISTENCY_BLOCKS", 10)
    code, out, err = cli(*args, "--yes", "--json")
    assert code == 0, out + err
    md, rep = report(cli, lab, latest_run(cli, lab))
    check = rep["consistency"]["nodes"][0]
    assert check["node"] == "validator2" and check["lag_blocks"] > 10
    assert rep["data_consistency"]["verified"] is False
    assert "- **Data Consistency**: Not Verified: validator2 is " in md
    assert any(i["kind"] == "lag" for i in rep["issues"])


def test_the_complete_network_drill_runs_unattended(cli, lab: LiveLab) -> None:
    scenario = "complete-network"
    code, out, err = cli("--site", lab.site, "drill", scenario, "--lab", "--yes")
    assert code == 0, out + err
    assert "injected crash=" in out
    md, rep = report(cli, lab, latest_run(cli, lab))
    assert rep["drill"] is True and rep["status"] == "succeeded" and rep["scenario"] == scenario
    assert rep["detected_source"].startswith("the first failure the console saw on")
    assert rep["rto_met"] is True and rep["consistency"]["nodes"]
    assert_template_filled(md)


def test_the_security_drill_stops_at_its_two_person_gate(cli, lab: LiveLab) -> None:
    # `--yes` is one account: the security runbook's isolation/restore gates need a second
    # one, so the unattended drill stops there, resumable, and its report says so.
    code, out, err = cli("--site", lab.site, "drill", "security-incident", "--lab", "--yes")
    assert code == 3, out + err
    assert "injected compromise=" in out and "the fleet poll cannot see it" in out
    assert "needs 1 more approval from a different account" in out
    md, rep = report(cli, lab, latest_run(cli, lab))
    assert rep["drill"] is True and rep["status"] == "waiting" and rep["rto_met"] is False
    assert rep["injected"] and all(i.startswith("compromise=") for i in rep["injected"])
    assert rep["detected_source"] == "the run's start, as no detection time was recorded"
    assert_template_filled(md)
