"""Reading the operator's TOML files with positions: problems, source maps, durations."""

from kconsole.config.durations import format_duration, parse_duration
from kconsole.config.problems import Problem, ProblemList
from kconsole.config.source import SourceFile, load_toml

__all__ = [
    "Problem",
    "ProblemList",
    "SourceFile",
    "format_duration",
    "load_toml",
    "parse_duration",
]
