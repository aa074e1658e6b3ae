"""`kconsole report`: the plan's test report template, filled from a run's journal."""

from __future__ import annotations

import json
from pathlib import Path


def test_report_of_a_drill(cli, site_path: Path, write_runbook, tmp_path: Path) -> None:
    rb = write_runbook(
        """
        [runbook]
        id = "drill-demo"
        title = "Drill demo"
        rto = "10m"
        rpo = "15m"
        scenario = "drill"

        [[steps]]
        id = "ok"
        action = "shell"
        command = "echo fine"
        gate = "confirm"

        [[steps]]
        id = "meh"
        action = "shell"
        command = "echo boom >&2; exit 2"
        needs = ["ok"]
        on_failure = "continue"
    """.replace("        ", "")
    )
    code, out, err = cli("--site", site_path, "run", rb, "--yes", "--drill", "--json")
    assert code == 0, out + err
    run_id = json.loads(out.splitlines()[0])["run"]
    code, md, err = cli("--site", site_path, "report", run_id)
    assert code == 0, err
    assert md.startswith("# Backup and Recovery Test Report")
    assert "- **Type**: Drill" in md
    assert "- **RTO Met**: Yes" in md
    assert "ok: confirmed by --yes" in md
    assert "**meh** — exit code 2, expected 0: boom" in md
    code, js, _ = cli("--site", site_path, "report", run_id, "--format", "json")
    rep = json.loads(js)
    assert rep["drill"] is True and rep["rto_met"] is True and rep["status"] == "succeeded"
    out_file = tmp_path / "r.md"
    code, _, _ = cli("--site", site_path, "report", run_id, "-o", out_file)
    assert code == 0 and out_file.read_text().startswith("# Backup and Recovery Test Report")


def test_report_of_unknown_run(cli, site_path: Path) -> None:
    code, _, err = cli("--site", site_path, "report", "nope")
    assert code == 2
    assert "no run nope" in err
