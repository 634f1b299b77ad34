"""Split points, extraction, constant folding and FLOPs on small real torch models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs torch: pip install 'coinfer[export]'")
pytest.importorskip("onnx", reason="needs onnx: pip install 'coinfer[export]'")

import onnx
import onnxruntime as ort
import torch
from torch import nn

from export._errors import ExportError
from export.dnn._graph import analyze, extract, fold_constants, graph_flops, node_flops
from export.dnn._models import ModelSpec, export_onnx
from export.dnn._split import auto_splits, parse_splits


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class _Net(nn.Module):
    """stem -> two residual blocks -> asymmetric "same" pad + stride-2 conv -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList([_Residual(8), _Residual(8)])
        self.down = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 16, 3, stride=2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = torch.relu(self.down(x))
        return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))


def _spec(module: nn.Module) -> ModelSpec:
    return ModelSpec(
        name="net",
        source="test",
        module=module.eval(),
        input_shape=(1, 3, 6, 6),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        raw_range=(None, None),
        preprocess={"color": "RGB", "resize": "none", "height": 6, "width": 6},
        num_classes=5,
        labels_source="none",
        label_names=None,
        data="user",
    )


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    module = _Net().eval()
    path = tmp_path_factory.mktemp("graph") / "net.onnx"
    export_onnx(_spec(module), path)
    return module, fold_constants(onnx.load(path))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_boundaries_are_block_ends_never_inside_a_skip_connection(
    net_onnx: tuple[nn.Module, onnx.ModelProto],
) -> None:
    _, model = net_onnx
    info = analyze(model)
    blocks = [b.block for b in info.boundaries]
    assert blocks[:3] == ["stem.1", "blocks.0", "blocks.1"]  # stem.1: the stem's ReLU
    assert [b.shape for b in info.boundaries[:3]] == [(8, 6, 6)] * 3
    assert [b.index for b in info.boundaries] == list(range(1, len(blocks) + 1))
    inside = {n.output[0] for n in info.model.graph.node if n.name.startswith("/blocks.0/")}
    inside.discard(info.boundaries[1].tensor)
    assert not inside & {b.tensor for b in info.boundaries}
    for b in info.boundaries:  # no cut right before an activation
        users = [n for n in info.model.graph.node if b.tensor in n.input]
        assert any(u.op_type not in ("Relu", "Clip") for u in users)


def test_every_boundary_splits_exactly(net_onnx: tuple[nn.Module, onnx.ModelProto]) -> None:
    module, model = net_onnx
    info = analyze(model)
    x = np.random.default_rng(0).normal(size=(4, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(info.model, x), ref, rtol=1e-5, atol=1e-5)
    for b in info.boundaries:
        head, tail = extract(info, b)
        assert [i.name for i in head.graph.output] == ["feature"]
        assert [i.name for i in tail.graph.input] == ["feature"]
        np.testing.assert_allclose(_run(tail, _run(head, x)), ref, rtol=1e-5, atol=1e-5)
        assert graph_flops(head) + graph_flops(tail) == info.flops
        assert graph_flops(head) == b.head_flops


def test_constant_folding_leaves_no_shape_arithmetic(
    net_onnx: tuple[nn.Module, onnx.ModelProto],
) -> None:
    _, model = net_onnx
    ops = [n.op_type for n in model.graph.node]
    assert "ConstantOfShape" not in ops and "Constant" not in ops
    assert ops.count("Pad") == 1
    info = analyze(model)
    assert all(isinstance(d, int) and d > 0 for b in info.boundaries for d in b.shape)


def test_flops_match_hand_counts(net_onnx: tuple[nn.Module, onnx.ModelProto]) -> None:
    _, model = net_onnx
    info = analyze(model)
    from export.dnn._graph import tensor_shapes

    shapes = tensor_shapes(info.model)
    first = next(n for n in info.model.graph.node if n.op_type == "Conv")
    # 3->8 3x3 on 6x6, pad 1: 8*6*6 outputs, 27 MACs each, 2 FLOPs per MAC, + bias.
    assert node_flops(first, shapes) == 2 * 8 * 36 * 27 + 8 * 36
    gemm = next(n for n in info.model.graph.node if n.op_type == "Gemm")
    assert node_flops(gemm, shapes) == 2 * 5 * 16 + 5


def test_a_graph_with_no_cut_is_refused(tmp_path: Path) -> None:
    class Wide(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flatten(x, 1) @ torch.ones(108, 4)  # no feature map at all

    path = tmp_path / "wide.onnx"
    export_onnx(_spec(Wide()), path)
    with pytest.raises(ExportError, match="no split point"):
        analyze(fold_constants(onnx.load(path)))


def test_parse_and_auto_rules(net_onnx: tuple[nn.Module, onnx.ModelProto]) -> None:
    assert parse_splits("auto") == "auto" and parse_splits("all") == "all"
    assert parse_splits("3,1,3") == [1, 3]
    for bad in ("0", "a", ",", "-1"):
        with pytest.raises(ExportError):
            parse_splits(bad)
    info = analyze(net_onnx[1])
    picked = auto_splits(info.boundaries, info.flops, input_bytes=3 * 6 * 6)
    # stem and blocks.0 share blocks.1's shape: only the stage's last block is a candidate.
    assert info.boundaries[0].index not in picked and info.boundaries[1].index not in picked
