"""The ``ondevice`` command line: one module per command, `main` the entry point."""

from ondevice.cli.main import main

__all__ = ["main"]
