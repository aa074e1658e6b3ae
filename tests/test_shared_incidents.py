"""Incidents shared between two consoles (two state_dirs) through the lab's S3 location:
one opens, the other lists and acknowledges it; two consoles ticking page each level once;
a console that lost the store keeps working and catches up."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from kconsole.incidents import IncidentDesk
from kconsole.incidents.sharing import IncidentMirror
from kconsole.services import Clock
from kconsole.shared import SharedStore, console_name
from kconsole.site import Access, Site, load_site
from tests.lablive import LiveLab, live_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("lab"), nodes=1) as running:
        yield running


@pytest.fixture(autouse=True)
def lab_env(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)


class PinnedClock(Clock):
    """Wall time that moves only when the test says (escalation waits are minutes)."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t


def console(lab: LiveLab, name: str) -> Site:
    """A site file on the same lab with its own state_dir: another console."""
    text = lab.site.read_text().replace('state_dir = "state"', f'state_dir = "state-{name}"')
    path = lab.dir / f"site-{name}.toml"
    path.write_text(text)
    site = load_site(path)
    return dataclasses.replace(
        site, access=Access(admin=("alice", "bob"), auditor=("carol",), configured=True)
    )


def desk(site: Site, user: str, clock: Clock | None = None) -> IncidentDesk:
    d = IncidentDesk(site, clock, user)
    assert d.store.mirror is not None  # the lab's site.toml sets [site] shared
    return d


def test_a_opens_b_lists_and_acknowledges_a_sees_it(lab: LiveLab, cli) -> None:
    a, b = console(lab, "a1"), console(lab, "b1")
    da = desk(a, "alice")
    inc = da.open("recovery", "critical", "validator1 is not answering", nodes=["bootstrap1"])
    assert da.close_shared() == ""  # what every CLI command does before it exits

    db = desk(b, "bob")
    assert db.pull_shared() == ""
    seen = db.get(inc.id)
    assert seen.opened_by == "alice" and seen.opened_on == console_name(a) and seen.level == 1
    code, out, err = cli("--site", b.path, "incident", "list")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(inc.id))
    assert "alice" in row and console_name(a) in row and "L1" in row
    code, out, err = cli("--site", b.path, "incident", "list", "--json")
    row_json = next(r for r in map(json.loads, out.splitlines()) if r["id"] == inc.id)
    assert row_json["console"] == console_name(a) and row_json["opened_by"] == "alice"

    acked = db.acknowledge(inc.id)
    assert acked.acknowledged_by == "bob" and acked.status == "acknowledged"
    assert db.close_shared() == ""

    assert da.pull_shared() == ""
    back = da.get(inc.id)
    assert back.acknowledged_by == "bob" and back.status == "acknowledged"
    assert da.next_page_at(back) is None  # A's escalation clock stopped too
    assert any(
        t["event"] == "acknowledged" and t["console"] == console_name(b) for t in back.timeline
    )
    # A's own log holds only A's events: the local log stays this console's truth.
    own = (a.state_dir / "incidents" / inc.id / "events.jsonl").read_text().splitlines()
    assert all(json.loads(line)["console"] == console_name(a) for line in own)
    code, out, err = cli("--site", a.path, "incident", "show", inc.id)
    assert code == 0, err
    assert "ack bob" in out.splitlines()[0]
    assert any("acknowledged" in line and console_name(b) in line for line in out.splitlines())


def test_two_consoles_ticking_page_each_level_once(lab: LiveLab) -> None:
    a, b = console(lab, "a2"), console(lab, "b2")
    clock = PinnedClock(datetime(2026, 12, 3, 19, 0, tzinfo=UTC))
    da, db = desk(a, "alice", clock), desk(b, "bob", clock)
    inc = da.open("recovery", "critical", "both validators lost", nodes=["bootstrap1"])
    assert da.close_shared() == ""
    assert db.pull_shared() == ""
    assert db.get(inc.id).level == 1

    pages: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def tick(name: str, d: IncidentDesk) -> None:
        start.wait()
        got, _deliveries = asyncio.run(d.tick())
        pages[name] += [p.level for p in got if p.incident == inc.id]

    for minutes in (6, 25, 60):  # past L1's 5m, L2's 15m, L3's 30m (the recovery matrix)
        clock.t = datetime(2026, 12, 3, 19, 0, tzinfo=UTC) + timedelta(minutes=minutes)
        start.reset()
        threads = [
            threading.Thread(target=tick, args=("a", da)),
            threading.Thread(target=tick, args=("b", db)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Each console's `paged` event reaches the store before the next round's pull.
        assert da.close_shared() == "" and db.close_shared() == ""

    assert sorted(pages["a"] + pages["b"]) == [2, 3, 4]
    for d in (da, db):
        assert d.pull_shared() == ""
        paged = [t for t in d.get(inc.id).timeline if t["event"] == "paged"]
        assert sorted(int(t["text"].split()[1]) for t in paged) == [1, 2, 3, 4]
    store = SharedStore.for_site(a)
    assert store is not None
    assert sorted(store.names(f"pages/{inc.id}")) == ["L2", "L3", "L4"]


def test_escalating_from_another_console_claims_the_level_in_the_store(lab: LiveLab) -> None:
    a, b = console(lab, "a3"), console(lab, "b3")
    da = desk(a, "alice")
    inc = da.open("backup", "high", "nightly snapshot missing")
    assert da.close_shared() == ""
    db = desk(b, "bob")
    assert db.pull_shared() == ""
    assert db.escalate(inc.id, "no answer from the backup administrator").level == 2
    assert db.close_shared() == ""
    # A console that has not seen B's escalation yet cannot page level 2 again.
    assert da.store.claim_page(inc.id, 2) is False
    assert da.pull_shared() == "" and da.get(inc.id).level == 2

    # A escalates to level 3; B, which has not read that yet, escalates too: the store
    # refuses B's claim, so level 3 is paged once and B reads A's page instead.
    assert da.escalate(inc.id).level == 3
    assert da.close_shared() == ""
    assert db.escalate(inc.id).level == 3
    assert db.close_shared() == ""
    assert da.pull_shared() == ""
    paged = [t for t in da.get(inc.id).timeline if t["event"] == "paged"]
    assert [t["text"].split()[1] for t in paged] == ["1", "2", "3"]


def test_a_console_that_lost_the_store_works_locally_and_catches_up(lab: LiveLab) -> None:
    a, b = console(lab, "a4"), console(lab, "b4")
    da = desk(a, "alice")
    lab.fault("set", "s3=down")
    try:
        inc = da.open("security", "critical", "unexpected key on validator1")
        da.note(inc.id, "rotating the key")
        assert da.get(inc.id).timeline[-1]["text"] == "rotating the key"  # local: unaffected
        problem = da.close_shared(timeout=5)
        assert "not yet in the shared store" in problem
        db = desk(b, "bob")
        assert "Showing this console's incidents as last read" in db.pull_shared()
        assert inc.id not in {i.id for i in db.incidents()}
    finally:
        lab.fault("clear", "s3=down")
    # An auditor's read writes nothing; an operator's read on A sends what the store missed.
    assert desk(a, "carol").pull_shared() == ""
    assert desk(b, "bob").pull_shared() == ""
    assert inc.id not in {i.id for i in desk(b, "bob").incidents()}
    assert desk(a, "alice").pull_shared() == ""
    db = desk(b, "bob")
    assert db.pull_shared() == ""
    seen = db.get(inc.id)
    assert seen.opened_on == console_name(a)
    assert [t["event"] for t in seen.timeline] == [
        t["event"] for t in desk(a, "alice").get(inc.id).timeline
    ]


def test_sending_is_off_the_operators_path(lab: LiveLab) -> None:
    """A change returns once the local log has it; the store gets it from the background
    sender (measured: the time an append takes against the time the batch takes)."""
    a = console(lab, "a5")
    da = desk(a, "alice")
    inc = da.open("backup", "low", "measuring")
    assert da.close_shared() == ""
    mirror = da.store.mirror
    assert isinstance(mirror, IncidentMirror)
    t0 = time.monotonic()
    da.note(inc.id, "one")
    appended = time.monotonic() - t0
    t1 = time.monotonic()
    assert da.close_shared() == ""
    sent = time.monotonic() - t1
    print(f"note appended in {appended * 1000:.1f} ms; sent to the store in {sent * 1000:.1f} ms")
    store = SharedStore.for_site(a)
    assert store is not None
    view = store.read_stream(f"incidents/{inc.id}/{mirror.key}")
    assert [r["event"] for r in view.records][-1] == "note"
