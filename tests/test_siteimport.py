"""`kconsole site import`: the plan's primary.conf becomes a site file that loads, with the
plan's fleet and tiers, its locations and retention, and never its webhook secret; and
the key-rotation period it names is tracked by `kconsole schedule`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kconsole.backups.prune import retention_for
from kconsole.site import load_site

PLAN_CONF = """\
# /etc/backup/primary.conf
[backup]
primary_location = /backup/primary
secondary_location = backup-dr:/backup/secondary
tertiary_location = s3://kaldrix-backups/

[encryption]
algorithm = aes-256-cbc
key_length = 256
key_rotation_days = 90

[retention]
blockchain_state_hours = 24
validator_keys_days = 90
transaction_logs_days = 30
system_logs_days = 7

[monitoring]
metrics_enabled = true
metrics_port = 9091
alert_enabled = true
alert_webhook = https://hooks.slack.com/services/T000/B000/SECRETSECRET
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "primary.conf"
    p.write_text(PLAN_CONF)
    return p


def test_the_plans_config_imports_to_a_site_that_loads(cli, conf: Path, tmp_path: Path) -> None:
    out = tmp_path / "site.toml"
    code, stdout, stderr = cli("site", "import", conf, "-o", out)
    assert code == 0, stderr
    site = load_site(out)
    assert list(site.nodes) == [
        "bootstrap1",
        "bootstrap2",
        "bootstrap3",
        "validator1",
        "validator2",
        "validator3",
        "api1",
        "api2",
        "api3",
    ]
    assert site.nodes["validator2"].groups == ("validator",)
    primary, dr, cloud = (site.locations[n] for n in ("primary", "dr", "cloud"))
    assert (primary.type, primary.path) == ("local", "/backup/primary")
    assert (dr.type, dr.host, dr.path) == ("sftp", "backup-dr", "/backup/secondary")
    assert (cloud.type, cloud.bucket, cloud.prefix) == ("s3", "kaldrix-backups", "")
    assert site.key_rotate_after == 90 * 86400
    assert site.tiers["critical"].rpo == 15 * 60
    assert retention_for(site, "blockchain-state").seconds == 24 * 3600
    assert retention_for(site, "validator-keys").seconds == 90 * 86400
    assert retention_for(site, "system-logs").seconds == 7 * 86400
    assert [c.role for c in site.contacts][:2] == ["Backup Administrator", "Backup Engineer"]
    assert set(site.escalation) == {"backup", "recovery", "security"}
    # The webhook URL is a secret: not in the file, not printed, and the note names the variable.
    for text in (out.read_text(), stdout, stderr):
        assert "SECRETSECRET" not in text and "hooks.slack.com" not in text
    assert "KCONSOLE_SLACK_WEBHOOK" in stderr
    assert "9091" in stderr and "textfile" in stderr


def test_import_to_stdout_and_changed_retention(cli, tmp_path: Path) -> None:
    conf = tmp_path / "primary.conf"
    conf.write_text(
        PLAN_CONF.replace("system_logs_days = 7", "system_logs_days = 14").replace(
            "s3://kaldrix-backups/", "s3://kaldrix-backups/prod/"
        )
    )
    code, stdout, stderr = cli("site", "import", conf)
    assert code == 0, stderr
    site_file = tmp_path / "from-stdout.toml"
    site_file.write_text(stdout)
    site = load_site(site_file)
    assert retention_for(site, "system-logs").seconds == 14 * 86400
    assert site.locations["cloud"].prefix == "prod/"


def test_an_existing_site_file_is_not_replaced_without_force(
    cli, conf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site.toml"
    out.write_text("# mine\n")
    code, _, stderr = cli("site", "import", conf, "-o", out)
    assert code == 2 and "already exists" in stderr and "--force" in stderr
    assert out.read_text() == "# mine\n"
    code, _, stderr = cli("site", "import", conf, "-o", out, "--force")
    assert code == 0, stderr
    assert "[[nodes]]" in out.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.toml")]  # no temp left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("primary_location = /x\n", "primary.conf:1: a setting before any [section] header"),
        (
            "[backup]\nprimary_location = /x\n  [broken\nthis is not ini\n",
            "primary.conf:4: cannot parse",
        ),
        ("[backup]\nprimary_location = /a\nprimary_location = /b\n", "primary.conf:3:"),
        ("[other]\nx = 1\n", "none of the plan's sections"),
        (
            "[backup]\nsecondary_location = /backup/secondary\n",
            "secondary_location must be HOST:/PATH",
        ),
        (
            "[backup]\nsecondary_location = ftp://dr/backup\n",
            "secondary_location must be HOST:/PATH",
        ),
        ("[backup]\nsecondary_location = https://x/y\n", "secondary_location must be HOST:/PATH"),
        ("[backup]\ntertiary_location = https://bucket\n", "tertiary_location must be s3://BUCKET"),
        ("[backup]\nprimary_location = backup/primary\n", "must be an absolute path"),
        (
            "[retention]\nsystem_logs_days = a week\n",
            "system_logs_days must be a positive whole number",
        ),
        ("[monitoring]\nalert_enabled = maybe\n", "alert_enabled must be true or false"),
        ("", "none of the plan's sections"),
        ("\udcff", "not a UTF-8 text file"),
    ],
)
def test_bad_config_is_one_sentence_and_exit_2(
    cli, tmp_path: Path, text: str, message: str
) -> None:
    conf = tmp_path / "primary.conf"
    conf.write_bytes(text.encode("utf-8", "surrogateescape"))
    out = tmp_path / "site.toml"
    code, stdout, stderr = cli("site", "import", conf, "-o", out)
    assert code == 2, stderr
    assert message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists() and stdout == ""


def test_a_missing_config_file(cli, tmp_path: Path) -> None:
    code, _, stderr = cli("site", "import", tmp_path / "nope.conf")
    assert code == 2 and "does not exist" in stderr


def test_unknown_settings_are_named_not_imported(cli, tmp_path: Path) -> None:
    conf = tmp_path / "primary.conf"
    conf.write_text(
        PLAN_CONF.replace("key_length = 256", "key_length = 256\ncompression = zstd")
        + "\n[extra]\nfoo = 1\n"
    )
    code, _, stderr = cli("site", "import", conf)
    assert code == 0, stderr
    assert "[encryption] compression is not a setting kconsole knows" in stderr
    assert "[extra] is not one of the plan's sections" in stderr


KEYED_SITE = """
[site]
name = "keyed"
state_dir = "state"

[[nodes]]
name = "validator1"
host = "127.0.0.1"
groups = ["validator"]

[keys]
dir = "keys"
rotate_after = "90d"
"""


def test_schedule_says_when_the_key_is_due_for_rotation(cli, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(KEYED_SITE)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    code, _, stderr = cli("crypto", "keygen", "-o", keys / "k1.key")
    assert code == 0, stderr
    code, out, stderr = cli("--site", site, "schedule")
    assert code == 0, stderr
    assert (
        "key rotation: current key" in out
        and "0 days old" in out
        and "OVERDUE" not in out.split("key rotation")[1]
    )

    old = time.time() - 100 * 86400
    os.utime(keys / "k1.key", (old, old))
    code, out, _ = cli("--site", site, "schedule")
    assert "is 100 days old, rotate every 90 days: OVERDUE" in out
    assert "key rotation" in out.splitlines()[-1]  # counted with the overdue runbooks
    code, out, _ = cli("--site", site, "schedule", "--json")
    rotation = [
        json.loads(line)["key_rotation"] for line in out.splitlines() if "key_rotation" in line
    ]
    assert (
        rotation and rotation[0]["overdue"] is True and rotation[0]["rotate_after_s"] == 90 * 86400
    )


def test_metrics_carry_the_key_age_for_the_rotation_alert(cli, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(KEYED_SITE)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    assert cli("crypto", "keygen", "-o", keys / "k1.key")[0] == 0
    old = time.time() - 100 * 86400
    os.utime(keys / "k1.key", (old, old))
    code, out, err = cli("--site", site, "metrics")
    assert code == 0, err
    age = [
        line for line in out.splitlines() if line.startswith("backup_encryption_key_age_seconds{")
    ]
    assert len(age) == 1 and 'site="keyed"' in age[0]
    assert abs(float(age[0].rsplit(" ", 1)[1]) - 100 * 86400) < 120
    assert 'backup_encryption_key_rotate_after_seconds{site="keyed"} 7.776e+06' in out
