"""Every lab fault gives a failed step with a one-sentence reason, retried where the
runbook says so, and never a hang."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lablive import LiveLab, live_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("faultlab")) as running:
        yield running


@pytest.fixture(autouse=True)
def clean(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    yield
    lab.fault("clear")


def runbook(tmp_path: Path, steps: str) -> Path:
    p = tmp_path / "rb.toml"
    p.write_text(
        '[runbook]\nid = "fault-test"\ntitle = "Fault test"\nrto = "5m"\n\n'
        + textwrap.dedent(steps)
    )
    return p


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def failure(evs: list[dict]) -> str:
    reasons = [e["reason"] for e in evs if e["event"] == "failed"]
    assert reasons, evs
    assert "\n" not in reasons[0] and "Traceback" not in reasons[0]
    return reasons[0]


def test_node_down(cli, lab: LiveLab, tmp_path: Path) -> None:
    lab.fault("set", "down=validator2")
    rb = runbook(
        tmp_path,
        """
        [[steps]]
        id = "probe"
        action = "ssh.exec"
        for_each = ["validator1", "validator2"]
        command = "true"
        retries = 1
        backoff = "100ms"
        timeout = "30s"
    """,
    )
    code, out, _ = cli("--site", lab.site, "run", rb, "--json")
    assert code == 1
    evs = events(out)
    assert "node validator2 is unreachable" in failure(evs)
    assert [e["node"] for e in evs if e["event"] == "retrying"] == ["validator2"]
    assert ("probe", "validator1") in [
        (e["step"], e["node"]) for e in evs if e["event"] == "finished"
    ]
    code, out, _ = cli("--site", lab.site, "status", "--json")
    states = {s["name"]: s["state"] for s in map(json.loads, out.splitlines())}
    assert states["validator2"] == "unreachable" and states["validator1"] == "active"


def test_slow_link_times_out(cli, lab: LiveLab, tmp_path: Path) -> None:
    lab.fault("set", "slow=api1:3")
    rb = runbook(
        tmp_path,
        """
        [[steps]]
        id = "slow"
        action = "ssh.exec"
        node = "api1"
        command = "echo hi"
        timeout = "1s"
    """,
    )
    code, out, _ = cli("--site", lab.site, "run", rb, "--json")
    assert code == 1
    assert "timed out after 1s" in failure(events(out))


def test_flaky_link_drops_mid_stream(cli, lab: LiveLab, tmp_path: Path) -> None:
    lab.fault("set", "flaky=api2:30000")
    rb = runbook(
        tmp_path,
        """
        [[steps]]
        id = "stream"
        action = "ssh.exec"
        node = "api2"
        command = "head -c 2000000 /dev/zero | od -v | head -c 1500000"
        timeout = "30s"
    """,
    )
    code, out, _ = cli("--site", lab.site, "run", rb, "--json")
    assert code == 1
    reason = failure(events(out))
    assert "api2" in reason and ("lost" in reason or "unreachable" in reason)


def test_failing_command(cli, lab: LiveLab, tmp_path: Path) -> None:
    lab.fault("set", "fail=validator3:systemctl")
    rb = runbook(
        tmp_path,
        """
        [[steps]]
        id = "restart"
        action = "ssh.exec"
        node = "validator3"
        command = "systemctl restart kaldrix-node"
        sudo = true
        retries = 2
        backoff = "100ms"
        timeout = "30s"
    """,
    )
    code, out, _ = cli("--site", lab.site, "run", rb, "--json")
    assert code == 1
    evs = events(out)
    assert "exit code 1, expected 0" in failure(evs)
    assert len([e for e in evs if e["event"] == "retrying"]) == 2


def _backup_then(tmp_path: Path, node: str, extra: str) -> Path:
    return runbook(
        tmp_path,
        f"""
        [[steps]]
        id = "backup"
        action = "backup.create"
        node = "{node}"
        kind = "blockchain-state"
        paths = ["/var/lib/kaldrix/state"]
        timeout = "2m"
    """
        + textwrap.dedent(extra),
    )


RESTORE = """
[[steps]]
id = "stop"
action = "ssh.exec"
node = "{node}"
command = "systemctl stop kaldrix-node"
sudo = true
needs = ["backup"]
timeout = "1m"

[[steps]]
id = "restore"
action = "backup.restore"
node = "{node}"
kind = "blockchain-state"
gate = "confirm"
needs = ["stop"]
timeout = "2m"

[[steps]]
id = "start"
action = "ssh.exec"
node = "{node}"
command = "systemctl start kaldrix-node"
sudo = true
needs = ["restore"]
timeout = "1m"
"""


def test_disk_full_on_restore(cli, lab: LiveLab, tmp_path: Path) -> None:
    rb = _backup_then(tmp_path, "validator1", RESTORE.format(node="validator1"))
    lab.fault("set", "diskfull=validator1")
    code, out, _ = cli("--site", lab.site, "run", rb, "--json", "--yes")
    assert code == 1
    reason = failure(events(out))
    assert "No space left on device" in reason or "space" in reason
    lab.fault("clear")
    root = lab.root("validator1")
    assert not list(root.glob(".kconsole-restore-*"))


def test_corrupt_primary_falls_back_to_dr(cli, lab: LiveLab, tmp_path: Path) -> None:
    rb = _backup_then(tmp_path, "bootstrap2", "")
    code, out, err = cli("--site", lab.site, "run", rb, "--json", "--yes")
    assert code == 0, out + err
    lab.fault("set", "corrupt=latest:bootstrap2:blockchain-state@primary")
    code, out, err = cli("--site", lab.site, "verify")
    assert code == 1
    assert "bootstrap2_blockchain-state" in err
    rb2 = runbook(tmp_path, RESTORE.replace('needs = ["backup"]\n', "").format(node="bootstrap2"))
    code, out, err = cli("--site", lab.site, "run", rb2, "--json", "--yes")
    assert code == 0, out + err
    texts = [e.get("text", "") for e in events(out) if e["event"] == "output"]
    # The primary copy is streamed and found bad on the way (its hash, or its
    # authentication where the flipped byte lies): the staging directory is emptied and the
    # DR copy restored instead; nothing is left behind.
    assert any("replica in primary unusable" in t for t in texts)
    assert any("from dr as it streamed" in t for t in texts), texts
    assert not list(lab.root("bootstrap2").glob(".kconsole-restore-*"))


def test_a_corrupt_remote_copy_streamed_into_a_node_is_refused_and_leaves_nothing(
    cli, lab: LiveLab, tmp_path: Path
) -> None:
    """Restoring from the DR host streams its copy into the node as it arrives (no local
    copy); a flipped byte there is caught on the way, the staging directory removed, and the
    node's state left as it was."""
    rb = _backup_then(tmp_path, "bootstrap1", "")
    code, out, err = cli("--site", lab.site, "run", rb, "--json", "--yes")
    assert code == 0, out + err
    state = lab.root("bootstrap1") / "var/lib/kaldrix/state"
    before = sorted(p.name for p in state.rglob("*"))
    lab.fault("set", "corrupt=latest:bootstrap1:blockchain-state@dr")
    restore = RESTORE.replace('needs = ["backup"]\n', "").format(node="bootstrap1")
    restore = restore.replace(
        'kind = "blockchain-state"\ngate', 'kind = "blockchain-state"\nlocation = "dr"\ngate'
    )
    assert 'location = "dr"' in restore
    code, out, err = cli("--site", lab.site, "run", runbook(tmp_path, restore), "--json", "--yes")
    assert code == 1, out + err
    reason = failure(events(out))
    assert "no good copy" in reason and "dr:" in reason, reason
    print(reason)
    assert not list(lab.root("bootstrap1").glob(".kconsole-restore-*"))
    # Untouched: everything the node had is still there (it may have written a segment more
    # before the runbook stopped it; a swapped-in backup would have lost the newest ones).
    assert set(before) <= {p.name for p in state.rglob("*")}


def test_s3_errors_fail_the_backup(cli, lab: LiveLab, tmp_path: Path) -> None:
    lab.fault("set", "s3=error")
    rb = _backup_then(tmp_path, "api3", "")
    code, out, _ = cli("--site", lab.site, "run", rb, "--json")
    assert code == 1
    reason = failure(events(out))
    assert "cloud" in reason and "not in every location" in reason


def test_a_step_timeout_longer_than_the_command_timeout_holds(
    cli, lab: LiveLab, tmp_path: Path
) -> None:
    """The step's timeout is the limit on the node, not `[ssh] command_timeout`: a 4 s
    command in a step allowed 30 s succeeds on a site whose command timeout is 2 s."""
    text = Path(lab.site).read_text()
    assert 'command_timeout = "15m"' in text
    short = Path(lab.site).with_name("site-short-timeout.toml")
    short.write_text(text.replace('command_timeout = "15m"', 'command_timeout = "2s"'))
    rb = runbook(
        tmp_path,
        """
        [[steps]]
        id = "long"
        action = "ssh.exec"
        node = "validator1"
        command = "sleep 4 && echo done"
        timeout = "30s"
    """,
    )
    code, out, err = cli("--site", short, "run", rb, "--json")
    assert code == 0, out + err
    finished = next(e for e in events(out) if e["event"] == "finished")
    assert finished["step"] == "long" and finished["duration_s"] >= 4
