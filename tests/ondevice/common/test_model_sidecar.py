"""ondevice.common.model_sidecar.load_sidecar on hand-written sidecars (no llama.cpp needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from ondevice.common.model_sidecar import SCHEMA, SidecarError, load_sidecar, sidecar_path

MODEL_BYTES = b"GGUF" + bytes(range(256)) * 4


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(MODEL_BYTES)
    return path


def _sidecar(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "model": "m.gguf",
        "size_bytes": len(MODEL_BYTES),
        "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
        "preset": "rpi5",
        "type": "q4_0",
        "runtime": {"n_threads": 4, "n_gpu_layers": 0, "n_ctx": 4096},
        "sources": {"type": "t", "n_threads": "n", "n_gpu_layers": "g", "n_ctx": "c"},
    }
    data.update(overrides)
    return data


def _write(model: Path, data: object) -> None:
    sidecar_path(model).write_text(json.dumps(data))


def test_no_sidecar_is_none_and_a_missing_model_is_an_error(tmp_path: Path) -> None:
    model = _model(tmp_path)
    assert sidecar_path(model) == tmp_path / "m.gguf.json"
    assert load_sidecar(model) is None
    with pytest.raises(FileNotFoundError):
        load_sidecar(tmp_path / "gone.gguf")


def test_valid_sidecar_round_trips(tmp_path: Path) -> None:
    model = _model(tmp_path)
    _write(model, _sidecar(runtime={"n_threads": None, "n_gpu_layers": -1, "n_ctx": 2048}))
    for verify in (False, True, True):  # the second verified load is answered from memory
        data = load_sidecar(model, verify_sha256=verify)
        assert data is not None
        assert data["runtime"] == {"n_threads": None, "n_gpu_layers": -1, "n_ctx": 2048}
        assert data["preset"] == "rpi5"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "is not valid JSON"),
        ([1, 2], "is not a JSON object"),
        (_sidecar(schema="other/2"), "has schema 'other/2'"),
        ({k: v for k, v in _sidecar().items() if k != "sha256"}, "lacks the field 'sha256'"),
        (_sidecar(size_bytes="big"), "size_bytes must be an integer"),
        (_sidecar(sha256="abc"), "sha256 must be 64 hex digits"),
        (_sidecar(runtime={"n_threads": 4, "n_ctx": 8}), "runtime.n_gpu_layers is missing"),
        (
            _sidecar(runtime={"n_threads": 0, "n_gpu_layers": 0, "n_ctx": 8}),
            "runtime.n_threads has an invalid value 0",
        ),
        (
            _sidecar(runtime={"n_threads": 2, "n_gpu_layers": -2, "n_ctx": 8}),
            "runtime.n_gpu_layers has an invalid value -2",
        ),
        (
            _sidecar(runtime={"n_threads": 2, "n_gpu_layers": 0, "n_ctx": True}),
            "runtime.n_ctx has an invalid value True",
        ),
        (_sidecar(size_bytes=12), "describes a file of 12 bytes"),
    ],
    ids=[
        "not-json", "not-object", "schema", "missing-field", "size-type", "sha-format",
        "runtime-missing", "threads-zero", "gpu-layers", "ctx-bool", "size-mismatch",
    ],
)  # fmt: skip
def test_bad_sidecars_raise_one_line(tmp_path: Path, data: object, message: str) -> None:
    model = _model(tmp_path)
    if isinstance(data, str):
        sidecar_path(model).write_text(data)
    else:
        _write(model, data)
    with pytest.raises(SidecarError, match=message) as info:
        load_sidecar(model)
    assert "\n" not in str(info.value) and str(sidecar_path(model)) in str(info.value)


def test_hash_mismatch_only_when_verifying(tmp_path: Path) -> None:
    model = _model(tmp_path)
    _write(model, _sidecar(sha256="0" * 64))
    assert load_sidecar(model) is not None
    with pytest.raises(SidecarError, match="the model changed after export"):
        load_sidecar(model, verify_sha256=True)
