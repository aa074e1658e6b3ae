"""Alertmanager in: the real `alertmanager` binary on loopback, alerts posted with `amtool
alert add`, read back through API v2 and turned into a backup incident with its runbook."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kconsole.cli import main
from kconsole.errors import OperationFailed
from kconsole.incidents import IncidentDesk
from kconsole.incidents.alerts import firing_alerts, suggest
from kconsole.site import Site, load_site
from tests.sshd import closed_port, free_port

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")
pytestmark = pytest.mark.skipif(
    BINARY is None or AMTOOL is None,
    reason="alertmanager / amtool are not installed (apt-get install prometheus-alertmanager)",
)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1 with no receivers that reach anything."""
    d = tmp_path_factory.mktemp("alertmanager")
    (d / "am.yml").write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    port = free_port()
    assert BINARY is not None
    proc = subprocess.Popen(
        [
            BINARY,
            f"--config.file={d / 'am.yml'}",
            f"--storage.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(d / "am.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("alertmanager did not start: " + (d / "am.log").read_text()[-500:])
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def _amtool(url: str, *args: str) -> None:
    assert AMTOOL is not None
    subprocess.run(
        [AMTOOL, "alert", "add", *args, f"--alertmanager.url={url}"],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _site(tmp_path: Path, url: str) -> Site:
    path = tmp_path / "site.toml"
    path.write_text(
        f"""
[site]
name = "lab"
state_dir = "state"

[alertmanager]
url = "{url}"

[[nodes]]
name = "validator1"
host = "127.0.0.1"

[[contacts]]
name = "John Smith"
role = "Backup Administrator"
phone = "+1-555-0101"

[escalation.backup]
title = "Backup Issues"
levels = [{{ role = "Backup Administrator", wait = "15m" }}, {{ role = "Operations Lead" }}]
"""
    )
    return load_site(path)


def test_firing_alerts_open_a_backup_incident_with_the_runbook(
    alertmanager: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _amtool(
        alertmanager,
        "BackupFailed",
        "node=validator1",
        "kind=blockchain-state",
        "severity=critical",
        "site=lab",
        "--annotation=summary=Backup failure detected",
    )
    _amtool(alertmanager, "BackupAgeHigh", "kind=validator-keys", "severity=critical", "site=lab")
    site = _site(tmp_path, alertmanager)
    alerts = asyncio.run(firing_alerts(site))
    by_name = {a.name: a for a in alerts}
    assert set(by_name) >= {"BackupFailed", "BackupAgeHigh"}
    failed = by_name["BackupFailed"]
    assert failed.node == "validator1" and failed.kind == "blockchain-state"
    hint = suggest(failed, site)
    assert (hint.type, hint.runbook, hint.nodes) == (
        "backup",
        "backup-blockchain-state",
        ("validator1",),
    )
    assert suggest(by_name["BackupAgeHigh"], site).runbook == "backup-validator-keys"

    desk = IncidentDesk(site, user="oncall")
    inc = desk.open_from_alert(failed)
    assert inc.type == "backup" and inc.severity == "critical" and inc.nodes == ["validator1"]
    assert inc.runbook == "backup-blockchain-state" and inc.level == 1
    assert inc.detected.startswith(failed.starts_at[:19])

    assert main(["--site", str(site.path), "incident", "alerts", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    row = next(r for r in rows if r["name"] == "BackupFailed")
    assert row["suggested"]["runbook"] == "backup-blockchain-state"
    assert main(["--site", str(site.path), "incident", "alerts", "--open", row["fingerprint"]]) == 0
    opened = capsys.readouterr().out.splitlines()[0]
    assert (
        IncidentDesk(site).get(opened).summary.startswith("BackupFailed: Backup failure detected")
    )


def test_alertmanager_down_is_one_sentence(tmp_path: Path) -> None:
    site = _site(tmp_path, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(OperationFailed, match="cannot be read"):
        asyncio.run(firing_alerts(site))
    assert main(["--site", str(site.path), "incident", "alerts"]) == 1


async def test_the_dashboard_shows_firing_alerts_and_opens_an_incident_from_one(
    alertmanager: str, tmp_path: Path
) -> None:
    from screens.dialogs import ConfirmScreen
    from screens.runbooks import RunbooksScreen
    from tests.tui_support import make_console, settle, wait_for

    _amtool(
        alertmanager,
        "BackupAgeHigh",
        "node=validator2",
        "kind=validator-keys",
        "severity=critical",
        "site=kaldrix-test",
        "--annotation=summary=Backups older than their RPO",
    )
    console = make_console(tmp_path, site_extra=f'\n[alertmanager]\nurl = "{alertmanager}"\n')
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await wait_for(pilot, lambda: app.alerts, "the firing alerts")
        await pilot.pause()
        strip = str(app.screen.query_one("#incidents-strip").render())
        assert "firing: BackupAgeHigh (critical) validator-keys validator2" in strip
        assert "o open incident" in strip
        await pilot.press("o")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Suggested runbook: backup-validator-keys" in str(
            app.screen.query_one("#question").render()
        )
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, RunbooksScreen), "the runbooks")
        (inc,) = app.desk.incidents()
    assert inc.type == "backup" and inc.runbook == "backup-validator-keys"
    assert inc.nodes == ["validator2"] and inc.level == 1
