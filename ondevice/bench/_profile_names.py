"""The names of the built-in hardware profiles (``profiles/*.json``): standard library only,
so that ``ondevice bench gelato --help`` can list them without loading numpy."""

from __future__ import annotations

import json
from importlib import resources


def profile_names(kind: str) -> list[str]:
    """Names of the built-in profiles of ``kind`` ("device" or "edge")."""
    out = []
    for entry in resources.files("ondevice.bench").joinpath("profiles").iterdir():
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text())
            if data.get("kind") == kind:
                out.append(data["name"])
    return sorted(out)
