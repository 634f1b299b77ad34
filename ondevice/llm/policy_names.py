"""The drafting policies' names and GELATO's default V: what a command line lists and
defaults to, kept apart from the policies themselves (numpy, the controller's math) so that
``ondevice generate --help`` loads neither."""

from __future__ import annotations

POLICIES = ("gelato", "fixed", "adaedl", "hf-heuristic", "device-only", "edge-only")
DEFAULT_V = 2.0  # J per token: the queue's price of one expected token (see docs/gelato.md)
