"""Fuzzing the rest of the input boundary: the site loader, templates and every CLI
argument. The property is the same everywhere: hostile input ends in one clear sentence
and exit 2 (or a problem list), never an internal error. Small in the suite;
`KCONSOLE_FUZZ=large` runs 40 times as many cases (see tests/test_validate_fuzz.py).

The CLI fuzz leaves out `lab` and `web` (they start servers and serve until stopped) and
the bare console (it needs a terminal; `test_trust_input` covers its refusal); a drill is
only ever given scenario names that do not exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import textwrap
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kconsole.cli import main
from kconsole.errors import UsageError
from kconsole.runbook import validate_paths
from kconsole.runbook.load import load_runbook
from kconsole.runbook.template import BackupRef, NodeRef, RunRef, SiteRef, render
from kconsole.site import Node, load_site
from tests.conftest import SITE
from tests.test_validate_fuzz import SCALARS, TOKENS, examples

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck))


# -- the site loader --------------------------------------------------------------------


@st.composite
def site_texts(draw: st.DrawFn) -> str:
    """The unit site with its text or its values mutated."""
    if draw(st.booleans()):
        lines = SITE.splitlines(keepends=True)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(["insert", "drop", "dup"]))
            if op == "insert":
                pos = draw(st.integers(0, len(lines[i])))
                lines[i] = lines[i][:pos] + draw(st.sampled_from(TOKENS)) + lines[i][pos:]
            elif op == "drop" and len(lines) > 1:
                lines.pop(i)
            else:
                lines.insert(i, lines[i])
        return "".join(lines)
    data: dict[str, Any] = tomllib.loads(SITE)
    for _ in range(draw(st.integers(1, 3))):
        tables = [data]
        for value in data.values():  # the tables one and two levels down, as they are now
            inner = value if isinstance(value, list) else [value]
            tables += [t for t in inner if isinstance(t, dict)]
            for t in inner:
                if isinstance(t, dict):
                    tables += [u for u in t.values() if isinstance(u, dict)]
        table = draw(st.sampled_from(tables))
        key = draw(
            st.sampled_from(
                [*table.keys(), "state_dir", "port", "root", "access", "keys", "locations"]
            )
        )
        table[key] = draw(SCALARS)
    return tomli_w.dumps(data)


@settings(FUZZ, max_examples=examples(200))
@given(site_texts())
def test_the_site_loader_never_crashes(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            site = load_site(path)
        except UsageError as exc:
            assert str(exc).strip()
            return
        site.check_state_dir()  # raises UsageError at worst


# -- templates: what validate accepts renders ----------------------------------------------

PIECES = [
    "{node}",
    "{node.name}",
    "{node.host}",
    "{node.__class__}",
    "{node.node.name}",
    "{node.name[0]}",
    "{node!r}",
    "{node!s}",
    "{node:>9}",
    "{node.name:>999999999}",
    "{node:{node}}",
    "{now}",
    "{now:%Y%m%d}",
    "{now:%Y" + "x" * 80 + "}",
    "{now.year}",
    "{now.__class__}",
    "{run.id}",
    "{run.__dict__}",
    "{site.name}",
    "{backup}",
    "{backup.path}",
    "{backup.id:^100}",
    "{0}",
    "{}",
    "{{",
    "}}",
    "{",
    "}",
    " ",
    "x",
]


@settings(FUZZ, max_examples=examples(150))
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=5))
def test_a_template_that_validates_renders(pieces: list[str]) -> None:
    """Nothing passes validate and then fails, leaks or allocates at run time."""
    template = "".join(pieces)
    runbook = textwrap.dedent(
        """
        [runbook]
        id = "t"
        title = "T"
        rto = "1h"

        [params.node]
        type = "node"

        [params.backup]
        type = "backup"
        default = "latest"

        [[steps]]
        id = "s"
        action = "ssh.exec"
        for_each = "node"
        command = {command}
        """
    ).format(command=tomli_w.dumps({"c": template})[4:].strip())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.toml"
        path.write_text(runbook)
        _, problems = validate_paths([str(path)])
        if problems:
            return
        rb = load_runbook(path)
    node = NodeRef(Node("validator1", "127.0.0.1"))
    context = {
        "node": node,
        "backup": BackupRef("blockchain-state_validator1_20261126_031400", path="/b/x.kdx"),
        "run": RunRef("20261126-031400-0001", False, "t", "alice"),
        "site": SiteRef("unit"),
        "now": datetime(2026, 11, 26, 3, 14, tzinfo=UTC),
    }
    out = render(str(rb.steps["s"].fields["command"]), context, quote=True)
    assert len(out) < 2000 and "class" not in out


# -- every CLI argument ---------------------------------------------------------------------

COMMANDS = [
    ["validate"],
    ["run"],
    ["runs"],
    ["status"],
    ["catalog"],
    ["verify"],
    ["crypto", "keygen"],
    ["crypto", "encrypt"],
    ["crypto", "decrypt"],
    ["report"],
    ["audit", "verify"],
    ["audit", "show"],
    ["contacts"],
    ["metrics"],
    ["schedule"],
    ["site", "import"],
    ["incident", "open"],
    ["incident", "list"],
    ["incident", "show"],
    ["incident", "ack"],
    ["incident", "escalate"],
    ["incident", "update"],
    ["incident", "note"],
    ["incident", "tick"],
    ["incident", "report"],
    ["drill"],
    ["drills"],
    ["report", "sign"],
]
ARGS = [
    "--json",
    "--yes",
    "--drill",
    "--param",
    "node=validator1",
    "k=",
    "=",
    "--resume",
    "20261126-031502-7f3a",
    "../x",
    "--site",
    "site.toml",
    "missing.toml",
    "-o",
    "out.bin",
    "/nonexistent/dir/f",
    ".",
    "--key",
    "k.key",
    "--keyring",
    "keys",
    "--kind",
    "blockchain-state",
    "--node",
    "validator1",
    "--location",
    "--format",
    "md",
    "json",
    "--crontab",
    "--iter",
    "-1",
    "0",
    "99999999999999999999999",
    "--pbkdf2",
    "rb.toml",
    "deep.toml",
    "big.toml",
    "file.txt",
    "primary.conf",
    "é",
    "",
    "\x00",
    "-",
    "--",
    "--version",
    "--help",
    "--type",
    "backup",
    "--severity",
    "high",
    "--summary",
    "--status",
    "resolved",
    "--note",
    "--all",
    "--role",
    "test-engineer",
    "INC-1",
    "--exercise",
]
FUZZ_SITE = """
[site]
name = "fuzz"
state_dir = "state"

[[nodes]]
name = "validator1"
host = "127.0.0.1"
port = 1
groups = ["validator"]

[keys]
dir = "keys"

[locations.primary]
type = "local"
path = "backups"
"""


@contextlib.contextmanager
def _sandbox() -> Iterator[Path]:
    """A working directory with a site, a runbook, a key and a few hostile files."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "site.toml").write_text(FUZZ_SITE)
        (root / "keys").mkdir()
        (root / "rb.toml").write_text(
            '[runbook]\nid = "f"\ntitle = "F"\nrto = "1m"\n\n'
            '[[steps]]\nid = "x"\naction = "shell"\ncommand = "true"\n'
        )
        (root / "deep.toml").write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
        (root / "big.toml").write_bytes(b"# " + b"x" * (2 * 1024 * 1024) + b"\n")
        (root / "file.txt").write_text("plain text\n")
        (root / "primary.conf").write_text("[backup]\nretention_days = x\n")
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(old)


@settings(FUZZ, max_examples=examples(120))
@given(st.sampled_from(COMMANDS), st.lists(st.sampled_from(ARGS), max_size=6))
def test_no_cli_argument_reaches_an_internal_error(command: list[str], args: list[str]) -> None:
    argv = [*command, *args]
    if "--site" not in argv:
        argv = ["--site", "site.toml", *argv]
    out, err = io.StringIO(), io.StringIO()
    with _sandbox(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help and --version print and exit 0
            code = exc.code if isinstance(exc.code, int) else 0
    text = err.getvalue()
    assert "internal error" not in text, (argv, text)
    assert "Traceback" not in text, (argv, text)
    assert code in (0, 1, 2, 3), (argv, code, text)
    if code == 2:
        assert text.strip(), argv
