"""Point-in-time backup selection: `before:TIME` picks, per node, the newest good backup
made before the time (the security scenario restores from before the compromise), and a
bad time is refused before anything runs."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kconsole.backups.catalog import build_catalog
from kconsole.backups.selector import (
    BackupSelector,
    canonical_time,
    parse_selector,
    parse_time,
    pick,
)
from kconsole.backups.stores import open_stores
from tests.catalogkit import make_site, plant_sync

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("2026-11-26T02:40Z", datetime(2026, 11, 26, 2, 40, tzinfo=UTC)),
        ("2026-11-26T02:40:15z", datetime(2026, 11, 26, 2, 40, 15, tzinfo=UTC)),
        ("2026-11-26 02:40", datetime(2026, 11, 26, 2, 40, tzinfo=UTC)),
        ("2026-11-26T04:40+02:00", datetime(2026, 11, 26, 2, 40, tzinfo=UTC)),
        ("2026-11-26", datetime(2026, 11, 26, tzinfo=UTC)),
        ("now", None),
        (" NOW ", None),
    ],
)
def test_times_are_read_as_utc(text: str, expect: datetime | None) -> None:
    assert parse_time(text) == expect


@pytest.mark.parametrize("text", ["yesterday", "26/11/2026", "2026-13-01", ""])
def test_a_bad_time_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text)


def test_selectors() -> None:
    assert parse_selector("latest") == parse_selector("") == BackupSelector()
    assert parse_selector("before:now") == BackupSelector()
    assert parse_selector("before:2026-11-26T02:40Z").before == datetime(
        2026, 11, 26, 2, 40, tzinfo=UTC
    )
    assert parse_selector("validator1_blockchain-state_20261126T024000Z").backup_id.startswith(
        "validator1_"
    )
    assert canonical_time("2026-11-26T04:40+02:00") == "2026-11-26T02:40:00Z"
    assert (
        parse_selector("before:2026-11-26T02:40Z").describe() == "made before 2026-11-26 02:40:00Z"
    )


def test_pick_the_newest_good_backup_before_a_time(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    stores = open_stores(site, None)
    made = [
        plant_sync(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=h))
        for h in (3, 2, 1)
    ]
    catalog = asyncio.run(build_catalog(site, stores, now=NOW))
    ids = [m.id for m in made]

    def chosen(selector: str) -> str | None:
        found = pick(catalog, parse_selector(selector), "blockchain-state", "validator1")
        return found.id if found else None

    assert chosen("latest") == ids[2]
    assert chosen(f"before:{canonical_time((NOW - timedelta(minutes=90)).isoformat())}") == ids[1]
    # strictly before: a backup made at exactly the time of compromise is not trusted
    assert chosen(f"before:{(NOW - timedelta(hours=2)).isoformat()}") == ids[0]
    assert chosen(f"before:{(NOW - timedelta(hours=5)).isoformat()}") is None


def test_latest_in_a_location_is_the_newest_with_a_copy_there(tmp_path: Path) -> None:
    """Restoring from one location (the primary site is gone): `latest` is the newest good
    backup that has a copy in it, not the newest anywhere."""
    site = make_site(tmp_path)
    stores = open_stores(site, None)
    both = plant_sync(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=2))
    primary_only = plant_sync(
        site, {"primary": stores["primary"]}, "validator1", "blockchain-state", NOW
    )
    catalog = asyncio.run(build_catalog(site, stores, now=NOW))
    latest = parse_selector("latest")
    assert pick(catalog, latest, "blockchain-state", "validator1").id == primary_only.id
    found = pick(catalog, latest, "blockchain-state", "validator1", "dr")
    assert found is not None and found.id == both.id


RUNBOOK = """
[runbook]
id = "check-before"
title = "Verify the backup a restore would use"
rto = "10m"

[params.known_good_before]
type = "time"
default = "now"
help = "time of compromise"

[[steps]]
id = "verify"
action = "backup.verify"
node = "validator1"
kind = "blockchain-state"
backup = "before:{known_good_before}"
"""


def test_a_runbook_verifies_the_backup_made_before_the_compromise(cli, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    stores = open_stores(site, None)
    old, new = (
        plant_sync(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=h))
        for h in (2, 1)
    )
    rb = tmp_path / "check.toml"
    rb.write_text(RUNBOOK)
    compromised = canonical_time((NOW - timedelta(minutes=90)).isoformat())
    code, out, err = cli(
        "--site", site.path, "run", rb, "--param", f"known_good_before={compromised}"
    )
    assert code == 0, out + err
    assert f"{old.id}: ok" in out and new.id not in out
    code, out, err = cli("--site", site.path, "run", rb)  # now: the newest
    assert code == 0, out + err
    assert f"{new.id}: ok" in out
    early = canonical_time((NOW - timedelta(hours=6)).isoformat())
    code, out, err = cli("--site", site.path, "run", rb, "--param", f"known_good_before={early}")
    assert code == 1
    assert "no blockchain-state backup of validator1 made before" in out + err


def test_a_bad_time_param_stops_before_anything_runs(cli, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    rb = tmp_path / "check.toml"
    rb.write_text(RUNBOOK)
    code, out, err = cli(
        "--site", site.path, "run", rb, "--param", "known_good_before=last tuesday"
    )
    assert code == 2
    assert err.strip().startswith("kconsole: parameter known_good_before:") and "ISO 8601" in err
    assert not (tmp_path / "state" / "runs").exists() or not any(
        (tmp_path / "state" / "runs").iterdir()
    )
    code, out, err = cli(
        "--site",
        site.path,
        "run",
        "recover-security-incident",
        "--param",
        "ops_network=10.0.0.0/8",
        "--param",
        "known_good_before=2026-02-30T00:00Z",
    )
    assert code == 2 and "known_good_before" in err


def test_a_bad_time_default_is_a_validation_problem(cli, tmp_path: Path) -> None:
    rb = tmp_path / "bad.toml"
    rb.write_text(textwrap.dedent(RUNBOOK).replace('default = "now"', 'default = "soon"'))
    code, _, err = cli("validate", rb)
    assert code == 2
    assert f"{rb}:9:" in err and "ISO 8601" in err


def test_a_backup_id_that_is_not_in_the_catalog_stops_before_anything_runs(
    cli, tmp_path: Path
) -> None:
    site = make_site(tmp_path)
    stores = open_stores(site, None)
    made = plant_sync(site, stores, "validator1", "blockchain-state", NOW - timedelta(hours=1))
    rb = tmp_path / "named.toml"
    rb.write_text(
        RUNBOOK.replace(
            '[params.known_good_before]\ntype = "time"\ndefault = "now"\nhelp = "time of compromise"',
            '[params.backup]\ntype = "backup"\ndefault = "latest"',
        ).replace('backup = "before:{known_good_before}"', 'backup = "{backup}"')
    )
    typo = made.id[:-1] + "Q"  # one character off, never the id itself
    code, out, err = cli("--site", site.path, "run", rb, "--param", f"backup={typo}")
    assert code == 2, out + err
    assert "parameter backup: no backup" in err and made.id in err  # the suggestion
    assert not (tmp_path / "state" / "runs").exists() or not any(
        (tmp_path / "state" / "runs").iterdir()
    )
    code, out, err = cli("--site", site.path, "run", rb, "--param", f"backup={made.id}")
    assert code == 0, out + err


def test_the_console_refuses_a_backup_id_that_is_not_in_the_catalog(tmp_path: Path) -> None:
    from kconsole.errors import UsageError
    from kconsole.gates import confirm_yes
    from kconsole.runbook import load_runbook
    from kconsole.services import Services
    from screens.run_session import RunSession

    site = make_site(tmp_path)
    made = plant_sync(site, open_stores(site, None), "validator1", "blockchain-state", NOW)
    rb = tmp_path / "named.toml"
    rb.write_text(
        RUNBOOK.replace(
            '[params.known_good_before]\ntype = "time"\ndefault = "now"\nhelp = "time of compromise"',
            '[params.backup]\ntype = "backup"\ndefault = "latest"',
        ).replace('backup = "before:{known_good_before}"', 'backup = "{backup}"')
    )
    with pytest.raises(UsageError, match="parameter backup: no backup"):
        RunSession.start(
            site,
            load_runbook(rb),
            {"backup": made.id + "x"},
            run_id="20261126-031400-0001",
            services=Services(),
            user="alice",
            drill=False,
            confirm=confirm_yes,
            on_event=lambda _record: None,
        )
    assert not (tmp_path / "state" / "runs").exists() or not any(
        (tmp_path / "state" / "runs").iterdir()
    )
