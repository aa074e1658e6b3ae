"""Faults the lab can inject, their spec syntax, and the control file `DIR/faults.toml`.

A spec is a comma-separated list of `KIND=ARG` items, the same on the command line
(`--faults`), in `Lab.set_fault()` and in the control file, which a running lab re-reads
so another process (a test, `python -m kconsole.lab fault`, an operator with an editor)
can break and mend the fleet while a drill runs.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kconsole.config import parse_duration
from kconsole.errors import UsageError
from kconsole.fsutil import atomic_write

FAULT_KINDS: dict[str, str] = {
    "down": "down=NODE            host off: SSH and health connections closed, service killed; clearing boots it",
    "partition": "partition=NODE       host unreachable over the network; it keeps running",
    "slow": "slow=NODE[:SECONDS]  every chunk on the node's link delayed (default 0.5)",
    "flaky": "flaky=NODE[:BYTES]   every SSH connection cut after BYTES (default 65536; k/m suffixes)",
    "fail": "fail=NODE:COMMAND    COMMAND exits 1 with a message on that node",
    "diskfull": "diskfull=NODE        writes fail with 'No space left on device'; the service crashes",
    "crash": "crash=NODE           kaldrix-node is killed once (unit left failed)",
    "wipe": "wipe=NODE            chain state destroyed and the service crashed (once)",
    "compromise": "compromise=NODE      an implant and a foreign validator key are planted",
    "corrupt": "corrupt=latest[:NODE[:KIND]][@primary|dr|cloud]  one byte flipped in the newest such backup",
    "s3": "s3=error|down|slow[:SECONDS]  the S3 endpoint answers 503, refuses, or is slow",
}
"""Every fault kind with its syntax and effect (shown in help and the control file)."""

LOCATIONS = ("primary", "dr", "cloud")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMAND = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


class FaultSpecError(UsageError):
    """A fault spec that cannot be parsed."""


@dataclass(frozen=True)
class Fault:
    """One injected fault."""

    kind: str
    target: str = ""
    """The node; for `corrupt` the `NODE[:KIND]` filter; for `s3` the mode."""
    arg: str = ""
    """Seconds (slow, s3 slow), bytes (flaky), command (fail) or location (corrupt)."""

    def __str__(self) -> str:
        if self.kind == "corrupt":
            sel = "latest" + (f":{self.target}" if self.target else "")
            return f"corrupt={sel}" + (f"@{self.arg}" if self.arg != "primary" else "")
        if self.kind == "s3":
            return f"s3={self.target}" + (f":{self.arg}" if self.arg else "")
        return f"{self.kind}={self.target}" + (f":{self.arg}" if self.arg else "")

    @property
    def identity(self) -> tuple[str, ...]:
        """Two faults with the same identity are the same fault (the later replaces the earlier)."""
        if self.kind in ("fail", "corrupt"):
            return (self.kind, self.target, self.arg)
        if self.kind == "s3":
            return ("s3",)
        return (self.kind, self.target)

    @property
    def node(self) -> str:
        """The node the fault is about ('' for s3 and an unfiltered corrupt)."""
        if self.kind == "s3":
            return ""
        return self.target.split(":", 1)[0]

    @property
    def seconds(self) -> float:
        """The delay of a slow fault."""
        return float(self.arg) if self.arg else 0.5

    @property
    def bytes(self) -> int:
        """The byte budget of a flaky fault."""
        return int(self.arg) if self.arg else 65536

    def covers(self, other: Fault) -> bool:
        """True if clearing `self` (a pattern, maybe without arg) should clear `other`."""
        if self.kind != other.kind:
            return False
        if self.kind == "s3":
            return True
        if self.target and self.target != other.target:
            return False
        return not (self.kind in ("fail", "corrupt") and self.arg and self.arg != other.arg)


def _bad(item: str, why: str) -> FaultSpecError:
    return FaultSpecError(f'bad fault "{item}": {why}; write e.g. "down=validator2,slow=api1:0.5"')


def _seconds(item: str, text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError:
            raise _bad(item, f'"{text}" is not a number of seconds') from None
    if value < 0 or value > 600:
        raise _bad(item, "the delay must be between 0 and 600 seconds")
    return f"{value:g}"


def _bytes(item: str, text: str) -> str:
    m = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not m:
        raise _bad(item, f'"{text}" is not a byte count (e.g. 65536, 64k, 1m)')
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()]
    return str(n)


def parse_fault(item: str, *, pattern: bool = False) -> Fault:
    """One `KIND=ARG` item. With `pattern`, arguments may be left out (for clearing)."""
    text = item.strip()
    kind, eq, arg = text.partition("=")
    kind = kind.strip().lower()
    if kind not in FAULT_KINDS:
        known = ", ".join(FAULT_KINDS)
        raise _bad(item, f'unknown fault kind "{kind}" (known: {known})')
    arg = arg.strip()
    if not eq or not arg:
        if pattern:
            return Fault(kind)
        raise _bad(item, f"{kind} needs an argument: {FAULT_KINDS[kind].split()[0]}")
    if kind == "s3":
        mode, _, value = arg.partition(":")
        if mode not in ("error", "down", "slow"):
            raise _bad(item, "s3 takes error, down or slow[:SECONDS]")
        return Fault(
            "s3",
            mode,
            _seconds(item, value)
            if mode == "slow" and value
            else ("0.5" if mode == "slow" else ""),
        )
    if kind == "corrupt":
        sel, _, location = arg.partition("@")
        location = location or ("" if pattern else "primary")
        if location and location not in LOCATIONS:
            raise _bad(item, f'unknown location "{location}" (one of {", ".join(LOCATIONS)})')
        first, _, filt = sel.partition(":")
        if first != "latest":
            raise _bad(item, "corrupt takes latest[:NODE[:KIND]][@LOCATION]")
        node = filt.partition(":")[0]
        if node and not _NAME.match(node):
            raise _bad(item, f'"{node}" is not a node name')
        return Fault("corrupt", filt, location)
    node, _, value = arg.partition(":")
    if not _NAME.match(node):
        raise _bad(item, f'"{node}" is not a node name')
    if kind == "slow":
        return Fault(kind, node, _seconds(item, value) if value else ("" if pattern else "0.5"))
    if kind == "flaky":
        return Fault(kind, node, _bytes(item, value) if value else ("" if pattern else "65536"))
    if kind == "fail":
        if not value:
            if pattern:
                return Fault(kind, node)
            raise _bad(item, "fail needs NODE:COMMAND, e.g. fail=validator3:systemctl")
        if not _COMMAND.match(value):
            raise _bad(item, f'"{value}" is not a command name')
        return Fault(kind, node, value)
    if value:
        raise _bad(item, f"{kind} takes just a node name")
    return Fault(kind, node)


def split_spec(spec: str | Iterable[str]) -> list[str]:
    """The items of a spec given as one comma-separated string or as a list of items."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    return [p.strip() for part in parts for p in part.split(",") if p.strip()]


def parse_faults(spec: str | Iterable[str]) -> list[Fault]:
    """Every fault in `spec`, later items replacing earlier ones with the same identity."""
    out: dict[tuple[str, ...], Fault] = {}
    for item in split_spec(spec):
        fault = parse_fault(item)
        out.pop(fault.identity, None)
        out[fault.identity] = fault
    return list(out.values())


def render_fault_file(faults: Iterable[Fault]) -> str:
    """The text of DIR/faults.toml for `faults`."""
    lines = [
        "# kconsole lab faults. Edit and save: the running lab applies this list within a second.",
        "# Remove an entry to clear it. Kinds:",
        *(f"#   {text}" for text in FAULT_KINDS.values()),
        "faults = [",
        *(f'  "{f}",' for f in faults),
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_fault_file(path: Path, faults: Iterable[Fault]) -> str:
    """Write the control file atomically; returns the text written."""
    text = render_fault_file(faults)
    atomic_write(path, text.encode(), mode=0o644)
    return text


def read_fault_file(path: Path) -> list[Fault]:
    """The faults listed in the control file; FaultSpecError naming the file if it is bad."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FaultSpecError(f"{path}: {exc}") from None
    raw = data.get("faults", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise FaultSpecError(f'{path}: faults must be a list of strings such as "down=validator2"')
    try:
        return parse_faults(raw)
    except FaultSpecError as exc:
        raise FaultSpecError(f"{path}: {exc}") from None
