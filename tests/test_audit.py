"""The audit chain detects edited, deleted, reordered and inserted entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kconsole.audit import AuditLog, canonical


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "state")
    for i in range(5):
        audit.append("alice", "run.start", f"run-{i}", runbook="recover-single-node")
    return audit


def lines(audit: AuditLog) -> list[bytes]:
    return audit.path.read_bytes().splitlines(keepends=True)


def rewrite(audit: AuditLog, new: list[bytes]) -> None:
    audit.path.write_bytes(b"".join(new))


def test_intact(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.position == 5


def test_key_file_is_private(log: AuditLog) -> None:
    assert log.key_path.stat().st_mode & 0o777 == 0o600
    assert log.path.stat().st_mode & 0o777 == 0o600


def test_edited_entry(log: AuditLog) -> None:
    ls = lines(log)
    entry = json.loads(ls[2])
    entry["actor"] = "mallory"
    ls[2] = canonical(entry) + b"\n"
    rewrite(log, ls)
    result = log.verify()
    assert not result.ok and result.position == 3
    assert "content was edited" in result.message


def test_edited_and_rehashed_entry_fails_hmac(log: AuditLog) -> None:
    from kconsole.audit import entry_hash

    ls = lines(log)
    entry = json.loads(ls[4])
    entry["actor"] = "mallory"
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    entry["hash"] = entry_hash(body)
    ls[4] = canonical(entry) + b"\n"
    rewrite(log, ls)
    result = log.verify()
    assert not result.ok and result.position == 5
    assert "HMAC" in result.message


def test_deleted_entry(log: AuditLog) -> None:
    ls = lines(log)
    del ls[1]
    rewrite(log, ls)
    result = log.verify()
    assert not result.ok and result.position == 2
    assert "seq 3, expected 2" in result.message


def test_reordered_entries(log: AuditLog) -> None:
    ls = lines(log)
    ls[1], ls[2] = ls[2], ls[1]
    rewrite(log, ls)
    result = log.verify()
    assert not result.ok and result.position == 2


def test_inserted_entry(log: AuditLog) -> None:
    ls = lines(log)
    ls.insert(3, ls[2])
    rewrite(log, ls)
    result = log.verify()
    assert not result.ok and result.position == 4


def test_torn_last_line_is_a_crash_not_tampering(log: AuditLog) -> None:
    with log.path.open("ab") as fh:
        fh.write(b'{"seq":6,"ts":"2026-')
    result = log.verify()
    assert result.ok and result.torn
    assert "torn" in result.message
    # The next append cuts the torn tail and chains on.
    log.append("alice", "run.finish", "run-4")
    assert log.verify().ok and log.verify().position == 6


def test_cli_exit_codes(cli, site_path: Path, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "state")
    audit.append("alice", "gate.confirm", "r/1")
    audit.append("alice", "gate.confirm", "r/2")
    code, out, _ = cli("--site", site_path, "audit", "verify")
    assert code == 0 and "2 entries intact" in out
    ls = lines(audit)
    rewrite(audit, [ls[1]])
    code, _, err = cli("--site", site_path, "audit", "verify")
    assert code == 1
    assert "entry 1 (line 1)" in err
    assert len(err.strip().splitlines()) == 1


def test_secrets_never_written(tmp_path: Path, site_path: Path, cli, monkeypatch) -> None:
    """A webhook URL set in the environment never reaches journal or audit."""
    secret = "https://hooks.example.invalid/T000/B000/very-secret-token"
    monkeypatch.setenv("KCONSOLE_TEST_WEBHOOK", secret)
    rb = tmp_path / "n.toml"
    rb.write_text(
        '[runbook]\nid = "n"\ntitle = "N"\nrto = "1m"\n\n[[steps]]\nid = "tell"\naction = "notify"\n'
        'text = "hello"\non_failure = "continue"\n'
    )
    code, _, err = cli("--site", site_path, "run", rb, "--yes")
    assert code == 0, err
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file():
            assert b"very-secret-token" not in f.read_bytes(), f
    assert "very-secret-token" not in err
