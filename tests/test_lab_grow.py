"""`python -m kconsole.lab grow`: chain state at real size that still verifies."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kconsole.errors import UsageError
from kconsole.lab import labtool
from kconsole.lab.grow import BODY_SEGMENT, grow_state, parse_size


def test_parse_size_takes_binary_units_and_refuses_words() -> None:
    assert parse_size("1G") == 1 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("300k") == 300 << 10
    assert parse_size("4096") == 4096
    with pytest.raises(UsageError):
        parse_size("big")


def test_grown_state_verifies_is_part_compressible_and_a_truncated_body_fails(
    tmp_path: Path,
) -> None:
    root = tmp_path / "validator1"
    labtool.init_state(root, time.time())
    state = root / labtool.STATE_DIR
    size = BODY_SEGMENT + (3 << 20)
    assert grow_state(state, size, "validator1") == size
    bodies = sorted((state / "bodies").glob("*.dat"))
    assert [p.stat().st_size for p in bodies] == [BODY_SEGMENT, 3 << 20]
    ok, lines = labtool.verify_state(root)
    assert ok, lines
    assert lines[-1] == f"ok   2 block body files, {size} bytes, sizes as listed"
    # Realistic: the text part compresses, the witness part does not.
    data = bodies[1].read_bytes()
    ratio = len(gzip.compress(data, 1)) / len(data)
    assert 0.3 < ratio < 0.9
    with bodies[0].open("r+b") as fh:
        fh.truncate(100)
    ok, lines = labtool.verify_state(root)
    assert not ok
    assert (
        lines[-1]
        == f"FAIL block body bodies/{bodies[0].name} is 100 bytes, {BODY_SEGMENT} expected"
    )


def test_grow_cli_grows_a_lab_node_and_refuses_an_unknown_node(tmp_path: Path) -> None:
    root = tmp_path / "nodes" / "api1"
    labtool.init_state(root, time.time())
    run = [sys.executable, "-m", "kconsole.lab", "grow", "--dir", str(tmp_path)]
    ok = subprocess.run([*run, "api1", "2M"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"api1: {2 << 20} bytes of block bodies added\n"
    bad = subprocess.run([*run, "api9", "2M"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr == f"kconsole lab: {tmp_path} has no lab node named 'api9'.\n"
    bad = subprocess.run([*run, "api1", "lots"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "is not a size" in bad.stderr
