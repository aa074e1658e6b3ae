"""Runbooks: TOML step graphs, their validation, parameters and templating."""

from kconsole.runbook.load import load_runbook, resolve_runbook_path, validate_paths
from kconsole.runbook.model import Param, Runbook, Step

__all__ = ["Param", "Runbook", "Step", "load_runbook", "resolve_runbook_path", "validate_paths"]
