"""The Runs screen with a shared store: another console's run is listed with its console
and taken over with `e` (two consoles, two state_dirs, one moto S3 server)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable

from kconsole.journal import summarise
from kconsole.shared import SharedStore, console_name
from kconsole.shared.lease import lease_name
from screens.dialogs import GateScreen
from screens.runs import RunsScreen
from tests.tui_support import make_console, settle, utc_local_time, wait_for  # noqa: F401

RUN = "20261126-031400-0001"
TO_FIRST_GATE = ["r", "enter", "enter", "enter"]
"""recover-single-node with a validator down, from launch to its first gate."""

pytestmark = pytest.mark.usefixtures("utc_local_time")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="shared-runs")
    yield url
    server.stop()


def shared_console(root: Path, endpoint: str, user: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    root.mkdir(parents=True, exist_ok=True)
    console = make_console(
        root,
        down=["validator2"],
        user=user,
        site_extra=(
            f'\n[locations.cloud]\ntype = "s3"\nbucket = "shared-runs"\n'
            f'endpoint_url = "{endpoint}"\n'
        ),
    )
    # [site] comes first in the file; set the key on the loaded site instead.
    console.app.site.shared = f"cloud/{root.parent.name}"
    return console


def _gate(app: object) -> GateScreen | None:
    screen = app.screen  # type: ignore[attr-defined]
    return screen if isinstance(screen, GateScreen) else None


async def test_runs_lists_another_consoles_run_and_e_takes_it_over(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = shared_console(tmp_path / "a", s3_endpoint, "alice", monkeypatch)
    async with a.app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press(*TO_FIRST_GATE)
        await wait_for(pilot, lambda: _gate(a.app), "the first gate")
        await pilot.press("l")  # later: the run stops, waiting, and its lease is released
        await wait_for(pilot, lambda: not a.app.run_active, "the run to stop")
    assert summarise(a.app.site.state_dir / "runs" / RUN).status == "waiting"

    b = shared_console(tmp_path / "b", s3_endpoint, "olga", monkeypatch)
    assert not (b.app.site.state_dir / "runs" / RUN).exists()
    async with b.app.run_test(size=(120, 32)) as pilot:
        await settle(pilot)
        await pilot.press("h")
        await wait_for(
            pilot,
            lambda: (
                isinstance(b.app.screen, RunsScreen) and any(r.id == RUN for r in b.app.screen.runs)
            ),
            "A's run in B's list",
        )
        screen = b.app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs", DataTable)
        row = table.get_row(RUN)
        assert "waiting" in str(row[2]) and str(row[5]) == "alice"
        assert str(row[6]) == console_name(a.app.site)
        info = str(screen.query_one("#run-info").render())
        assert "e to take it over" in info and f"on {console_name(a.app.site)}" in info
        await pilot.press("e")
        await wait_for(pilot, lambda: _gate(b.app), "the gate of the taken-over run")
        assert b.app.session is not None and b.app.session.run_id == RUN
    # B replayed A's journal before carrying on: A's records come first in B's journal.
    records = summarise(b.app.site.state_dir / "runs" / RUN).records
    events = [r["event"] for r in records if r.get("type") == "run"]
    assert events[:3] == ["created", "stopped", "resumed"]
    assert next(r for r in records if r.get("event") == "resumed")["user"] == "olga"


async def test_a_console_whose_lease_is_taken_stops_its_run(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = shared_console(tmp_path / "a", s3_endpoint, "alice", monkeypatch)
    a.app.site.lease = 3.0  # renewed every second
    async with a.app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press(*TO_FIRST_GATE)
        await wait_for(pilot, lambda: _gate(a.app), "the first gate")
        store = SharedStore.for_site(a.app.site)
        assert store is not None
        await wait_for(pilot, lambda: store.read(lease_name(RUN)) is not None, "the lease")
        # Another console found the lease expired and took it (If-Match on what it read).
        seen = store.read(lease_name(RUN))
        assert seen is not None
        assert store.replace(
            lease_name(RUN), b'{"holder": "elsewhere", "state": "live"}', seen.etag
        )
        await wait_for(pilot, lambda: not a.app.run_active, "the run to stop")
        assert any(n.title == "Run lease lost" for n in a.app._notifications)
    assert summarise(a.app.site.state_dir / "runs" / RUN).status == "interrupted"
