"""Loading and validating runbooks: every problem in one pass, each with file:line:col."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from kconsole.actions import REGISTRY
from kconsole.actions.base import Field
from kconsole.backups.selector import canonical_time
from kconsole.config import Problem, ProblemList, SourceFile, load_toml, parse_duration
from kconsole.config.problems import InvalidFile, did_you_mean
from kconsole.config.schema import check_keys, expect_duration, expect_type
from kconsole.config.source import KeyPath, TomlFileError
from kconsole.errors import UsageError
from kconsole.runbook.model import PARAM_TYPES, Expect, ForEach, Param, Runbook, Step
from kconsole.runbook.template import BACKUP_ATTRS, BUILTINS, NODE_ATTRS, placeholders

SCENARIOS = (
    "backup",
    "single-node",
    "multiple-nodes",
    "complete-network",
    "security-incident",
    "verification",
    "recovery-test",
    "drill",
)
_TOP = ("runbook", "params", "steps")
_HEAD = ("id", "title", "rto", "rpo", "scenario", "description", "kind")
_PARAM_KEYS = ("type", "help", "default", "choices")
_COMMON = (
    "id",
    "title",
    "action",
    "needs",
    "gate",
    "for_each",
    "node",
    "concurrency",
    "timeout",
    "retries",
    "backoff",
    "on_failure",
    "expect",
    "guide",
    "estimate",
    "approvers",
)
MAX_APPROVERS = 5
"""More approvers than this is a typo, not a policy."""
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PARAM_ATTRS: dict[str, tuple[str, ...]] = {"node": NODE_ATTRS, "backup": BACKUP_ATTRS}


def shipped_runbooks_dir() -> Path:
    """The directory of runbooks shipped inside the package."""
    return Path(str(resources.files("runbooks")))


def resolve_runbook_path(name: str, extra_dirs: Iterable[Path] = ()) -> Path:
    """A runbook file from a path or the id of a shipped (or site) runbook."""
    p = Path(name)
    if p.suffix == ".toml" or p.exists() or "/" in name:
        if not p.exists():
            raise UsageError(f"runbook file {name} not found.")
        return p
    dirs = [*extra_dirs, shipped_runbooks_dir()]
    for d in dirs:
        candidate = d / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob("*.toml")})
    raise UsageError(
        f'no runbook "{name}"{did_you_mean(name, known)}; run `kconsole validate` on a path, '
        f"or use one of: {', '.join(known)}."
    )


def load_runbook(path: str | Path, shown_as: str | None = None) -> Runbook:
    """Load a valid runbook; raise InvalidFile (exit 2) listing every problem."""
    try:
        src = load_toml(path, shown_as)
    except TomlFileError as exc:
        raise InvalidFile([exc.problem]) from None
    problems = ProblemList()
    runbook = build_runbook(src, problems)
    problems.raise_if_any()
    assert runbook is not None
    return runbook


def validate_paths(paths: Iterable[str]) -> tuple[int, ProblemList]:
    """Validate runbook and site files (folders are searched for *.toml); (files seen, problems)."""
    from kconsole.site import validate_site

    problems = ProblemList()
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.rglob("*.toml"))
            if not found:
                problems.append(Problem(raw, 1, 1, "folder holds no .toml files"))
            files.extend(found)
        else:
            files.append(p)
    for f in files:
        try:
            src = load_toml(f)
        except TomlFileError as exc:
            problems.append(exc.problem)
            continue
        if "site" in src.data and "runbook" not in src.data:
            problems.extend(validate_site(src))
        else:
            build_runbook(src, problems)
    return len(files), problems


def build_runbook(src: SourceFile, problems: list[Problem]) -> Runbook | None:
    """Check everything in a parsed runbook; append problems; the Runbook if usable."""
    data = src.data
    check_keys(src, data, (), _TOP, ("runbook", "steps"), "a runbook", problems)
    head = data.get("runbook", {})
    if not isinstance(head, dict):
        problems.append(src.problem(("runbook",), "[runbook] must be a table"))
        head = {}
    check_keys(src, head, ("runbook",), _HEAD, ("id", "title", "rto"), "[runbook]", problems)
    for key in ("id", "title", "scenario", "description", "kind"):
        expect_type(src, head, ("runbook",), key, str, "a string", problems)
    rto = expect_duration(src, head, ("runbook",), "rto", problems)
    rpo = expect_duration(src, head, ("runbook",), "rpo", problems)
    scenario = head.get("scenario", "")
    if scenario and scenario not in SCENARIOS:
        problems.append(
            src.problem(
                ("runbook", "scenario"),
                f'unknown scenario "{scenario}"{did_you_mean(str(scenario), SCENARIOS)}',
            )
        )

    params = _params(src, data.get("params", {}), problems)
    steps = _steps(src, data.get("steps", []), params, problems)
    _graph(src, steps, problems)
    if not isinstance(head.get("id"), str) or not steps:
        return None
    return Runbook(
        id=head["id"],
        title=str(head.get("title", head["id"])),
        rto=rto or 0.0,
        rpo=rpo or 0.0,
        scenario=str(scenario),
        description=str(head.get("description", "")),
        params=params,
        steps={s.id: s for s in steps},
        path=src.path,
        text=src.text,
        kind=str(head.get("kind", "")),
    )


def _params(src: SourceFile, table: Any, problems: list[Problem]) -> dict[str, Param]:
    out: dict[str, Param] = {}
    if not isinstance(table, dict):
        problems.append(
            src.problem(("params",), "[params] must be a table of [params.NAME] tables")
        )
        return out
    for name, spec in table.items():
        kp: KeyPath = ("params", name)
        if not isinstance(spec, dict):
            problems.append(src.problem(kp, f'param "{name}" must be a table with a type'))
            continue
        if name in BUILTINS:
            problems.append(src.problem(kp, f'param name "{name}" is reserved'))
        check_keys(src, spec, kp, _PARAM_KEYS, ("type",), f'param "{name}"', problems)
        ptype = spec.get("type")
        if ptype is not None and ptype not in PARAM_TYPES:
            problems.append(
                src.problem(
                    (*kp, "type"),
                    f'param "{name}" has unknown type "{ptype}"'
                    f"{did_you_mean(str(ptype), PARAM_TYPES)}; use one of {', '.join(PARAM_TYPES)}",
                )
            )
            continue
        if ptype == "duration" and "default" in spec:
            expect_duration(src, spec, kp, "default", problems)
        if ptype == "time" and "default" in spec:
            try:
                canonical_time(str(spec["default"]))
            except ValueError as exc:
                problems.append(src.problem((*kp, "default"), f'param "{name}": {exc}'))
        out[name] = Param(
            name,
            ptype or "string",
            str(spec.get("help", "")),
            spec.get("default"),
            tuple(str(c) for c in spec.get("choices", [])),
        )
    return out


def _check_field(
    src: SourceFile, kp: KeyPath, key: str, value: Any, spec: Field, problems: list[Problem]
) -> None:
    kinds: dict[str, tuple[tuple[type, ...], str]] = {
        "command": ((str,), "a string"),
        "text": ((str,), "a string"),
        "str": ((str,), "a string"),
        "int": ((int,), "an integer"),
        "bool": ((bool,), "true or false"),
        "list": ((list,), "a list"),
        "table": ((dict,), "a table"),
        "number": ((int, float), "a number"),
    }
    if spec.kind == "duration":
        try:
            parse_duration(value)
        except ValueError as exc:
            problems.append(src.problem((*kp, key), f'bad duration for "{key}": {exc}'))
        return
    types, label = kinds[spec.kind]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        problems.append(src.problem((*kp, key), f'"{key}" must be {label}'))
        return
    if spec.choices and isinstance(value, str) and "{" not in value and value not in spec.choices:
        problems.append(
            src.problem(
                (*kp, key),
                f'"{key}" = "{value}" is not one of {", ".join(spec.choices)}'
                f"{did_you_mean(value, spec.choices)}",
            )
        )


def _steps(
    src: SourceFile, table: Any, params: dict[str, Param], problems: list[Problem]
) -> list[Step]:
    if not isinstance(table, list) or not table:
        problems.append(src.problem(("steps",), "a runbook needs at least one [[steps]] table"))
        return []
    steps: list[Step] = []
    seen: set[str] = set()
    # A rollback step runs on the node whose step failed, so {node} is defined in it.
    node_rollbacks = {
        r["on_failure"]
        for r in table
        if isinstance(r, dict)
        and isinstance(r.get("on_failure"), str)
        and ("for_each" in r or "node" in r)
    }
    for i, raw in enumerate(table):
        kp: KeyPath = ("steps", i)
        if not isinstance(raw, dict):
            problems.append(src.problem(kp, "each [[steps]] entry must be a table"))
            continue
        sid = raw.get("id")
        label = f'step "{sid}"' if isinstance(sid, str) else f"step #{i + 1}"
        if "id" not in raw:
            problems.append(src.problem(kp, f'{label} is missing required key "id"'))
        elif not isinstance(sid, str) or not _ID.match(sid):
            problems.append(
                src.problem((*kp, "id"), f"{label}: id must be lowercase letters, digits, - or _")
            )
        elif sid in seen:
            problems.append(src.problem((*kp, "id"), f'duplicate step id "{sid}"'))
        action_name = raw.get("action")
        action = REGISTRY.get(action_name) if isinstance(action_name, str) else None
        if "action" not in raw:
            problems.append(src.problem(kp, f'{label} is missing required key "action"'))
        elif action is None:
            problems.append(
                src.problem(
                    (*kp, "action"),
                    f'{label}: unknown action "{action_name}"'
                    f"{did_you_mean(str(action_name), REGISTRY)}",
                )
            )
        fields = action.fields if action else {}
        allowed = (*_COMMON, *fields)
        if action is not None:
            check_keys(src, raw, kp, allowed, (), label, problems)
            for fname, spec in fields.items():
                if spec.required and fname not in raw:
                    problems.append(
                        src.problem(kp, f'{label}: action {action_name} needs "{fname}"')
                    )
                elif fname in raw:
                    _check_field(src, kp, fname, raw[fname], spec, problems)
        common_ok = all(
            [
                expect_type(src, raw, kp, "title", str, "a string", problems),
                expect_type(src, raw, kp, "needs", list, "a list of step ids", problems),
                expect_type(
                    src, raw, kp, "gate", str, 'a string ("confirm" or "type:{node}")', problems
                ),
                expect_type(src, raw, kp, "node", str, "a string", problems),
                expect_type(src, raw, kp, "concurrency", int, "an integer", problems),
                expect_type(src, raw, kp, "retries", int, "an integer", problems),
                expect_type(
                    src,
                    raw,
                    kp,
                    "on_failure",
                    str,
                    'a string ("abort", "continue" or a step id)',
                    problems,
                ),
                expect_type(
                    src,
                    raw,
                    kp,
                    "expect",
                    dict,
                    'a table like { exit = 0, stdout = "regex" }',
                    problems,
                ),
                expect_type(src, raw, kp, "guide", str, "a Markdown string", problems),
            ]
        )
        timeout = expect_duration(src, raw, kp, "timeout", problems)
        backoff = expect_duration(src, raw, kp, "backoff", problems)
        estimate = expect_duration(src, raw, kp, "estimate", problems)
        if isinstance(raw.get("concurrency"), int) and raw["concurrency"] < 1:
            problems.append(src.problem((*kp, "concurrency"), "concurrency must be at least 1"))
        if isinstance(raw.get("retries"), int) and raw["retries"] < 0:
            problems.append(src.problem((*kp, "retries"), "retries must be 0 or more"))
        gate = raw.get("gate")
        if isinstance(gate, str) and gate != "confirm" and not gate.startswith("type:"):
            problems.append(
                src.problem((*kp, "gate"), f'gate must be "confirm" or "type:VALUE", not "{gate}"')
            )
        if isinstance(gate, str) and gate.startswith("type:") and not gate[5:].strip():
            problems.append(
                src.problem(
                    (*kp, "gate"), 'a typed gate needs the value to type, e.g. "type:{node}"'
                )
            )
        approvers = raw.get("approvers", 1)
        if "approvers" in raw:
            if not isinstance(approvers, int) or isinstance(approvers, bool):
                problems.append(src.problem((*kp, "approvers"), "approvers must be an integer"))
                approvers = 1
            elif not 1 <= approvers <= MAX_APPROVERS:
                problems.append(
                    src.problem(
                        (*kp, "approvers"),
                        f"approvers must be between 1 and {MAX_APPROVERS}, not {approvers}",
                    )
                )
                approvers = 1
            elif approvers > 1 and not gate:
                problems.append(
                    src.problem(
                        (*kp, "approvers"),
                        f"{label}: approvers = {approvers} needs a gate "
                        '(gate = "confirm" or "type:VALUE") for them to confirm',
                    )
                )
        for_each = _for_each(src, kp, raw.get("for_each"), params, problems)
        has_node = (
            "for_each" in raw or "node" in raw or (isinstance(sid, str) and sid in node_rollbacks)
        )
        if action is not None and action.needs_node and not has_node:
            problems.append(
                src.problem(
                    kp, f"{label}: action {action_name} runs on a node; add for_each or node"
                )
            )
        if (
            action is not None
            and action.destructive
            and not gate
            and not (action_name == "backup.prune" and raw.get("dry_run", True) is True)
        ):
            problems.append(
                src.problem(
                    kp,
                    f"{label}: action {action_name} is destructive and needs a gate "
                    '(gate = "confirm" or "type:{node}")',
                )
            )
        expect = _expect(src, kp, raw.get("expect"), problems)
        _check_templates(src, kp, raw, fields, params, has_node, problems)
        if not isinstance(sid, str) or action is None or not common_ok:
            continue
        seen.add(sid)
        steps.append(
            Step(
                id=sid,
                action=str(action_name),
                title=str(raw.get("title", "")),
                fields={k: v for k, v in raw.items() if k in fields},
                needs=tuple(raw.get("needs", [])),
                gate=gate,
                for_each=for_each,
                node=raw.get("node"),
                concurrency=int(raw.get("concurrency", 0)),
                timeout=timeout,
                retries=int(raw.get("retries", 0)),
                backoff=backoff if backoff is not None else 1.0,
                on_failure=str(raw.get("on_failure", "abort")),
                expect=expect,
                guide=str(raw.get("guide", "")),
                estimate=estimate,
                approvers=approvers,
            )
        )
    return steps


def _for_each(
    src: SourceFile, kp: KeyPath, value: Any, params: dict[str, Param], problems: list[Problem]
) -> ForEach | None:
    """The one reading of `for_each`: its typed target, or None (absent or with a problem)."""
    if value is None:
        return None
    where = (*kp, "for_each")
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            problems.append(src.problem(where, "for_each list must hold node names"))
            return None
        return ForEach(nodes=tuple(value))
    if not isinstance(value, str):
        problems.append(
            src.problem(where, 'for_each must be a node list, "group:NAME" or a param name')
        )
        return None
    if value.startswith("group:"):
        if not value[6:]:
            problems.append(src.problem(where, 'for_each "group:" needs a group name'))
            return None
        return ForEach(group=value[6:])
    name = value.strip("{}")
    if name not in params:
        problems.append(
            src.problem(
                where,
                f'for_each "{value}" is not a node list, "group:NAME" or a param'
                f"{did_you_mean(name, params)}",
            )
        )
    elif params[name].type not in ("node", "nodes", "group"):
        problems.append(
            src.problem(where, f'for_each param "{name}" must be of type node, nodes or group')
        )
    else:
        return ForEach(param=name)
    return None


def _expect(src: SourceFile, kp: KeyPath, value: Any, problems: list[Problem]) -> Expect | None:
    if not isinstance(value, dict):
        return None
    ekp = (*kp, "expect")
    check_keys(src, value, ekp, ("exit", "stdout", "stderr"), (), "expect", problems)
    exit_codes: tuple[int, ...] = (0,)
    raw_exit = value.get("exit", 0)
    if isinstance(raw_exit, int) and not isinstance(raw_exit, bool):
        exit_codes = (raw_exit,)
    elif isinstance(raw_exit, list) and raw_exit and all(isinstance(c, int) for c in raw_exit):
        exit_codes = tuple(raw_exit)
    else:
        problems.append(
            src.problem((*ekp, "exit"), "expect.exit must be an exit code or a list of them")
        )
    for key in ("stdout", "stderr"):
        pattern = value.get(key)
        if pattern is None:
            continue
        if not isinstance(pattern, str):
            problems.append(
                src.problem((*ekp, key), f"expect.{key} must be a regular expression string")
            )
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(
                src.problem((*ekp, key), f"expect.{key} is not a valid regular expression: {exc}")
            )
    return Expect(exit_codes, value.get("stdout"), value.get("stderr"))


def _check_templates(
    src: SourceFile,
    kp: KeyPath,
    raw: dict[str, Any],
    fields: dict[str, Field],
    params: dict[str, Param],
    has_node: bool,
    problems: list[Problem],
) -> None:
    keys = [k for k, spec in fields.items() if spec.templated and k in raw]
    keys += [k for k in ("title", "gate", "node") if isinstance(raw.get(k), str)]
    for key in keys:
        for text in _strings(raw[key]):
            try:
                found = placeholders(text)
            except ValueError as exc:
                problems.append(src.problem((*kp, key), f'bad template in "{key}": {exc}'))
                continue
            for root, attr in found:
                problem = _undefined(root, attr, params, has_node)
                if problem:
                    problems.append(src.problem((*kp, key), f'"{key}": {problem}'))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _undefined(root: str, attr: str | None, params: dict[str, Param], has_node: bool) -> str | None:
    if root == "node" and has_node and "node" not in params:
        attrs: tuple[str, ...] | None = NODE_ATTRS
    elif root in params:
        attrs = _PARAM_ATTRS.get(params[root].type, ())
    elif root in BUILTINS:
        attrs = BUILTINS[root]
    else:
        hint = did_you_mean(root, [*params, *BUILTINS, *(["node"] if has_node else [])])
        extra = " ({node} exists only in steps with for_each or node)" if root == "node" else ""
        return f"undefined template variable {{{root}}}{hint}{extra}"
    if attr is not None and attrs is not None and attr not in attrs:
        if not attrs:
            return f"{{{root}}} has no attribute .{attr}"
        return f"{{{root}.{attr}}}: unknown attribute{did_you_mean(attr, attrs)}; has {', '.join(attrs)}"
    return None


def _graph(src: SourceFile, steps: list[Step], problems: list[Problem]) -> None:
    """needs that name unknown steps, on_failure targets, cycles, unreachable steps."""
    raw_steps = _all_raw_steps(src)
    index = {s.id: i for i, s in enumerate(raw_steps)}
    # Steps with other problems still count as existing, so one typo does not cascade.
    ids = {s.id for s in raw_steps}

    def at(sid: str, key: str | None = None) -> KeyPath:
        base: KeyPath = ("steps", index.get(sid, 0))
        return (*base, key) if key else base

    for s in steps:
        for need in s.needs:
            if need == s.id:
                problems.append(src.problem(at(s.id, "needs"), f'step "{s.id}" needs itself'))
            elif need not in ids:
                problems.append(
                    src.problem(
                        at(s.id, "needs"),
                        f'step "{s.id}" needs unknown step "{need}"{did_you_mean(need, ids)}',
                    )
                )
        if s.on_failure not in ("abort", "continue"):
            if s.on_failure == s.id:
                problems.append(
                    src.problem(at(s.id, "on_failure"), f'step "{s.id}" cannot be its own rollback')
                )
            elif s.on_failure not in ids:
                problems.append(
                    src.problem(
                        at(s.id, "on_failure"),
                        f'on_failure must be "abort", "continue" or a step id; '
                        f'"{s.on_failure}" is none{did_you_mean(s.on_failure, ids)}',
                    )
                )
    by_id = {s.id: s for s in steps}
    # Cycles: depth-first search, reporting each cycle once at its first step in file order.
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(sid: str, path: list[str]) -> None:
        state[sid] = 1
        path.append(sid)
        for need in by_id[sid].needs:
            if need not in by_id or need == sid:
                continue
            if state.get(need) == 1:
                cycle = path[path.index(need) :] + [need]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    first = min(cycle[:-1], key=lambda x: index.get(x, 0))
                    problems.append(
                        src.problem(at(first, "needs"), "cycle in needs: " + " -> ".join(cycle))
                    )
            elif state.get(need) is None:
                visit(need, path)
        path.pop()
        state[sid] = 2

    for s in steps:
        if state.get(s.id) is None:
            visit(s.id, [])
    rollback = {s.on_failure for s in steps if s.on_failure in ids}
    for sid in rollback:
        if by_id[sid].needs:
            problems.append(
                src.problem(
                    at(sid, "needs"),
                    f'rollback step "{sid}" must not have needs: it runs only when a step fails',
                )
            )
    # Unreachable: anything that (transitively) needs a rollback-only step never runs normally.
    blocked: set[str] = set()
    changed = True
    while changed:
        changed = False
        for s in steps:
            if s.id in blocked or s.id in rollback:
                continue
            bad = [n for n in s.needs if n in rollback or n in blocked]
            if bad:
                blocked.add(s.id)
                changed = True
                problems.append(
                    src.problem(
                        at(s.id, "needs"),
                        f'step "{s.id}" is unreachable: it needs '
                        f'"{bad[0]}", which runs only as a rollback',
                    )
                )


def _all_raw_steps(src: SourceFile) -> list[Step]:
    raw = src.data.get("steps", [])
    out = []
    for r in raw if isinstance(raw, list) else []:
        if isinstance(r, dict) and isinstance(r.get("id"), str):
            out.append(Step(id=r["id"], action=""))
        else:
            out.append(Step(id=f"#{len(out)}", action=""))
    return out
