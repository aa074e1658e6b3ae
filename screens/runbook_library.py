"""The runbooks the console offers: the site's own `runbooks/` first, then the shipped ones."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kconsole.errors import KconsoleError
from kconsole.runbook import load_runbook
from kconsole.runbook.model import Runbook


@dataclass
class RunbookEntry:
    """A runbook file found on disk: loaded, or the first problem that stops it loading."""

    path: Path
    runbook: Runbook | None
    problem: str = ""

    @property
    def id(self) -> str:
        """The runbook's id, or the file's stem if it did not load."""
        return self.runbook.id if self.runbook else self.path.stem


def find_runbooks(dirs: Iterable[Path]) -> list[RunbookEntry]:
    """Every runbook in `dirs`, an id found in an earlier directory hiding later ones (blocking)."""
    seen: set[str] = set()
    out: list[RunbookEntry] = []
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                entry = RunbookEntry(path, load_runbook(path))
            except KconsoleError as exc:  # an invalid file is listed with its first problem
                entry = RunbookEntry(path, None, (str(exc).splitlines() or ["invalid runbook"])[0])
            if entry.id in seen:
                continue
            seen.add(entry.id)
            out.append(entry)
    return out
