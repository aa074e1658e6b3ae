"""Runs shared between two consoles (two state_dirs) through the lab's S3 location:
gates left by one and finished by the other, leases, take-over, two-person gates."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kconsole.errors import UsageError
from kconsole.headless import run_headless
from kconsole.journal import list_runs, summarise
from kconsole.shared import Lease, LeaseHeld, SharedStore, console_name, read_lease
from kconsole.shared.runs import merged_runs, shared_runs
from kconsole.site import Access, Site, load_site
from tests.lablive import LiveLab, live_lab

RUNBOOK = """
[runbook]
id = "shared-demo"
title = "Shared demo"
rto = "10m"

[[steps]]
id = "look"
action = "ssh.exec"
node = "validator1"
command = "echo looked"

[[steps]]
id = "apply"
title = "Apply the change"
action = "ssh.exec"
node = "validator1"
needs = ["look"]
gate = "confirm"
approvers = {approvers}
command = "echo applied"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("lab"), nodes=3) as running:
        yield running


@pytest.fixture(autouse=True)
def lab_env(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)


def console(lab: LiveLab, name: str, lease: str = "60s") -> Site:
    """A second site file on the same lab: its own state_dir, the same shared store."""
    text = lab.site.read_text().replace('state_dir = "state"', f'state_dir = "state-{name}"')
    text = text.replace("[site]\n", f'[site]\nlease = "{lease}"\n', 1)
    path = lab.dir / f"site-{name}.toml"
    path.write_text(text)
    site = load_site(path)
    # Two accounts may operate: identities are injected at the engine level below.
    return dataclasses.replace(
        site, access=Access(admin=("alice", "bob"), auditor=("carol",), configured=True)
    )


def runbook(tmp_path: Path, approvers: int = 1) -> Path:
    p = tmp_path / f"shared-demo-{approvers}.toml"
    p.write_text(textwrap.dedent(RUNBOOK.format(approvers=approvers)).lstrip())
    return p


def drive(
    site: Site, rb: Path, user: str, *, yes: bool, resume: str | None = None
) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = run_headless(
        site=site,
        runbook=str(rb),
        params=[],
        yes=yes,
        drill=False,
        as_json=False,
        resume=resume,
        printer=lines.append,
        user=user,
    )
    return code, lines


def run_id_of(lines: list[str]) -> str:
    return next(line.split()[2].rstrip(":") for line in lines if " run " in line)


def shared_view(site: Site, run_id: str):
    runs, problem = merged_runs(site, list_runs(site.state_dir))
    assert problem == ""
    return next(r for r in runs if r.id == run_id)


def test_a_leaves_a_gate_b_finishes_it_a_sees_it_succeeded(
    lab: LiveLab, tmp_path: Path, cli
) -> None:
    a, b = console(lab, "a1"), console(lab, "b1")
    rb = runbook(tmp_path)
    code, lines = drive(a, rb, "alice", yes=False)
    assert code == 3, lines
    run_id = run_id_of(lines)

    seen_by_b = shared_view(b, run_id)
    assert seen_by_b.status == "waiting"
    assert seen_by_b.console == console_name(a) and seen_by_b.user == "alice"
    # The CLI lists it too, naming the console and the account.
    code, out, err = cli("--site", b.path, "runs")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(run_id))
    assert "waiting" in row and "alice" in row and console_name(a) in row

    code, lines = drive(b, rb, "bob", yes=True, resume=run_id)
    assert code == 0, lines
    assert any("apply [validator1] finished" in line for line in lines)
    # B replayed A's journal first: "look" ran once, on A.
    records = summarise(b.state_dir / "runs" / run_id).records
    assert sum(1 for r in records if r.get("step") == "look" and r["event"] == "started") == 1

    seen_by_a = shared_view(a, run_id)
    assert seen_by_a.status == "succeeded" and seen_by_a.console == console_name(b)
    code, out, _ = cli("--site", a.path, "runs", "--json")
    mine = next(r for r in map(json.loads, out.splitlines()) if r["id"] == run_id)
    assert mine["status"] == "succeeded" and mine["console"] == console_name(b)


def test_b_cannot_take_over_a_run_a_is_driving(lab: LiveLab, tmp_path: Path, cli) -> None:
    a, b = console(lab, "a2"), console(lab, "b2")
    rb = runbook(tmp_path)
    code, lines = drive(a, rb, "alice", yes=False)
    assert code == 3
    run_id = run_id_of(lines)
    # A re-attaches and drives the run: it holds the lease and renews it.
    store = SharedStore.for_site(a)
    assert store is not None
    lease = Lease(store, run_id, console_name(a), "alice", 60.0)
    lease.acquire()
    lease.keep()
    try:
        with pytest.raises(LeaseHeld) as refused:
            drive(b, rb, "bob", yes=True, resume=run_id)
        assert console_name(a) in str(refused.value) and "alice" in str(refused.value)
        assert "lease expires at" in str(refused.value)
        code, out, err = cli("--site", b.path, "run", rb, "--resume", run_id, "--yes")
        assert code == 2 and "is being driven by alice" in err and out == ""
        assert not (b.state_dir / "runs" / run_id).exists()
        row = shared_view(b, run_id)
        assert row.holder == f"alice@{console_name(a)}"
    finally:
        lease.release()
    # Released: B may take it now.
    code, lines = drive(b, rb, "bob", yes=True, resume=run_id)
    assert code == 0, lines


def test_a_dead_consoles_lease_expires_and_b_takes_over(lab: LiveLab, tmp_path: Path) -> None:
    a, b = console(lab, "a3", lease="1s"), console(lab, "b3", lease="1s")
    rb = runbook(tmp_path)
    code, lines = drive(a, rb, "alice", yes=False)
    assert code == 3
    run_id = run_id_of(lines)
    store = SharedStore.for_site(b)
    assert store is not None
    # A takes the lease and dies holding it: no renewal, no release.
    Lease(store, run_id, console_name(a), "alice", a.lease).acquire()
    # Expiry is the store's call (its Date against the lease's LastModified): wait for it.
    deadline = time.monotonic() + 30
    while not read_lease(store, run_id, b.lease).expired:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.2)
    code, lines = drive(b, rb, "bob", yes=True, resume=run_id)
    assert code == 0, lines
    assert shared_view(a, run_id).status == "succeeded"


def test_two_consoles_racing_for_one_lease_exactly_one_wins(lab: LiveLab) -> None:
    a, b = console(lab, "a4"), console(lab, "b4")
    store_a, store_b = SharedStore.for_site(a), SharedStore.for_site(b)
    assert store_a is not None and store_b is not None
    for i in range(50):
        run_id = f"race-{i:02d}-{time.time_ns()}"
        start = threading.Barrier(2)
        won: list[str] = []
        refused: list[str] = []

        def race(
            store: SharedStore,
            who: str,
            run_id: str = run_id,
            start=start,
            won=won,
            refused=refused,
        ) -> None:
            lease = Lease(store, run_id, who, who, 60.0)
            start.wait()
            try:
                lease.acquire()
            except LeaseHeld:
                refused.append(who)
            else:
                won.append(who)

        threads = [
            threading.Thread(target=race, args=(store_a, "console-a")),
            threading.Thread(target=race, args=(store_b, "console-b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 1, (i, won, refused)
        view = read_lease(store_a, run_id, 60.0)
        assert view is not None and view.holder == won[0]


def test_a_two_person_gate_approved_by_one_account_stays_waiting(
    lab: LiveLab, tmp_path: Path
) -> None:
    a, b = console(lab, "a5"), console(lab, "b5")
    rb = runbook(tmp_path, approvers=2)
    code, lines = drive(a, rb, "alice", yes=True)
    assert code == 3, lines
    run_id = run_id_of(lines)
    summary = summarise(a.state_dir / "runs" / run_id)
    assert summary.status == "waiting"
    assert summary.instances[("apply", None)].approved_by == ["alice"]
    assert any(
        "approved by alice; needs 1 more approval from a different account" in line
        for line in lines
    )

    # The same account again (same console): still waiting, nothing counted twice.
    code, lines = drive(a, rb, "alice", yes=True, resume=run_id)
    assert code == 3
    assert any("alice approved it already" in line for line in lines)
    summary = summarise(a.state_dir / "runs" / run_id)
    assert summary.instances[("apply", None)].approved_by == ["alice"]
    assert (
        not summary.instances.get(("apply", "validator1"))
        or summary.instances[("apply", "validator1")].last == ""
    )

    # A second account, on another console: the gate opens and the step runs.
    code, lines = drive(b, rb, "bob", yes=True, resume=run_id)
    assert code == 0, lines
    summary = summarise(b.state_dir / "runs" / run_id)
    assert summary.instances[("apply", None)].approved_by == ["alice", "bob"]
    assert summary.instances[("apply", "validator1")].last == "finished"


def test_resume_of_an_unknown_run_names_the_store(lab: LiveLab) -> None:
    b = console(lab, "b6")
    with pytest.raises(UsageError, match="no run 20200101-000000-dead"):
        drive(b, Path("shared-demo"), "bob", yes=True, resume="20200101-000000-dead")


def test_a_console_that_lost_the_store_works_locally_and_catches_up(
    lab: LiveLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = console(lab, "a7"), console(lab, "b7")
    rb = runbook(tmp_path)
    lab.fault("set", "s3=down")
    try:
        code, lines = drive(a, rb, "alice", yes=True)
        assert code == 0, lines
        run_id = run_id_of(lines)
        assert "not yet in the shared store (unreachable)" in capsys.readouterr().err
        runs, problem = merged_runs(b, list_runs(b.state_dir))
        assert problem and run_id not in {r.id for r in runs}
    finally:
        lab.fault("clear", "s3=down")
    # The store is back: A's next listing sends what it missed (an operator's listing: an
    # auditor's writes nothing); B then sees the run.
    runs, problem = merged_runs(a, list_runs(a.state_dir), "carol")
    assert problem == "" and run_id not in {r.id for r in shared_runs(a)}
    runs, problem = merged_runs(a, list_runs(a.state_dir), "alice")
    assert problem == "" and run_id in {r.id for r in shared_runs(a)}
    seen = shared_view(b, run_id)
    assert seen.status == "succeeded" and seen.console == console_name(a)
    assert len(seen.records) == len(summarise(a.state_dir / "runs" / run_id).records)


def test_a_console_cut_off_from_the_store_gives_its_lease_up(lab: LiveLab) -> None:
    """Renewals failing for a whole lease: the holder says it lost the run (a headless run
    then stops, resumable), before or as the store would let another console take it."""
    a = console(lab, "a8", lease="1s")
    store = SharedStore.for_site(a)
    assert store is not None
    lease = Lease(store, f"cut-off-{time.time_ns()}", console_name(a), "alice", a.lease)
    lease.acquire()
    lost = threading.Event()
    lease.on_lost = lambda _why: lost.set()
    lab.fault("set", "s3=down")
    try:
        lease.keep()
        assert lost.wait(60), "the lease was never given up"
        assert "could not be renewed for 1s" in lease.lost
    finally:
        lab.fault("clear", "s3=down")
        lease.release()
