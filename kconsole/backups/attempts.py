"""Backup attempts as the run journal recorded them: every `backup.create` step instance
of every run, finished or failed, with its kind and node.

A run's journal says which steps finished or failed on which node; its saved
`runbook.toml` says which of those steps were `backup.create` and of what kind. Both are
read straight from the state directory, newest run first, so a metrics scrape or a
schedule check never needs the executor.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kconsole.journal import summarise


@dataclass(frozen=True)
class Attempt:
    """One `backup.create` step instance that ended."""

    run: str
    runbook: str
    step: str
    kind: str
    node: str
    ok: bool
    finished: str
    drill: bool = False


def _create_steps(text: bytes) -> dict[str, str]:
    """Step id -> backup kind, for the `backup.create` steps of a runbook's TOML text."""
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    head = data.get("runbook")
    default = head.get("kind", "") if isinstance(head, dict) else ""
    out = {}
    for step in data.get("steps") or []:
        if (
            isinstance(step, dict)
            and step.get("action") == "backup.create"
            and isinstance(step.get("id"), str)
        ):
            kind = step.get("kind") or default
            if isinstance(kind, str) and kind:
                out[step["id"]] = kind
    return out


def run_dirs(state_dir: Path, limit: int | None = None) -> list[Path]:
    """Run directories, newest first (run ids start with their UTC start time)."""
    runs = state_dir / "runs"
    if not runs.is_dir():
        return []
    dirs = sorted(
        (d for d in runs.iterdir() if (d / "journal.jsonl").is_file()),
        key=lambda d: d.name,
        reverse=True,
    )
    return dirs[:limit] if limit else dirs


def _runbook_of(journal: Path) -> str:
    """The runbook id from a journal's first record (`created`), or ""."""
    try:
        with journal.open("rb") as fh:
            head = json.loads(fh.readline())
    except (OSError, ValueError):
        return ""
    return str(head.get("runbook", "")) if isinstance(head, dict) else ""


def backup_attempts(
    state_dir: Path, runs_per_runbook: int | None = 20, max_runs: int | None = None
) -> list[Attempt]:
    """Every ended `backup.create` instance, newest run first, from at most the newest
    `runs_per_runbook` runs of each runbook (a run makes one attempt per node, so 20 runs
    fill a 20-attempt window; the journals of older runs are not read at all)."""
    parsed: dict[str, dict[str, str]] = {}
    taken: dict[str, int] = {}
    out: list[Attempt] = []
    for d in run_dirs(state_dir, max_runs):
        if runs_per_runbook:
            rb = _runbook_of(d / "journal.jsonl")
            if taken.get(rb, 0) >= runs_per_runbook:
                continue
        try:
            text = (d / "runbook.toml").read_bytes()
        except OSError:
            continue
        digest = hashlib.sha256(text).hexdigest()
        if digest not in parsed:
            parsed[digest] = _create_steps(text)
        steps = parsed[digest]
        if not steps:
            continue
        summary = summarise(d)
        taken[summary.runbook] = taken.get(summary.runbook, 0) + 1
        ended: list[Any] = sorted(
            (
                i
                for i in summary.instances.values()
                if i.step in steps and i.node and i.last in ("finished", "failed")
            ),
            key=lambda i: i.finished,
            reverse=True,
        )
        for inst in ended:
            out.append(
                Attempt(
                    summary.id,
                    summary.runbook,
                    inst.step,
                    steps[inst.step],
                    str(inst.node),
                    inst.last == "finished",
                    inst.finished,
                    summary.drill,
                )
            )
    return out
