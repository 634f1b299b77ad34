"""`dnn split` on digits-cnn: exact splits, INT8 heads, the profile, the accuracy curve.

Everything runs the written ONNX files with onnxruntime on load_digits' held-out split (real
labels), independently of the numbers the command stored.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'coinfer[export]'")
pytest.importorskip("onnx", reason="needs onnx: pip install 'coinfer[export]'")

import onnx
import onnxruntime as ort
from dnn_helpers import digits_cache, digits_split

from export.dnn import SplitResult, load_or_train_digits, split_model
from export.dnn._data import load_digits_split, normalize
from export.dnn._graph import analyze, extract
from ondevice.common.feature_codec import FeatureCodec, partial_feature

SCHEMA = Path(__file__).resolve().parents[2] / "export" / "dnn" / "profile.schema.json"


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> SplitResult:
    return digits_split(tmp_path_factory)


@pytest.fixture(scope="module")
def heldout(result: SplitResult) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits (normalized [N, 1, 8, 8]) and labels, rebuilt from the profile."""
    profile = result.profile
    split = load_digits_split(profile["model"]["info"]["train_seed"])
    assert profile["data"]["evaluation"]["indices"] == split.test_indices.tolist()
    inp = profile["model"]["input"]
    return normalize(split.test_x, inp["mean"], inp["std"]), split.test_y


def _run(path: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    data = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_writes_a_head_and_tail_per_split(result: SplitResult) -> None:
    names = {p.name for p in result.out_dir.iterdir()}
    indices = [s["index"] for s in result.profile["splits"]]
    assert indices == [1, 2, 3]  # --splits all: every block boundary
    for s in indices:
        assert {f"head_{s}.onnx", f"tail_{s}.onnx"} <= names
    assert {"model.onnx", "profile.json"} <= names
    assert [s["block"] for s in result.profile["splits"]] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [tuple(s["feature"]["shape"]) for s in result.profile["splits"]] == [
        (16, 8, 8),
        (32, 4, 4),
        (64, 2, 2),
    ]


def test_fp32_head_plus_tail_equals_the_full_model(
    result: SplitResult, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = heldout
    full = _run(result.out_dir / "model.onnx", x)  # [N, 10]
    info = analyze(onnx.load(result.out_dir / "model.onnx"))
    by_tensor = {b.tensor: b for b in info.boundaries}
    for s in result.profile["splits"]:
        head, _ = extract(info, by_tensor[s["tensor"]])
        feature = _run(head, x)
        assert feature.shape[1:] == tuple(s["feature"]["shape"])
        out = _run(result.out_dir / s["tail"]["file"], feature)
        assert np.abs(out - full).max() <= 1e-4 * max(1.0, np.abs(full).max())
        assert s["check"]["max_abs_diff"] <= 1e-4 * max(1.0, np.abs(full).max())


def test_int8_heads_agree_with_fp32_on_heldout_top1(
    result: SplitResult, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = heldout
    ref = _run(result.out_dir / "model.onnx", x).argmax(axis=1)
    for s in result.profile["splits"]:
        head = onnx.load(result.out_dir / s["head"]["file"])
        ops = {n.op_type for n in head.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        int8_weights = [i for i in head.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        assert int8_weights and any(len(i.dims) == 4 for i in int8_weights)
        per_channel = [
            n
            for n in head.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in {i.name for i in int8_weights}
        ]
        scales = {i.name: i for i in head.graph.initializer}
        assert any(
            len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1
            for n in per_channel
        )
        feature = _run(result.out_dir / s["head"]["file"], x)
        out = _run(result.out_dir / s["tail"]["file"], feature)
        agreement = float((out.argmax(axis=1) == ref).mean())
        assert agreement >= 0.98, (s["index"], agreement)
        assert s["int8_agreement"] == pytest.approx(agreement)
        # The deployed path: 8-bit feature through the codec, every channel received.
        codec = FeatureCodec.from_profile(s)
        sent = partial_feature(codec, feature, codec.shape[0])
        codec_out = _run(result.out_dir / s["tail"]["file"], sent)
        assert float((codec_out.argmax(axis=1) == ref).mean()) >= 0.98


def test_heldout_accuracy_is_reported(
    result: SplitResult, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    model = result.profile["model"]
    measured = float((_run(result.out_dir / "model.onnx", x).argmax(axis=1) == y).mean())
    assert result.profile["data"]["evaluation"]["metric"] == "top1-accuracy"
    assert len(y) == result.profile["data"]["evaluation"]["samples"] == 450
    assert model["fp32_metric"] == pytest.approx(measured)
    assert measured >= 0.97
    assert model["info"]["heldout_accuracy_torch"] == pytest.approx(measured, abs=0.005)
    for s in result.profile["splits"]:
        assert s["int8_metric"] >= 0.96


def test_profile_validates_against_its_schema(result: SplitResult) -> None:
    schema = json.loads(SCHEMA.read_text())
    profile = json.loads((result.out_dir / "profile.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(profile, schema, cls=jsonschema.Draft202012Validator)
    broken: list[dict[str, Any]] = [json.loads(json.dumps(profile)) for _ in range(3)]
    del broken[0]["splits"]
    broken[1]["splits"][0]["feature"]["zero_point"][0] = 300
    broken[2]["splits"][0]["accuracy_curve"][0]["accuracy"] = 1.5
    for bad in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_profile_sizes_flops_latencies(result: SplitResult) -> None:
    model = result.profile["model"]
    assert model["input"]["raw_bytes"] == 64 and model["output"]["num_classes"] == 10
    assert model["labels"]["names"] == [str(i) for i in range(10)]
    for s in result.profile["splits"]:
        c, h, w = s["feature"]["shape"]
        assert s["feature"]["bytes"] == c * h * w and s["feature"]["bytes_per_channel"] == h * w
        assert s["head"]["flops"] + s["tail"]["flops"] == model["flops"]
        assert s["head"]["latency_ms"] > 0 and s["tail"]["latency_ms"] > 0
        assert s["head"]["int8_speedup"] == pytest.approx(
            s["head"]["fp32_latency_ms"] / s["head"]["latency_ms"]
        )
    flops = [s["head"]["flops"] for s in result.profile["splits"]]
    assert flops == sorted(flops)
    auto = [c["index"] for c in result.profile["candidates"] if c["auto"]]
    assert auto == [2, 3]  # blocks.0 holds under 5% of the FLOPs and a feature above 64 B


def _spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b, kind="stable")).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_accuracy_rises_with_the_fraction_of_channels(result: SplitResult) -> None:
    for s in result.profile["splits"]:
        curve = s["accuracy_curve"]
        fractions = [p["fraction"] for p in curve]
        accuracy = [p["accuracy"] for p in curve]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0
        assert accuracy[0] <= 0.3 < 0.96 <= accuracy[-1]
        assert _spearman(fractions, accuracy) >= 0.9
        assert all(b >= a - 0.03 for a, b in itertools.pairwise(accuracy))
        assert [p["channels"] for p in curve][-1] == s["feature"]["channels"]


def test_importance_order_beats_its_reverse(
    result: SplitResult, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    for s in result.profile["splits"]:
        codec = FeatureCodec.from_profile(s)
        reverse = FeatureCodec(
            codec.shape, codec.scale, codec.zero_point, codec.mean, codec.order[::-1].copy()
        )
        feature = _run(result.out_dir / s["head"]["file"], x)
        tail = result.out_dir / s["tail"]["file"]
        best, worst = [], []  # accuracy after a quarter, a half, three quarters of the channels
        for k in (codec.shape[0] // 4, codec.shape[0] // 2, 3 * codec.shape[0] // 4):
            best.append((_run(tail, partial_feature(codec, feature, k)).argmax(1) == y).mean())
            worst.append((_run(tail, partial_feature(reverse, feature, k)).argmax(1) == y).mean())
        assert np.mean(best) > np.mean(worst) + 0.05, (s["index"], best, worst)


def test_all_packets_give_the_profiles_full_answer(
    result: SplitResult, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = heldout
    s = result.profile["splits"][1]
    codec = FeatureCodec.from_profile(s)
    features = _run(result.out_dir / s["head"]["file"], x[:20])
    for feature in features:
        rx = codec.receiver()
        for packet in codec.encode(feature, 100):
            rx.add(packet)
        np.testing.assert_array_equal(rx.feature(), partial_feature(codec, feature, codec.shape[0]))


def test_cache_is_reused_and_outputs_are_deterministic(
    result: SplitResult, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cached = load_or_train_digits(digits_cache(tmp_path_factory), 0)
    assert not cached.trained
    assert cached.test_accuracy == result.profile["model"]["info"]["heldout_accuracy_torch"]
    again = split_model(
        "digits-cnn",
        tmp_path / "again",
        splits=[2],
        calib=128,
        seed=0,
        cache_dir=digits_cache(tmp_path_factory),
    )
    first = result.profile["splits"][1]
    second = again.profile["splits"][0]
    assert (tmp_path / "again" / "head_2.onnx").read_bytes() == (
        result.out_dir / "head_2.onnx"
    ).read_bytes()
    for key in ("scale", "zero_point", "mean", "importance_order"):
        assert first["feature"][key] == second["feature"][key]
    assert first["accuracy_curve"] == second["accuracy_curve"]
