"""The CLI contract: exit codes, one-sentence errors, JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kconsole import __version__


def test_version(cli) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kconsole", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_bad_usage_is_exit_2_one_sentence(cli) -> None:
    code, _, err = cli("run")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_missing_site_file(cli, tmp_path: Path) -> None:
    code, _, err = cli("--site", tmp_path / "nope.toml", "runs")
    assert code == 2
    assert "site file" in err and "not found" in err


def test_broken_site_toml_is_located(cli, tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text('[site]\nname = "x\n')
    code, _, err = cli("--site", bad, "runs")
    assert code == 2
    assert f"{bad}:2:" in err


def test_unknown_runbook_suggests(cli, site_path: Path) -> None:
    code, _, err = cli("--site", site_path, "run", "recover-single-nod")
    assert code == 2
    assert 'no runbook "recover-single-nod"' in err


def test_run_json_events_and_runs_listing(cli, site_path: Path, write_runbook) -> None:
    rb = write_runbook(
        """
        [runbook]
        id = "hello"
        title = "Hello"
        rto = "1m"

        [[steps]]
        id = "say"
        action = "shell"
        command = "echo hi"
    """.replace("        ", "")
    )
    code, out, err = cli("--site", site_path, "run", rb, "--json", "--drill")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["started", "output", "finished"]
    for e in events:
        assert {"run", "step", "node", "event", "time"} <= set(e)
    code, out, _ = cli("--site", site_path, "runs", "--json")
    run = json.loads(out.splitlines()[0])
    assert run["status"] == "succeeded" and run["drill"] is True and run["runbook"] == "hello"


def test_failed_step_is_exit_1(cli, site_path: Path, write_runbook) -> None:
    rb = write_runbook(
        '[runbook]\nid = "f"\ntitle = "F"\nrto = "1m"\n\n[[steps]]\nid = "x"\naction = "shell"\n'
        'command = "echo boom >&2; exit 4"\n'
    )
    code, out, _ = cli("--site", site_path, "run", rb)
    assert code == 1
    assert "exit code 4, expected 0: boom" in out


def test_auditor_cannot_run(cli, tmp_path: Path, site_path: Path, write_runbook) -> None:
    from kconsole.site import current_user

    site = tmp_path / "audited.toml"
    site.write_text(site_path.read_text() + f'\n[access]\nauditor = ["{current_user()}"]\n')
    rb = write_runbook(
        '[runbook]\nid = "f"\ntitle = "F"\nrto = "1m"\n\n[[steps]]\nid = "x"\naction = "shell"\n'
        'command = "true"\n'
    )
    code, _, err = cli("--site", site, "run", rb, "--yes")
    assert code == 2
    assert "is an auditor" in err
    assert not (tmp_path / "state" / "runs").exists()
    code, _, _ = cli("--site", site, "runs")
    assert code == 0


def test_contacts(cli, site_path: Path) -> None:
    code, out, _ = cli("--site", site_path, "contacts")
    assert code == 0
    assert "Jane Doe" in out and "L2 Operations Lead" in out
    code, out, _ = cli("--site", site_path, "contacts", "--json")
    assert json.loads(out.splitlines()[0])["name"] == "Jane Doe"


def test_crypto_decrypt_legacy_with_iter(cli, tmp_path: Path) -> None:
    """`--iter N` decrypts files made with `openssl enc -pbkdf2 -iter N`."""
    import os
    import shutil

    if shutil.which("openssl") is None:
        import pytest

        pytest.skip("openssl is not installed")
    key = tmp_path / "k.key"
    code, _, err = cli("crypto", "keygen", "-o", key)
    assert code == 0, err
    plain = tmp_path / "p.bin"
    plain.write_bytes(b"\x1f\x8b\x08" + os.urandom(5000))
    enc = tmp_path / "p.enc"
    subprocess.run(
        [
            "openssl",
            "enc",
            "-aes-256-cbc",
            "-salt",
            "-pbkdf2",
            "-iter",
            "20000",
            "-in",
            str(plain),
            "-out",
            str(enc),
            "-pass",
            f"file:{key}",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "p.out"
    code, _, err = cli("crypto", "decrypt", "--key", key, "--iter", "20000", enc, "-o", out)
    assert code == 0, err
    assert out.read_bytes() == plain.read_bytes()
    assert "legacy, unauthenticated" in err


def test_the_open_files_limit_is_raised_for_a_fleet() -> None:
    """A pooled SSH connection per node: the soft limit on descriptors goes up towards 65536
    within the hard limit (a child process, so the suite's own limit is left alone)."""
    import subprocess
    import sys

    code = (
        "import resource;"
        "h = resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, h));"
        "from kconsole.cli import raise_open_files_limit as r;"
        "got = r();"
        "want = 65536 if h == resource.RLIM_INFINITY else min(65536, h);"
        "assert got == want == resource.getrlimit(resource.RLIMIT_NOFILE)[0], (got, want)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
