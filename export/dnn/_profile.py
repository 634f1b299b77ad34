"""profile.json: its JSON schema (``profile.schema.json`` beside this module), validation and
writing. The schema is the contract with the device and the edge (docs/export-dnn.md)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from export._errors import ExportError
from ondevice.common import jsonout
from ondevice.common.files import atomic_output

PROFILE_NAME = "profile.json"
SCHEMA_NAME = "profile.schema.json"


@cache
def profile_schema() -> dict[str, Any]:
    """The profile's JSON schema (draft 2020-12)."""
    text = resources.files("export.dnn").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")
    return json.loads(text)


def validate_profile(profile: dict[str, Any]) -> None:
    """Raise ExportError unless `profile` matches the schema and its per-channel arrays agree
    with each split's channel count (what a schema cannot say)."""
    import jsonschema

    try:
        jsonschema.validate(profile, profile_schema(), cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise ExportError(f"profile.json invalid at {where}: {e.message}") from None
    for split in profile["splits"]:
        f = split["feature"]
        c, h, w = f["shape"]
        if f["channels"] != c or f["bytes"] != c * h * w or f["bytes_per_channel"] != h * w:
            raise ExportError(f"split {split['index']}: feature sizes disagree with its shape")
        for key in ("scale", "zero_point", "mean", "min", "max", "importance", "importance_order"):
            if len(f[key]) != c:
                raise ExportError(f"split {split['index']}: feature.{key} has {len(f[key])} != {c}")
        if sorted(f["importance_order"]) != list(range(c)):
            raise ExportError(f"split {split['index']}: importance_order is not a permutation")
        fractions = [p["fraction"] for p in split["accuracy_curve"]]
        if fractions != sorted(fractions) or fractions[-1] != 1.0:
            raise ExportError(f"split {split['index']}: accuracy_curve must rise to fraction 1")


def write_profile(path: Path, profile: dict[str, Any]) -> None:
    """Validate `profile` and write it to `path` atomically (indented JSON)."""
    validate_profile(profile)
    with atomic_output(path) as tmp:
        tmp.write_text(jsonout.dumps(profile, indent=1) + "\n", encoding="utf-8")


def load_profile(path: Path) -> dict[str, Any]:
    """Read and validate a profile.json."""
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from None
    validate_profile(profile)
    return profile
