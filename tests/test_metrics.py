"""Backup metrics (Prometheus text format) from the catalog and the run journal, the
atomic textfile, and the shipped alert rules and Alertmanager route: parsed, checked
against the metrics kconsole really writes, and (where promtool / amtool are installed)
validated and unit-tested by Prometheus's own tools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from kconsole.backups.attempts import backup_attempts
from kconsole.backups.catalog import build_catalog, record_verification
from kconsole.backups.metrics import METRICS, Sample, collect, render, runs_success, write_textfile
from kconsole.backups.stores import open_stores
from kconsole.runbook.coverage import expected_nodes
from kconsole.site import Site
from tests.catalogkit import make_site, plant, plant_sync, utc

NOW = utc("2026-11-26T10:00:00")
DATA = Path(str(resources.files("kconsole") / "data"))
RULES = DATA / "prometheus-backup-rules.yml"
ALERTMANAGER = DATA / "alertmanager-backup.yml"

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the text format: HELP/TYPE before samples, no timestamps."""
    assert text.endswith("\n")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, mtype = line.split(" ", 3)
            assert mtype == "gauge" and name not in typed
            typed.add(name)
            continue
        m = _LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        assert m["name"] in typed, f"{m['name']} has no TYPE before its samples"
        labels: dict[str, str] = {}
        raw = m["labels"] or ""
        pos = 0
        while pos < len(raw):
            lm = _LABEL.match(raw, pos)
            assert lm, f"bad labels in {line!r}"
            labels[lm[1]] = lm[2]
            pos = lm.end()
        out.setdefault(m["name"], []).append((labels, float(m["value"])))
    return out


def write_run(
    state: Path,
    run_id: str,
    runbook: str,
    outcomes: dict[tuple[str, str], str],
    step_kind: dict[str, str],
) -> None:
    """A finished run in the journal: runbook.toml with backup.create steps, one record per end."""
    d = state / "runs" / run_id
    d.mkdir(parents=True)
    steps = "".join(
        f'\n[[steps]]\nid = "{s}"\naction = "backup.create"\nkind = "{k}"\n'
        for s, k in step_kind.items()
    )
    (d / "runbook.toml").write_text(
        f'[runbook]\nid = "{runbook}"\ntitle = "t"\nrto = "1h"\nrpo = "1h"\n{steps}'
        '\n[[steps]]\nid = "note"\naction = "notify"\ntext = "x"\n'
    )
    t = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}T{run_id[9:11]}:{run_id[11:13]}:{run_id[13:15]}.000Z"
    recs: list[dict[str, Any]] = [
        {
            "type": "run",
            "event": "created",
            "run": run_id,
            "runbook": runbook,
            "time": t,
            "drill": False,
        }
    ]
    for (step, node), event in outcomes.items():
        recs.append({"type": "step", "step": step, "node": node, "event": "started", "time": t})
        recs.append({"type": "step", "step": step, "node": node, "event": event, "time": t})
    recs.append({"type": "step", "step": "note", "node": None, "event": "failed", "time": t})
    status = "failed" if "failed" in outcomes.values() else "succeeded"
    recs.append({"type": "run", "event": "finished", "run": run_id, "status": status, "time": t})
    (d / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def test_attempts_and_success_rate_from_the_journal(site: Site) -> None:
    kinds = {"capture": "blockchain-state"}
    for i in range(25):
        outcome = "failed" if i in (3, 24) else "finished"
        write_run(
            site.state_dir,
            f"20261126-09{i:02d}00-aaaa",
            "backup-blockchain-state",
            {("capture", "validator1"): outcome, ("capture", "validator2"): "finished"},
            kinds,
        )
    write_run(
        site.state_dir, "20261126-095900-bbbb", "some-other", {("x", "validator1"): "failed"}, {}
    )
    everything = backup_attempts(site.state_dir, runs_per_runbook=None)
    assert len(everything) == 50 and {a.kind for a in everything} == {"blockchain-state"}
    attempts = backup_attempts(site.state_dir)  # the newest 20 runs of each runbook: a full window
    assert len(attempts) == 40 and attempts[0].run == "20261126-092400-aaaa"  # newest first
    assert runs_success(everything) == runs_success(attempts)
    rates = runs_success(attempts)
    # The window is the newest 20 attempts: runs 05..24, of which run 24 failed (run 3 is older).
    assert rates[("blockchain-state", "validator1")] == (19, 20)
    assert rates[("blockchain-state", "validator2")] == (20, 20)


async def test_collect_from_catalog_and_journal(site: Site) -> None:
    stores = open_stores(site, None)
    m1 = await plant(
        site,
        stores,
        "validator1",
        "blockchain-state",
        NOW - timedelta(minutes=5),
        chain_height=777,
        duration_s=2.25,
    )
    await plant(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=10))
    bad = await plant(
        site,
        {"primary": stores["primary"]},
        "validator2",
        "blockchain-state",
        NOW - timedelta(minutes=3),
    )
    record_verification(site, bad.id, False, "corrupt")
    write_run(
        site.state_dir,
        "20261126-095500-aaaa",
        "backup-blockchain-state",
        {("capture", "validator1"): "finished", ("capture", "validator2"): "failed"},
        {"capture": "blockchain-state"},
    )
    catalog = await build_catalog(site, stores, now=NOW)
    text = render(
        collect(site, catalog, backup_attempts(site.state_dir), expected=expected_nodes(site))
    )
    got = parse_exposition(text)

    def value(name: str, **labels: str) -> float:
        found = [v for lab, v in got[name] if lab == {"site": "catalog-unit", **labels}]
        assert len(found) == 1, (name, labels, got.get(name))
        return found[0]

    assert (
        value("backup_success_rate", kind="blockchain-state", node="validator1", source="runs")
        == 100
    )
    assert (
        value("backup_success_rate", kind="blockchain-state", node="validator2", source="runs") == 0
    )
    assert (
        value(
            "backup_success_rate",
            kind="blockchain-state",
            node="validator1",
            location="dr",
            source="catalog",
        )
        == 100
    )
    # validator2's one backup is only in primary and failed verification: 0% in both.
    assert (
        value(
            "backup_success_rate",
            kind="blockchain-state",
            node="validator2",
            location="primary",
            source="catalog",
        )
        == 0
    )
    assert (
        value(
            "backup_success_rate",
            kind="blockchain-state",
            node="validator2",
            location="dr",
            source="catalog",
        )
        == 0
    )
    labels = {"kind": "blockchain-state", "node": "validator1", "location": "primary"}
    assert value("backup_timestamp_seconds", **labels) == (NOW - timedelta(minutes=5)).timestamp()
    assert value("backup_size_bytes", **labels) == m1.ciphertext_size
    assert value("backup_duration_seconds", **labels) == 2.25
    assert value("backup_chain_height", **labels) == 777
    assert value("backup_rpo_seconds", kind="validator-keys", tier="critical") == 900
    assert value("backup_rpo_seconds", kind="transaction-logs", tier="important") == 3600
    # Never backed up (by a node the runbooks cover): timestamp 0, no location.
    assert value("backup_timestamp_seconds", kind="validator-keys", node="validator2") == 0
    assert value("backup_timestamp_seconds", kind="blockchain-state", node="validator2") == 0
    assert value("backup_location_up", location="dr") == 1
    assert (
        value(
            "backup_catalog_backups",
            kind="blockchain-state",
            node="validator2",
            status="failed-verify",
        )
        == 1
    )
    assert value("backup_metrics_generated_timestamp_seconds") == NOW.timestamp()
    assert set(got) <= set(METRICS)
    for name in (
        "backup_success_rate",
        "backup_size_bytes",
        "backup_duration_seconds",
        "backup_timestamp_seconds",
    ):
        assert name in got  # the plan's four


def test_render_escapes_and_formats() -> None:
    text = render(
        [
            Sample(
                "backup_size_bytes", (("kind", 'a"b'), ("node", "x\\y\nz"), ("location", "")), 1e12
            ),
            Sample("backup_duration_seconds", (("node", "n"),), 0.125),
            Sample("backup_duration_seconds", (("node", "m"),), float("nan")),
        ]
    )
    assert 'backup_size_bytes{kind="a\\"b",node="x\\\\y\\nz"} 1e+12' in text
    assert (
        'backup_duration_seconds{node="n"} 0.125' in text
        and 'backup_duration_seconds{node="m"} NaN' in text
    )
    got = parse_exposition(text)
    assert got["backup_size_bytes"] == [({"kind": 'a\\"b', "node": "x\\\\y\\nz"}, 1e12)]
    assert text.index("# TYPE backup_size_bytes gauge") < text.index("backup_size_bytes{")
    with pytest.raises(ValueError, match="unknown metric"):
        render([Sample("backup_bogus", (), 1)])


def test_promtool_accepts_the_metrics(site: Site) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    stores = open_stores(site, None)
    plant_sync(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=5))
    import asyncio

    text = render(
        collect(
            site,
            asyncio.run(build_catalog(site, stores, now=NOW)),
            [],
            expected=expected_nodes(site),
        )
    )
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_write_textfile_is_atomic_and_readable(tmp_path: Path) -> None:
    out = tmp_path / "kconsole.prom"
    out.write_text("old\n")
    write_textfile(out, "backup_location_up 1\n")
    assert out.read_text() == "backup_location_up 1\n"
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["kconsole.prom"]  # no temp file left


def test_cli_metrics_stdout_and_file(site: Site, cli, tmp_path: Path) -> None:
    stores = open_stores(site, None)
    plant_sync(site, stores, "validator1", "blockchain-state", NOW - timedelta(minutes=5))
    code, out, err = cli("--site", site.path, "metrics")
    assert code == 0, err
    got = parse_exposition(out)
    assert got["backup_location_up"] and got["backup_timestamp_seconds"]
    target = tmp_path / "textfile" / "kconsole.prom"
    code, _, err = cli("--site", site.path, "metrics", "-o", target)
    assert code == 2 and "does not exist" in err
    target.parent.mkdir()
    code, out, err = cli("--site", site.path, "metrics", "-o", target)
    assert code == 0 and out == "" and err == ""
    assert parse_exposition(target.read_text())["backup_size_bytes"]
    code, _, err = cli("--site", site.path, "metrics", "-o", tmp_path / "textfile" / "metrics.txt")
    assert code == 0 and "reads only *.prom" in err


# ----------------------------------------------------------------------------- shipped files


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    assert list(data) == ["groups"]
    return [r for g in data["groups"] for r in g["rules"]]


def test_alert_rules_parse_and_use_only_real_metrics() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert {"BackupFailed", "BackupSizeLarge", "BackupDurationHigh", "BackupAgeHigh"} <= set(names)
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description"} <= set(r["annotations"])
        assert "job=" not in r["expr"], (
            "textfile metrics carry node_exporter's job, not kaldrix-backup"
        )
        for metric in re.findall(r"\bbackup_[a-z_]+\b", r["expr"]):
            assert metric in METRICS, f"{r['alert']} uses {metric}, which kconsole never writes"
        for text in (*r["annotations"].values(), r["expr"]):
            assert text.count("{{") == text.count("}}")
        assert "$labels.instance" not in json.dumps(r["annotations"])
    age = next(r for r in rules if r["alert"] == "BackupAgeHigh")
    assert "86400" not in age["expr"] and "backup_rpo_seconds" in age["expr"]
    assert (
        next(r for r in rules if r["alert"] == "BackupFailed")["expr"].strip()
        == "backup_success_rate < 95"
    )


def test_alertmanager_route_parses_and_holds_no_secret() -> None:
    text = ALERTMANAGER.read_text()
    assert "hooks.slack.com" not in text and "YOUR/SLACK" not in text
    cfg = yaml.safe_load(text)
    receivers = {r["name"]: r for r in cfg["receivers"]}

    def routes(route: dict[str, Any]) -> list[dict[str, Any]]:
        return [route, *(x for child in route.get("routes", []) for x in routes(child))]

    for route in routes(cfg["route"]):
        assert route["receiver"] in receivers
    assert cfg["route"]["group_interval"] != "10s"
    team = receivers["backup-team"]
    for email in team["email_configs"]:
        assert set(email) <= {
            "to",
            "from",
            "smarthost",
            "headers",
            "html",
            "text",
            "send_resolved",
            "require_tls",
            "auth_username",
            "auth_password_file",
            "auth_identity",
        }
        assert "Subject" in email["headers"]
    assert "webhook_configs" not in team  # Slack rejects Alertmanager's webhook JSON
    for slack in team["slack_configs"]:
        assert "api_url" not in slack and slack["api_url_file"].startswith("/")
    assert cfg["global"]["smtp_smarthost"] and cfg["global"]["smtp_from"]


def test_promtool_and_amtool_validate_the_files() -> None:
    promtool, amtool = shutil.which("promtool"), shutil.which("amtool")
    if promtool is None or amtool is None:
        pytest.skip(
            "promtool / amtool are not installed (apt-get install prometheus prometheus-alertmanager)"
        )
    for cmd in (
        [promtool, "check", "rules", str(RULES)],
        [amtool, "check-config", str(ALERTMANAGER)],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_the_rules(tmp_path: Path) -> None:
    """BackupAgeHigh fires per tier RPO: a 30-minute-old chain-state backup (RPO 15m) alerts, a
    30-minute-old system-log backup (RPO 24h) does not, and a node never backed up alerts."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    spec = tmp_path / "rules-test.yml"
    spec.write_text(
        textwrap.dedent(f"""
        rule_files: ["{RULES}"]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'backup_rpo_seconds{{site="s",kind="blockchain-state",tier="critical"}}'
                values: '900x60'
              - series: 'backup_rpo_seconds{{site="s",kind="system-logs",tier="standard"}}'
                values: '86400x60'
              - series: 'backup_timestamp_seconds{{site="s",kind="blockchain-state",node="v1",location="primary"}}'
                values: '0x60'
              - series: 'backup_timestamp_seconds{{site="s",kind="blockchain-state",node="v1",location="dr"}}'
                values: '0x60'
              - series: 'backup_timestamp_seconds{{site="s",kind="system-logs",node="v1",location="primary"}}'
                values: '0x60'
              - series: 'backup_success_rate{{site="s",kind="system-logs",node="v1",source="runs"}}'
                values: '100x10 90x50'
              - series: 'backup_metrics_generated_timestamp_seconds{{site="s"}}'
                values: '0+60x60'
            alert_rule_test:
              - eval_time: 10m
                alertname: BackupAgeHigh
                exp_alerts: []
              - eval_time: 30m
                alertname: BackupAgeHigh
                exp_alerts:
                  - exp_labels: {{severity: critical, site: s, kind: blockchain-state, node: v1, tier: critical}}
                    exp_annotations:
                      summary: Stale backup detected
                      description: >-
                        The newest good blockchain-state backup of v1 is 30m 0s old, past the RPO of tier
                        critical (an age of decades means there is no good backup at all).
              - eval_time: 30m
                alertname: BackupFailed
                exp_alerts:
                  - exp_labels: {{severity: critical, site: s, kind: system-logs, node: v1, source: runs}}
                    exp_annotations:
                      summary: Backup failure detected
                      description: >-
                        Backup success rate is 90% (runs) for system-logs
                        of v1 on site s.
              - eval_time: 30m
                alertname: BackupMetricsStale
                exp_alerts: []
          - interval: 1m
            input_series:
              - series: 'backup_encryption_key_age_seconds{{site="s",key_id="k1"}}'
                values: '7777000+60x90'
              - series: 'backup_encryption_key_rotate_after_seconds{{site="s"}}'
                values: '7776000x90'
            alert_rule_test:
              - eval_time: 30m
                alertname: BackupKeyRotationOverdue
                exp_alerts: []
              - eval_time: 61m
                alertname: BackupKeyRotationOverdue
                exp_alerts:
                  - exp_labels: {{severity: warning, site: s, key_id: k1}}
                    exp_annotations:
                      summary: Backup encryption key is due for rotation
                      description: >-
                        Key k1 has encrypted new backups of site s for 90d 1h 17m 40s, past the
                        site's rotation period; run `kconsole crypto keygen` into the key directory
                        (older backups stay readable).
        """)
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_data_files_ship_in_the_package() -> None:
    assert RULES.is_file() and ALERTMANAGER.is_file()
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"data/*"' in pyproject


# ----------------------------------------------------------------------------- recovery


def _rep(scenario: str, status: str, finished: str, **extra: Any) -> dict[str, Any]:
    rep = {
        "scenario": scenario,
        "status": status,
        "finished": finished,
        "drill": False,
        "rto_s": 3600.0,
        "recovery_s": None,
        "data_consistency": {"verified": False},
        "consistency": None,
    }
    rep.update(extra)
    return rep


def test_recovery_metrics_from_reports(site: Site) -> None:
    from kconsole.backups.metrics import recovery_samples

    reports = [  # newest first, as recent_reports gives them
        _rep("single-node", "failed", "2026-12-03T10:00:00Z"),
        _rep(
            "single-node",
            "succeeded",
            "2026-12-03T09:00:00Z",
            recovery_s=420.0,
            data_consistency={"verified": False},
            consistency={"nodes": [{"node": "validator1", "height": 10, "lag_blocks": 500}]},
        ),
        _rep("single-node", "succeeded", "2026-12-02T09:00:00Z", recovery_s=300.0),
        _rep("backup", "succeeded", "2026-12-03T09:00:00Z"),  # not a recovery
        _rep("multiple-nodes", "succeeded", "", drill=True),  # not finished
    ]
    got = parse_exposition(render(recovery_samples(site, reports)))
    labels = {"site": site.name, "scenario": "single-node", "drill": "false"}
    assert got["recovery_success_rate"] == [(labels, pytest.approx(200 / 3))]
    assert got["recovery_last_succeeded"] == [(labels, 0.0)]
    assert got["recovery_time_seconds"] == [(labels, 420.0)]  # the newest successful one
    assert got["recovery_rto_seconds"] == [(labels, 3600.0)]
    assert got["recovery_data_verified"] == [(labels, 0.0)]
    assert got["recovery_availability_ratio"] == [(labels, 1.0)]
    assert "multiple-nodes" not in json.dumps(got)


def test_cli_metrics_include_recovery_runs(site: Site, cli, tmp_path: Path) -> None:
    rb = tmp_path / "rb.toml"
    rb.write_text(
        textwrap.dedent("""
        [runbook]
        id = "recover-demo"
        title = "Recover demo"
        rto = "1h"
        scenario = "single-node"

        [[steps]]
        id = "restore"
        action = "shell"
        command = "exit 5"
        """)
    )
    code, out, err = cli("--site", site.path, "run", rb, "--yes")
    assert code == 1, out + err
    code, out, err = cli("--site", site.path, "metrics")
    assert code == 0, err
    got = parse_exposition(out)
    assert got["recovery_last_succeeded"][0][1] == 0.0
    assert got["recovery_success_rate"][0][1] == 0.0


def test_recovery_rules_use_only_real_metrics() -> None:
    rules = [r for r in _rules() if r["alert"].startswith("Recovery")]
    assert {r["alert"] for r in rules} == {
        "RecoveryFailed",
        "RecoverySuccessRateLow",
        "RecoveryRtoMissed",
        "RecoveryDataNotVerified",
        "RecoveryAvailabilityLow",
    }
    for r in rules:
        for metric in re.findall(r"\brecovery_[a-z_]+\b", r["expr"]):
            assert metric in METRICS, f"{r['alert']} uses {metric}, which kconsole never writes"


def test_promtool_unit_tests_of_the_recovery_rules(tmp_path: Path) -> None:
    """A failed newest recovery alerts; a recovery past its RTO alerts, one within does not."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    spec = tmp_path / "recovery-rules-test.yml"
    spec.write_text(
        textwrap.dedent(f"""
        rule_files: ["{RULES}"]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'recovery_last_succeeded{{site="s",scenario="single-node",drill="false"}}'
                values: '0x10'
              - series: 'recovery_time_seconds{{site="s",scenario="single-node",drill="true"}}'
                values: '4000x10'
              - series: 'recovery_rto_seconds{{site="s",scenario="single-node",drill="true"}}'
                values: '3600x10'
              - series: 'recovery_time_seconds{{site="s",scenario="multiple-nodes",drill="true"}}'
                values: '600x10'
              - series: 'recovery_rto_seconds{{site="s",scenario="multiple-nodes",drill="true"}}'
                values: '7200x10'
            alert_rule_test:
              - eval_time: 5m
                alertname: RecoveryFailed
                exp_alerts:
                  - exp_labels: {{severity: critical, site: s, scenario: single-node, drill: "false"}}
                    exp_annotations:
                      summary: Recovery did not succeed
                      description: >-
                        The newest single-node recovery on site s
                        (drill: false) did not succeed; see `kconsole runs` and its report.
              - eval_time: 5m
                alertname: RecoveryRtoMissed
                exp_alerts:
                  - exp_labels: {{severity: warning, site: s, scenario: single-node, drill: "true"}}
                    exp_annotations:
                      summary: Recovery took longer than its RTO
                      description: >-
                        The newest successful single-node recovery on site s
                        took 1h 6m 40s from detection, past its RTO.
        """)
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
