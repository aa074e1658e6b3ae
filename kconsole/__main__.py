"""`python -m kconsole` runs the CLI."""

from kconsole.cli import main

raise SystemExit(main())
