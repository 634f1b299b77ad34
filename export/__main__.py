"""`python -m export` runs the `model-export` CLI."""

from export.cli import main

raise SystemExit(main())
