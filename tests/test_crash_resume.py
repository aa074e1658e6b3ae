"""A real `kconsole run` killed with SIGKILL mid-run resumes without re-running finished steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kconsole(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kconsole", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def test_sigkill_mid_run_then_resume(tmp_path: Path, site_path: Path) -> None:
    work = tmp_path
    rb = work / "crash.toml"
    rb.write_text(f"""
[runbook]
id = "crash"
title = "Crash test"
rto = "10m"

[[steps]]
id = "one"
action = "shell"
command = "echo once >> {work}/one.log"

[[steps]]
id = "two"
action = "shell"
needs = ["one"]
command = "echo run >> {work}/two.log; [ -f {work}/release ] || sleep 60"

[[steps]]
id = "three"
action = "shell"
needs = ["two"]
gate = "confirm"
command = "echo done >> {work}/three.log"
""")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kconsole",
            "--site",
            str(site_path),
            "run",
            str(rb),
            "--yes",
            "--json",
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (work / "two.log").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "step two never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # The shell child of step two is still sleeping in its own session; release it.
    (work / "release").touch()

    runs = kconsole("--site", str(site_path), "runs", "--json", cwd=work)
    assert runs.returncode == 0, runs.stderr
    run = json.loads(runs.stdout.splitlines()[0])
    assert run["status"] == "interrupted"

    resumed = kconsole(
        "--site",
        str(site_path),
        "run",
        "crash",
        "--resume",
        run["id"],
        "--yes",
        "--json",
        cwd=work,
        env={**os.environ, "KCONSOLE_SITE": ""},
    )
    # "crash" is not a shipped runbook id: the resume must accept the id of the run's own runbook.
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert ("two", "confirmed") in [
        (e["step"], e["event"]) for e in events
    ]  # asked before re-running
    assert not any(e["step"] == "one" for e in events)
    assert (work / "one.log").read_text().splitlines() == ["once"]
    assert (work / "two.log").read_text().splitlines() == ["run", "run"]
    assert (work / "three.log").read_text().splitlines() == ["done"]

    runs = kconsole("--site", str(site_path), "runs", "--json", cwd=work)
    assert json.loads(runs.stdout.splitlines()[0])["status"] == "succeeded"


def test_interrupt_with_sigint_is_exit_3_and_resumable(tmp_path: Path, site_path: Path) -> None:
    rb = tmp_path / "slow.toml"
    rb.write_text(f"""
[runbook]
id = "slow"
title = "Slow"
rto = "10m"

[[steps]]
id = "wait"
action = "shell"
command = "touch {tmp_path}/started; sleep 60"
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kconsole", "--site", str(site_path), "run", str(rb)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "--resume" in out
    runs = kconsole("--site", str(site_path), "runs", "--json", cwd=tmp_path)
    assert json.loads(runs.stdout.splitlines()[0])["status"] == "interrupted"
