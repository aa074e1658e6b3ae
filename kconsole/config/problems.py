"""A problem found in a file, reported as `PATH:LINE:COL: message`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from kconsole.errors import UsageError


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one place in one file."""

    path: str
    line: int
    col: int
    message: str

    def __post_init__(self) -> None:
        # A value quoted from the file may hold a newline; a problem is always one line.
        clean = self.message.replace("\r", "\\r").replace("\n", "\\n")
        object.__setattr__(self, "message", clean)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class ProblemList(list[Problem]):
    """The problems of one or more files, in file order."""

    def raise_if_any(self) -> None:
        """Raise a UsageError carrying every problem, one per line."""
        if self:
            raise InvalidFile(self)


class InvalidFile(UsageError):
    """A runbook or site file failed validation; str() lists every problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean "x"?)` suffix when a close match exists, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
