"""Trust boundary: identity and roles. Who acts is the OS account, never what the
environment claims; every mutating path meets the engine's role check; every refusal is
an audit entry naming who, what and why."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from kconsole.site import current_user, load_site
from tests.tui_support import make_console, settle

OS_ACCOUNT = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def spoofed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker's environment: every variable getpass would believe says admin."""
    for var in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, "admin")


def _audited_site(site_path: Path, **roles: str) -> Path:
    """The site with a key directory and an [access] table of `role = user` pairs."""
    keys = site_path.parent / "keys"
    keys.mkdir(exist_ok=True)
    access = "\n".join(f'{role} = ["{user}"]' for role, user in roles.items())
    text = site_path.read_text() + f'\n[keys]\ndir = "keys"\n\n[access]\n{access}\n'
    site_path.write_text(text)
    return site_path


def _refusals(cli, site: Path) -> list[dict[str, object]]:
    code, out, _ = cli("--site", site, "audit", "show", "--json")
    assert code == 0
    return [e for e in map(json.loads, out.splitlines()) if e["action"] == "access-denied"]


def test_identity_is_the_os_account_not_the_environment(spoofed_env: None) -> None:
    assert current_user() == OS_ACCOUNT
    assert OS_ACCOUNT != "admin"  # else the spoof below would prove nothing


def test_a_spoofed_user_cannot_write_a_key_into_the_site_key_dir(
    cli, site_path: Path, spoofed_env: None
) -> None:
    site = _audited_site(site_path, admin="admin", auditor=OS_ACCOUNT)
    target = site.parent / "keys" / "evil.key"
    code, _, err = cli("--site", site, "crypto", "keygen", "-o", target)
    assert code == 2
    assert err.strip() == (
        f"kconsole: {OS_ACCOUNT} is not a backup admin and may not "
        "write into the site's key directory."
    )
    assert not target.exists()
    (refusal,) = _refusals(cli, site)
    assert refusal["actor"] == OS_ACCOUNT
    assert refusal["target"] == "write into the site's key directory"
    assert refusal["result"] == "refused"
    assert refusal["detail"] == {"role": "auditor", "reason": err.strip()[len("kconsole: ") :]}
    assert cli("--site", site, "audit", "verify")[0] == 0


def test_a_key_outside_the_key_dir_is_just_a_file(cli, site_path: Path, spoofed_env: None) -> None:
    site = _audited_site(site_path, auditor=OS_ACCOUNT)
    code, out, _ = cli("--site", site, "crypto", "keygen", "-o", site.parent / "mine.key")
    assert code == 0 and "wrote new key" in out
    assert _refusals(cli, site) == []


def test_an_admin_keygen_into_the_key_dir_is_audited(cli, site_path: Path) -> None:
    site = _audited_site(site_path, admin=OS_ACCOUNT)
    code, _, _ = cli("--site", site, "crypto", "keygen", "-o", site.parent / "keys" / "k2.key")
    assert code == 0
    _, out, _ = cli("--site", site, "audit", "show", "--json")
    (entry,) = [json.loads(x) for x in out.splitlines()]
    assert entry["action"] == "crypto-keygen" and entry["actor"] == OS_ACCOUNT


def test_an_auditor_run_is_refused_and_audited(
    cli, site_path: Path, write_runbook, spoofed_env: None
) -> None:
    site = _audited_site(site_path, admin="admin", auditor=OS_ACCOUNT)
    rb = write_runbook(
        '[runbook]\nid = "f"\ntitle = "F"\nrto = "1m"\n\n[[steps]]\nid = "x"\naction = "shell"\n'
        'command = "true"\n'
    )
    code, _, err = cli("--site", site, "run", rb, "--yes")
    assert code == 2 and "is an auditor" in err
    (refusal,) = _refusals(cli, site)
    assert refusal["actor"] == OS_ACCOUNT and refusal["target"] == "run runbooks"


def test_an_operator_cannot_run_a_runbook_that_makes_keys(
    cli, site_path: Path, write_runbook, spoofed_env: None
) -> None:
    """Refused before the first step (not halfway through an incident), and audited."""
    site = _audited_site(site_path, admin="admin", operator=OS_ACCOUNT)
    rb = write_runbook(
        '[runbook]\nid = "k"\ntitle = "K"\nrto = "1m"\n\n'
        '[[steps]]\nid = "first"\naction = "shell"\ncommand = "touch touched"\n\n'
        '[[steps]]\nid = "newkey"\naction = "crypto.keygen"\nneeds = ["first"]\n'
    )
    code, _, err = cli("--site", site, "run", rb, "--yes")
    assert code == 2
    assert "may not run k, whose step newkey would write a key" in err
    assert not (site.parent / "touched").exists()
    assert not list((site.parent / "keys").iterdir())
    (refusal,) = _refusals(cli, site)
    assert refusal["actor"] == OS_ACCOUNT


def test_refusals_are_recorded_with_the_site_loaded_access(site_path: Path) -> None:
    site = load_site(_audited_site(site_path, auditor=OS_ACCOUNT))
    with pytest.raises(Exception, match="auditors can look, not change"):
        site.access.require_operate(OS_ACCOUNT, "prune backups")
    from kconsole.audit import AuditLog

    (entry,) = AuditLog(site.state_dir).read()
    assert (entry["actor"], entry["action"], entry["target"]) == (
        OS_ACCOUNT,
        "access-denied",
        "prune backups",
    )


async def test_an_auditor_in_the_console_is_refused_through_the_engine(tmp_path: Path) -> None:
    console = make_console(tmp_path, down=["validator2"], user="audrey")
    app = console.app
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot)
        await pilot.press("r", "enter", "enter", "enter")
        await pilot.pause()
        assert not app.run_active
        assert not app.reattach_run("20261126-031400-0001")
    from kconsole.audit import AuditLog

    refused = [e for e in AuditLog(app.site.state_dir).read() if e["action"] == "access-denied"]
    assert refused and all(e["actor"] == "audrey" for e in refused)
    assert {e["target"] for e in refused} >= {"run runbooks", "resume runs"}


def test_an_auditor_cannot_plant_a_key_by_decrypting_into_the_key_dir(
    cli, site_path: Path, tmp_path: Path, spoofed_env: None
) -> None:
    """A decrypted file of 64 hex characters is a key file: decrypt -o KEYS_DIR/x.key is a
    way to plant one, refused like keygen."""
    site = _audited_site(site_path, admin="admin", auditor=OS_ACCOUNT)
    key = tmp_path / "own.key"
    assert cli("crypto", "keygen", "-o", key)[0] == 0
    plain = tmp_path / "plain.txt"
    plain.write_text("ab" * 32 + "\n")
    assert cli("crypto", "encrypt", "--key", key, plain, "-o", tmp_path / "p.kdx")[0] == 0
    target = site.parent / "keys" / "planted.key"
    for args in (
        ("crypto", "decrypt", "--key", key, tmp_path / "p.kdx", "-o", target),
        ("crypto", "encrypt", "--key", key, plain, "-o", target),
    ):
        code, _, err = cli("--site", site, *args)
        assert code == 2 and "may not write into the site's key directory" in err
        assert not target.exists()
    assert len(_refusals(cli, site)) == 2
