"""kconsole: backup and disaster recovery console for a node fleet (the engine)."""

__version__ = "0.1.0"
