"""The shipped runbooks: all present, all valid, and free of the reference plan's bugs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from kconsole.actions import REGISTRY
from kconsole.runbook import Runbook, Step, load_runbook, validate_paths
from kconsole.runbook.load import shipped_runbooks_dir

RUNBOOKS = shipped_runbooks_dir()

NAMES = (
    "backup-blockchain-state",
    "backup-validator-keys",
    "backup-transaction-logs",
    "backup-system-logs",
    "backup-full-system",
    "backup-archive",
    "recover-single-node",
    "recover-multiple-nodes",
    "recover-complete-network",
    "recover-security-incident",
    "verify-backups",
    "test-single-node-recovery",
)
BACKUPS = tuple(n for n in NAMES if n.startswith("backup-"))
WAVES = ("bootstrap", "validator", "api")
HEALTH_ACTIONS = ("http.check", "wait.until")


@cache
def runbook(name: str) -> Runbook:
    """The shipped runbook `name`, loaded once."""
    return load_runbook(RUNBOOKS / f"{name}.toml")


def strings(value: Any) -> Iterator[str]:
    """Every string inside a field value (strings, lists, tables)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


def ancestors(rb: Runbook, sid: str) -> set[str]:
    """Every step that must finish before `sid` can start (transitive needs)."""
    seen: set[str] = set()
    todo = list(rb.steps[sid].needs)
    while todo:
        need = todo.pop()
        if need not in seen:
            seen.add(need)
            todo.extend(rb.steps[need].needs)
    return seen


def group_of(step: Step) -> str | None:
    """The group a `for_each = "group:NAME"` step fans out over."""
    return step.for_each.group or None if step.for_each else None


def quoted_placeholders(command: str) -> list[str]:
    """Placeholders written inside shell quotes (they are quoted automatically already)."""
    found: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(command):
        c = command[i]
        if c == "\\" and quote != "'":
            i += 2
            continue
        if quote and c == quote:
            quote = None
        elif not quote and c in "'\"":
            quote = c
        elif quote and c == "{" and not command.startswith("{{", i):
            found.append(command[i : command.find("}", i) + 1])
        i += 1
    return found


def test_all_twelve_runbooks_are_shipped() -> None:
    missing = [n for n in NAMES if not (RUNBOOKS / f"{n}.toml").is_file()]
    assert not missing, f"missing shipped runbooks: {missing}"


def test_the_shipped_folder_validates() -> None:
    count, problems = validate_paths([str(RUNBOOKS)])
    assert count >= len(NAMES)
    assert not problems, "\n".join(str(p) for p in problems)


@pytest.mark.parametrize("name", NAMES)
def test_runbook_loads_with_its_file_name_as_id(name: str) -> None:
    rb = runbook(name)
    assert rb.id == name
    assert rb.title and rb.description
    assert rb.rto > 0 and rb.rpo > 0
    assert rb.scenario


@pytest.mark.parametrize("name", BACKUPS)
def test_backup_runbooks_make_their_own_kind(name: str) -> None:
    rb = runbook(name)
    assert rb.scenario == "backup"
    assert rb.kind == name.removeprefix("backup-")
    creates = [s for s in rb.steps.values() if s.action == "backup.create"]
    assert creates, "a backup runbook creates backups"
    assert {s.fields["kind"] for s in creates} == {rb.kind}


@pytest.mark.parametrize("name", NAMES)
def test_no_fixed_sleeps(name: str) -> None:
    text = (RUNBOOKS / f"{name}.toml").read_text(encoding="utf-8")
    assert "sleep " not in text, "fixed sleeps must be wait.until health checks"


@pytest.mark.parametrize("name", NAMES)
def test_every_destructive_action_has_a_gate(name: str) -> None:
    for step in runbook(name).steps.values():
        if not REGISTRY[step.action].destructive:
            continue
        if step.action == "backup.prune" and step.fields.get("dry_run", True) is True:
            continue  # a dry run deletes nothing
        assert step.gate, f"{name}: destructive step {step.id} ({step.action}) has no gate"


@pytest.mark.parametrize("name", NAMES)
def test_stopping_a_service_is_gated(name: str) -> None:
    for step in runbook(name).steps.values():
        command = str(step.fields.get("command", ""))
        if step.action == "ssh.exec" and command.startswith("systemctl stop"):
            assert step.gate, f"{name}: {step.id} stops a service without a gate"


@pytest.mark.parametrize("name", NAMES)
def test_every_step_has_a_title_guide_and_estimate(name: str) -> None:
    for step in runbook(name).steps.values():
        assert step.title, f"{name}: {step.id} has no title"
        lines = [line for line in step.guide.splitlines() if line.strip()]
        assert 2 <= len(lines) <= 6, f"{name}: {step.id} guide has {len(lines)} lines, want 2-6"
        assert step.estimate, f"{name}: {step.id} has no estimate"


@pytest.mark.parametrize("name", NAMES)
def test_no_key_is_referenced_by_date(name: str) -> None:
    text = (RUNBOOKS / f"{name}.toml").read_text(encoding="utf-8")
    assert "$(date" not in text
    dated = re.compile(r"\{now[:}]|%Y|%m%d|20\d{6}")
    for step in runbook(name).steps.values():
        for key, value in step.fields.items():
            for s in strings(value):
                if "key" in key or ".key" in s or "_key" in s:
                    assert not dated.search(s), (
                        f"{name}: {step.id}.{key} names a key by date: {s!r}"
                    )
        if step.action in ("backup.restore", "backup.verify", "crypto.decrypt", "crypto.rekey"):
            # The key comes from the backup's own key id (or the site's current key), never a file.
            assert "key" not in step.fields, f"{name}: {step.id} names a key file"


@pytest.mark.parametrize("name", NAMES)
def test_placeholders_are_never_quoted_by_hand(name: str) -> None:
    for step in runbook(name).steps.values():
        for fname, spec in REGISTRY[step.action].fields.items():
            if spec.kind == "command" and fname in step.fields:
                bad = quoted_placeholders(step.fields[fname])
                assert not bad, (
                    f"{name}: {step.id}.{fname} quotes {bad}; values are shell-quoted already"
                )


@pytest.mark.parametrize("name", NAMES)
def test_notifications_never_stop_a_run(name: str) -> None:
    rb = runbook(name)
    for step in rb.main_steps():
        if step.action in ("notify", "incident.escalate"):
            assert step.on_failure == "continue", f"{name}: {step.id} could stop the run"


@pytest.mark.parametrize("name", NAMES)
def test_restores_are_never_retried(name: str) -> None:
    for step in runbook(name).steps.values():
        if step.action == "backup.restore":
            assert step.retries == 0, f"{name}: {step.id} retries a restore"


@pytest.mark.parametrize("name", ["recover-complete-network", "recover-security-incident"])
def test_restores_run_in_waves_bootstrap_validator_api(name: str) -> None:
    rb = runbook(name)
    restores: dict[str, Step] = {}
    for step in rb.steps.values():
        if step.action == "backup.restore":
            group = group_of(step)
            assert group in WAVES, f"{name}: restore {step.id} is not over one wave's group"
            assert group not in restores, f"{name}: two restore steps for group {group}"
            restores[group] = step
    assert set(restores) == set(WAVES)
    for step in restores.values():
        assert step.concurrency != 1, (
            f"{name}: the nodes of wave {step.id} must restore in parallel"
        )
    for earlier, later in zip(WAVES, WAVES[1:], strict=False):
        before = ancestors(rb, restores[later].id)
        assert restores[earlier].id in before, (
            f"{name}: {later} restore does not wait for {earlier}"
        )
        checks = [
            sid
            for sid in before
            if rb.steps[sid].action in HEALTH_ACTIONS
            and group_of(rb.steps[sid]) == earlier
            and restores[earlier].id in ancestors(rb, sid)
        ]
        assert checks, (
            f"{name}: the {later} wave starts before the {earlier} wave is proven healthy"
        )
    first = ancestors(rb, restores["bootstrap"].id)
    assert not {restores["validator"].id, restores["api"].id} & first


@pytest.mark.parametrize("name", ["recover-single-node", "test-single-node-recovery"])
def test_failed_single_node_restore_rolls_back(name: str) -> None:
    rb = runbook(name)
    (restore,) = [s for s in rb.steps.values() if s.action == "backup.restore"]
    rollback = rb.steps[restore.on_failure]
    assert not rollback.needs
    assert "{node.root}/var/lib/kaldrix/state" in rollback.fields["command"]
    assert ".pre-restore" in rollback.fields["command"]
    assert "systemctl start kaldrix-node" in rollback.fields["command"]
    after = [
        s for s in rb.main_steps() if restore.id in ancestors(rb, s.id) and s.action != "notify"
    ]
    assert after, "checks follow the restore"
    for step in after:
        assert step.on_failure == rollback.id, f"{name}: {step.id} fails without rolling back"
    assert any(s.action == "wait.until" and s.fields.get("advancing") for s in after)


def test_the_runbook_format_reference_names_every_action() -> None:
    from kconsole.actions import REGISTRY

    text = (Path(__file__).resolve().parent.parent / "docs" / "runbook-format.md").read_text()
    assert [name for name in REGISTRY if f"| `{name}` |" not in text] == []


def test_the_security_runbooks_destructive_steps_need_two_people() -> None:
    """Scenario 4's restores and the re-encryption of every backup want a second account."""
    rb = runbook("recover-security-incident")
    destructive = [s for s in rb.steps.values() if REGISTRY[s.action].destructive]
    assert {s.id for s in destructive} >= {
        "restore-bootstrap",
        "restore-validator",
        "restore-api",
        "rekey-backups",
    }
    assert all(s.approvers == 2 and s.gate for s in destructive)
