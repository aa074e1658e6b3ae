"""The plan's backups and all four recovery scenarios, headless on the lab."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kconsole.headless import run_headless
from kconsole.site import Access, current_user, load_site
from tests.lablive import LiveLab, live_lab

STATE = "var/lib/kaldrix/state"

RUNNING = ("active", "behind")
"""A started node: a restored one is `behind` its peers until it catches up (the lab's
nodes do not sync from peers, so it stays behind; the report says Not Verified)."""


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("lab")) as running:
        yield running


@pytest.fixture(autouse=True)
def lab_env(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)


def run(cli, lab: LiveLab, *args: str) -> tuple[int, str, str]:
    return cli("--site", lab.site, "run", *args)


def status(cli, lab: LiveLab) -> dict[str, dict]:
    code, out, err = cli("--site", lab.site, "status", "--json")
    assert code == 0, err
    return {s["name"]: s for s in map(json.loads, out.splitlines())}


def test_restore_is_byte_for_byte(cli, lab: LiveLab, tmp_path: Path) -> None:
    """Stop a node, back it up, wreck its state, restore: the state is exactly as backed up."""
    rb = tmp_path / "fidelity.toml"
    rb.write_text(
        textwrap.dedent("""
        [runbook]
        id = "fidelity"
        title = "Restore fidelity"
        rto = "10m"

        [[steps]]
        id = "stop"
        action = "ssh.exec"
        node = "validator2"
        command = "systemctl stop kaldrix-node"
        sudo = true

        [[steps]]
        id = "backup"
        action = "backup.create"
        node = "validator2"
        kind = "blockchain-state"
        paths = ["/var/lib/kaldrix/state"]
        needs = ["stop"]
    """)
    )
    code, out, err = run(cli, lab, str(rb), "--yes")
    assert code == 0, out + err
    state = lab.root("validator2") / STATE
    before = tree(state)
    assert len(before) > 3
    for f in list(state.rglob("*"))[:3]:
        if f.is_file():
            f.write_bytes(b"garbage")
    (state / "intruder").write_text("x")
    rb2 = tmp_path / "restore.toml"
    rb2.write_text(
        textwrap.dedent("""
        [runbook]
        id = "restore-only"
        title = "Restore only"
        rto = "10m"

        [[steps]]
        id = "restore"
        action = "backup.restore"
        node = "validator2"
        kind = "blockchain-state"
        gate = "type:{node}"
    """)
    )
    code, out, err = run(cli, lab, str(rb2), "--yes")
    assert code == 0, out + err
    assert tree(state) == before


def test_backups_of_every_tier(cli, lab: LiveLab) -> None:
    for runbook in (
        "backup-blockchain-state",
        "backup-validator-keys",
        "backup-transaction-logs",
        "backup-system-logs",
    ):
        code, out, err = run(cli, lab, runbook, "--yes")
        assert code == 0, f"{runbook}:\n{out}{err}"
    code, out, err = cli("--site", lab.site, "catalog", "--json", "--kind", "blockchain-state")
    assert code == 0, err
    rows = [r for r in map(json.loads, out.splitlines()) if "location" in r]
    locations = {(r["node"], r["location"]) for r in rows}
    for node in ("bootstrap1", "validator1", "api3"):
        for loc in ("primary", "dr", "cloud"):
            assert (node, loc) in locations
    assert all(r["status"] in ("ok", "stale") for r in rows if r["node"] != "validator2")


def test_scenario_1_single_node(cli, lab: LiveLab) -> None:
    lab.fault("set", "wipe=validator1")
    lab.fault("clear", "wipe=validator1")
    code, out, err = run(cli, lab, "recover-single-node", "--param", "node=validator1", "--yes")
    assert code == 0, out + err
    s = status(cli, lab)["validator1"]
    assert s["state"] in RUNNING and s["height"] and s["height"] > 0
    code, runs, _ = cli("--site", lab.site, "runs", "--json")
    run_id = json.loads(runs.splitlines()[0])["id"]
    code, md, err = cli("--site", lab.site, "report", run_id)
    assert code == 0, err
    assert "- **Recovery Success**: Pass" in md and "- **RPO Met**: Yes" in md
    assert "| validator1 | validator1_blockchain-state_" in md


def test_a_corrupt_primary_copy_does_not_block_a_recovery(cli, lab: LiveLab) -> None:
    """The pre-restore check needs one good copy: the damaged primary is reported, the restore
    takes the DR or cloud copy, and the node comes back."""
    lab.fault("set", "corrupt=latest:validator3:blockchain-state@primary")
    try:
        code, out, err = run(cli, lab, "recover-single-node", "--param", "node=validator3", "--yes")
    finally:
        lab.fault("clear", "corrupt=latest:validator3:blockchain-state@primary")
    assert code == 0, out + err
    assert "have a missing or damaged replica or could not be checked everywhere" in out
    assert "replica in primary unusable" in out
    assert status(cli, lab)["validator3"]["state"] in RUNNING


def test_a_node_restored_from_the_labs_history_starts(cli, lab: LiveLab) -> None:
    """The backups the lab starts with hold consistent chain states: restoring the oldest
    one (point in time, as after a compromise) gives a node that starts and advances."""
    code, out, err = cli(
        "--site", lab.site, "catalog", "--json", "--kind", "blockchain-state", "--node", "api2"
    )
    assert code == 0, err
    ids = sorted({r["id"] for r in map(json.loads, out.splitlines()) if "location" in r})
    oldest = ids[0]
    code, out, err = run(
        cli,
        lab,
        "recover-single-node",
        "--param",
        "node=api2",
        "--param",
        f"backup={oldest}",
        "--yes",
    )
    assert code == 0, out + err
    assert f"restored {oldest}" in out
    s = status(cli, lab)["api2"]
    assert s["state"] in RUNNING and s["height"]


def test_scenario_2_multiple_nodes(cli, lab: LiveLab) -> None:
    lab.fault("set", "crash=validator3,crash=api1")
    code, out, err = run(
        cli, lab, "recover-multiple-nodes", "--param", "nodes=validator3,api1", "--yes"
    )
    assert code == 0, out + err
    states = status(cli, lab)
    assert states["validator3"]["state"] in RUNNING and states["api1"]["state"] in RUNNING


def test_scenario_3_complete_network(cli, lab: LiveLab) -> None:
    code, out, err = run(cli, lab, "recover-complete-network", "--yes", "--json")
    assert code == 0, out + err
    events = [json.loads(line) for line in out.splitlines()]

    def position(event: str, step: str, pick) -> int:
        return pick(i for i, e in enumerate(events) if e["event"] == event and e["step"] == step)

    # Waves: a group's restores start only after the previous group is active and healthy.
    assert position("finished", "health-bootstrap", max) < position(
        "started", "restore-validator", min
    )
    assert position("finished", "health-validator", max) < position("started", "restore-api", min)
    assert all(s["state"] in RUNNING for n, s in status(cli, lab).items() if n != "backup-dr")


def key_ids(cli, lab: LiveLab) -> set[str]:
    code, out, err = cli("--site", lab.site, "catalog", "--json")
    assert code == 0, err
    return {r["key_id"] for r in map(json.loads, out.splitlines()) if "location" in r}


def security_run(cli, lab: LiveLab, *args: str) -> tuple[int, str, str]:
    """The security runbook's destructive steps are two-person gates: run it with --yes as
    this account, then a second account and this one take turns approving (resuming with
    --yes, the identity injected at the engine level) until the run ends."""
    code, out, err = run(cli, lab, "recover-security-incident", *args, "--yes")
    me = current_user()
    site = dataclasses.replace(
        load_site(lab.site), access=Access(admin=(me, "second-operator"), configured=True)
    )
    turns = 0
    while code == 3:
        found = re.search(r"--resume (\S+)", out)
        assert found, out + err
        lines: list[str] = []
        code = run_headless(
            site=site,
            runbook="recover-security-incident",
            params=[],
            yes=True,
            drill=False,
            as_json=False,
            resume=found[1],
            printer=lines.append,
            user=("second-operator", me)[turns % 2],
        )
        out += "\n".join(lines) + "\n"
        turns += 1
        assert turns < 10, out
    return code, out, err


def test_scenario_4_security_incident(cli, lab: LiveLab) -> None:
    before = key_ids(cli, lab)
    # Compromised when validator1's newest backup was made: restore from the one before it.
    code, out, err = cli(
        "--site",
        lab.site,
        "catalog",
        "--json",
        "--kind",
        "blockchain-state",
        "--node",
        "validator1",
    )
    rows = sorted(
        {(r["created"], r["id"]) for r in map(json.loads, out.splitlines()) if "location" in r},
        reverse=True,
    )
    (compromised_at, _), (_, known_good) = rows[0], rows[1]
    code, out, err = security_run(
        cli,
        lab,
        "--param",
        "ops_network=127.0.0.0/8",
        "--param",
        f"known_good_before={compromised_at}",
    )
    assert code == 0, out + err
    assert "restore-bootstrap approved by second-operator (2 of 2)" in out
    assert "restore-validator [validator1] finished" in out and f"restored {known_good} from" in out
    after = key_ids(cli, lab)
    # A new key was generated, made current, and every backup re-encrypted to it.
    assert len(after) == 1 and not (after & before)
    assert (lab.dir / "keys" / "CURRENT").exists()
    assert all(s["state"] in RUNNING for n, s in status(cli, lab).items() if n != "backup-dr")


def test_verify_backups_and_audit(cli, lab: LiveLab) -> None:
    code, out, err = run(cli, lab, "verify-backups", "--yes")
    assert code == 0, out + err
    code, out, err = cli("--site", lab.site, "audit", "verify")
    assert code == 0, err
    assert (
        "off-host checkpoint in dr: matches" in out
        and "off-host checkpoint in cloud: matches" in out
    )


def test_scenario_4_stops_before_reconnecting_a_compromised_fleet(cli, lab: LiveLab) -> None:
    """An implant outside the restored state is found by the scan, and the fleet stays isolated."""
    lab.fault("set", "compromise=api2")
    code, out, err = security_run(cli, lab, "--param", "ops_network=127.0.0.0/8")
    assert code == 1
    assert "scan-api [api2] failed" in out
    assert "reconnect-api [api2] skipped" in out


def test_a_second_security_run_after_a_failed_one_reconnects_the_fleet(cli, lab: LiveLab) -> None:
    """The failed run left the fleet isolated (containment holds). Once the implant is dealt
    with, a new run restores the firewall as it was before the incident, not the isolation."""
    lab.fault("clear", "compromise=api2")
    code, out, err = security_run(cli, lab, "--param", "ops_network=127.0.0.0/8")
    assert code == 0, out + err
    assert all(s["state"] in RUNNING for n, s in status(cli, lab).items() if n != "backup-dr")
    ufw = json.loads((lab.dir / "nodes" / "api2" / "etc" / "ufw" / "ufw.json").read_text())
    assert ufw.get("outgoing") not in ("deny", "reject"), ufw


def test_audit_cut_off_locally_is_caught_by_the_off_host_checkpoint(cli, lab: LiveLab) -> None:
    """Dropping the newest audit entries leaves a valid chain; the checkpoints say otherwise."""
    log = lab.dir / "state" / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-3]))
    code, out, err = cli("--site", lab.site, "audit", "verify")
    assert code == 1
    assert "entries were cut off or the log was replaced" in err
