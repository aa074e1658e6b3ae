"""SVG snapshot tests of the console's screens (pytest-textual-snapshot)."""
