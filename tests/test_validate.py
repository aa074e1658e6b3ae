"""`kconsole validate`: every kind of broken runbook is refused with file:line:col and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GOOD = """
[runbook]
id = "good"
title = "Good"
rto = "1h"

[params.node]
type = "node"
default = "validator1"
help = "the node"

[[steps]]
id = "stop"
title = "Stop {node}"
action = "ssh.exec"
for_each = "node"
command = "systemctl stop {node.service}"
gate = "type:{node}"
estimate = "10s"

[[steps]]
id = "check"
action = "wait.until"
for_each = "node"
url = "{node.health_url}"
needs = ["stop"]
"""


def located(err: str) -> list[tuple[int, int, str]]:
    """(line, col, message) of every PATH:LINE:COL: line."""
    return [
        (int(m[0]), int(m[1]), m[2]) for m in re.findall(r"^\S+?:(\d+):(\d+): (.*)$", err, re.M)
    ]


def test_good_runbook_passes(cli, write_runbook) -> None:
    code, out, err = cli("validate", write_runbook(GOOD))
    assert (code, err) == (0, "")
    assert "1 file(s) valid" in out


CASES = [
    # (description, runbook text, expected line, expected col, message fragment)
    ("toml syntax", GOOD.replace('rto = "1h"', 'rto = "1h'), 4, 10, "TOML syntax error"),
    (
        "unknown key with suggestion",
        GOOD.replace('estimate = "10s"', 'estimat = "10s"'),
        18,
        1,
        'unknown key "estimat" in step "stop" (did you mean "estimate"?)',
    ),
    (
        "unknown action",
        GOOD.replace('"ssh.exec"', '"ssh.exek"'),
        14,
        1,
        'unknown action "ssh.exek" (did you mean "ssh.exec"?)',
    ),
    (
        "missing field",
        GOOD.replace('command = "systemctl stop {node.service}"\n', ""),
        11,
        3,
        'action ssh.exec needs "command"',
    ),
    (
        "bad duration",
        GOOD.replace('estimate = "10s"', 'estimate = "10 parsecs"'),
        18,
        1,
        'bad duration for "estimate"',
    ),
    (
        "unknown needs",
        GOOD.replace('needs = ["stop"]', 'needs = ["stpo"]'),
        25,
        1,
        'needs unknown step "stpo" (did you mean "stop"?)',
    ),
    (
        "duplicate id",
        GOOD.replace('id = "check"', 'id = "stop"'),
        21,
        1,
        'duplicate step id "stop"',
    ),
    (
        "undefined template",
        GOOD.replace("systemctl stop {node.service}", "systemctl stop {servce}"),
        16,
        1,
        "undefined template variable {servce}",
    ),
    (
        "bad attribute",
        GOOD.replace("{node.service}", "{node.hots}"),
        16,
        1,
        "{node.hots}: unknown attribute",
    ),
    (
        "unknown param type",
        GOOD.replace('type = "node"', 'type = "nod"'),
        7,
        1,
        'unknown type "nod" (did you mean "node"?)',
    ),
    (
        "bad gate",
        GOOD.replace('gate = "type:{node}"', 'gate = "maybe"'),
        17,
        1,
        'gate must be "confirm" or "type:VALUE"',
    ),
    (
        "destructive without gate",
        GOOD.replace('action = "ssh.exec"', 'action = "backup.restore"')
        .replace('command = "systemctl stop {node.service}"\n', "")
        .replace('gate = "type:{node}"\n', ""),
        11,
        3,
        "is destructive and needs a gate",
    ),
    (
        "approvers out of range",
        GOOD.replace('gate = "type:{node}"\n', 'gate = "type:{node}"\napprovers = 0\n'),
        18,
        None,
        "approvers must be between 1 and 5, not 0",
    ),
    (
        "approvers without a gate",
        GOOD.replace('needs = ["stop"]\n', 'needs = ["stop"]\napprovers = 2\n'),
        26,
        None,
        "approvers = 2 needs a gate",
    ),
    (
        "for_each unknown",
        GOOD.replace('for_each = "node"\ncommand', 'for_each = "nodez"\ncommand'),
        15,
        1,
        'for_each "nodez" is not a node list',
    ),
]


@pytest.mark.parametrize(
    ("what", "text", "line", "col", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_broken_runbook_is_located(cli, write_runbook, what, text, line, col, fragment) -> None:
    path = write_runbook(text)
    code, out, err = cli("validate", path)
    assert code == 2, err
    assert "Traceback" not in err
    problems = located(err)
    assert problems, err
    assert any(fragment in msg for _, _, msg in problems), err
    hit = next(p for p in problems if fragment in p[2])
    assert hit[0] == line, err
    if col is not None:
        assert hit[1] == col, err
    assert err.splitlines()[0].startswith(f"{path}:")


def test_cycle_names_the_steps(cli, write_runbook) -> None:
    text = GOOD.replace('id = "stop"', 'id = "stop"\nneeds = ["check"]')
    code, _, err = cli("validate", write_runbook(text))
    assert code == 2
    assert "cycle in needs: " in err
    assert re.search(r"cycle in needs: (stop -> check -> stop|check -> stop -> check)", err)


def test_unreachable_step_behind_rollback(cli, write_runbook) -> None:
    text = (
        GOOD
        + """
[[steps]]
id = "undo"
action = "shell"
command = "true"

[[steps]]
id = "after-undo"
action = "shell"
command = "true"
needs = ["undo"]
"""
    ).replace('url = "{node.health_url}"', 'url = "{node.health_url}"\non_failure = "undo"')
    code, _, err = cli("validate", write_runbook(text))
    assert code == 2
    assert 'step "after-undo" is unreachable' in err


def test_all_problems_in_one_pass(cli, write_runbook) -> None:
    text = (
        GOOD.replace('"ssh.exec"', '"ssh.exek"').replace('needs = ["stop"]', 'needs = ["nope"]')
        + "bogus = 1\n"
    )
    code, _, err = cli("validate", write_runbook(text))
    assert code == 2
    assert len(located(err)) >= 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"\x00\x01\x02binary", "is a binary file"),
        (b"   \n\n", "is empty"),
        (b"\xff\xfe[runbook]", "is not UTF-8"),
    ],
)
def test_empty_or_binary_file(cli, tmp_path: Path, content: bytes, fragment: str) -> None:
    p = tmp_path / "x.toml"
    p.write_bytes(content)
    code, _, err = cli("validate", p)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 2  # the problem and the summary


def test_missing_file(cli, tmp_path: Path) -> None:
    code, _, err = cli("validate", tmp_path / "nope.toml")
    assert code == 2
    assert "file not found" in err


def test_site_file_is_validated(cli, tmp_path: Path, site_path: Path) -> None:
    code, out, _ = cli("validate", site_path)
    assert code == 0, out
    bad = tmp_path / "bad-site.toml"
    bad.write_text(
        site_path.read_text().replace('name = "validator2"\nhost', 'name = "validator2"\nhots')
    )
    code, _, err = cli("validate", bad)
    assert code == 2
    assert 'unknown key "hots" in [[nodes]] (did you mean "host"?)' in err


def test_site_refuses_webhook_url_in_file(cli, tmp_path: Path, site_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text(
        site_path.read_text()
        + '\n[notify.pager]\nwebhook_env = "X"\nurl = "https://hooks.example/secret"\n'
    )
    code, _, err = cli("validate", bad)
    assert code == 2
    assert "must not hold the webhook URL" in err


def test_folder_with_mixed_files(cli, tmp_path: Path, write_runbook) -> None:
    d = tmp_path / "rbs"
    d.mkdir()
    (d / "a.toml").write_text(GOOD)
    (d / "b.toml").write_text(GOOD.replace('"ssh.exec"', '"nope"'))
    code, _, err = cli("validate", d)
    assert code == 2
    assert "b.toml:15:1:" in err
    assert "a.toml" not in err


def test_the_readme_validate_commands_pass_in_a_checkout(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every `kconsole validate` line of README.md, run from the repository's root as a new
    user would, finds no problem (it once named a site.toml a checkout does not have)."""
    root = Path(__file__).resolve().parent.parent
    commands = [
        line.split("#")[0].split()[1:]
        for line in (root / "README.md").read_text().splitlines()
        if line.startswith("kconsole validate ")
    ]
    assert commands
    monkeypatch.chdir(root)
    for args in commands:
        code, out, err = cli(*args)
        assert code == 0, f"kconsole {' '.join(args)}: {out}{err}"
