"""Fuzzing the validator: mutated runbooks give problems, never a traceback.

Small in the suite; `KCONSOLE_FUZZ=large` multiplies every example count by 40 (thousands
of cases per loader) for an on-demand run. The site loader, templates and every CLI
argument are fuzzed in tests/test_trust_input_fuzz.py with the same knob.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kconsole.config import Problem
from kconsole.runbook import validate_paths
from tests.test_validate import GOOD

LARGE = os.environ.get("KCONSOLE_FUZZ") == "large"


def examples(small: int) -> int:
    """`small` examples in the suite, 40 times as many on demand (KCONSOLE_FUZZ=large)."""
    return small * 40 if LARGE else small


TOKENS = [
    "[",
    "]",
    "{",
    "}",
    '"',
    "'",
    "=",
    "\n",
    ".",
    ":",
    ",",
    "#",
    "a",
    "1",
    "{node",
    "}}",
    "[[steps]]",
    "needs = [",
    "type:",
    '"""',
    "\\",
    "\x00",
    "é",
    "{node.name:>99999}",
    "{node!r}",
    "{now:%Y}",
    "{node.__class__}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{a={a={a={a={a={a={a={a={a={a={a={a={a=",
]


def check(text: str | bytes) -> list[Problem]:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rb.toml"
        p.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        _, problems = validate_paths([str(p)])
    for problem in problems:
        assert problem.line >= 1 and problem.col >= 1
        assert "\n" not in problem.message
    return problems


@st.composite
def text_mutations(draw: st.DrawFn) -> str:
    lines = GOOD.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "dup", "drop", "swap"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "insert":
            line = lines[i]
            pos = draw(st.integers(0, len(line)))
            lines[i] = line[:pos] + draw(st.sampled_from(TOKENS)) + line[pos:]
        elif op == "delete" and lines[i]:
            pos = draw(st.integers(0, max(0, len(lines[i]) - 1)))
            lines[i] = lines[i][:pos] + lines[i][pos + 1 :]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "drop" and len(lines) > 1:
            lines.pop(i)
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


SCALARS = st.one_of(
    st.integers(-3, 3),
    st.booleans(),
    st.text(max_size=8),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def data_mutations(draw: st.DrawFn) -> str:
    import tomllib

    data: dict[str, Any] = tomllib.loads(GOOD)
    for _ in range(draw(st.integers(1, 3))):
        candidates = [data]
        for key in ("runbook", "params"):
            if isinstance(data.get(key), dict):
                candidates.append(data[key])
        if isinstance(data.get("params"), dict) and isinstance(data["params"].get("node"), dict):
            candidates.append(data["params"]["node"])
        if isinstance(data.get("steps"), list):
            candidates.extend(s for s in data["steps"] if isinstance(s, dict))
        table = draw(st.sampled_from(candidates))
        key = draw(
            st.sampled_from(
                [
                    *table.keys(),
                    "needs",
                    "expect",
                    "retries",
                    "for_each",
                    "on_failure",
                    "concurrency",
                    "timeout",
                    "gate",
                    "params",
                    "type",
                    "default",
                ]
            )
        )
        table[key] = draw(SCALARS)
    return tomli_w.dumps(data)


@settings(max_examples=examples(350), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_mutations())
def test_text_mutations_never_crash(text: str) -> None:
    check(text)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data_mutations())
def test_value_mutations_never_crash(text: str) -> None:
    check(text)
