"""ONNX graph work: split points, head/tail extraction, FLOPs. onnx only, no torch.

Split points. A tensor T of the full graph can split it in two when every path from the graph
input to the graph output goes through T (removing T disconnects them); then the nodes that
compute T form the head and the rest the tail, and head + tail computes exactly the full graph.
Among such tensors, *boundaries* are the ``[N, C, H, W]`` feature maps that sit between two
blocks: the producing node's block differs from every consuming node's block, where a node's
block is its module path (from the exporter's node name ``/blocks.3/_project_conv/Conv``) cut
after the first indexed container entry (``blocks.3``) or else its first component. A tensor
whose only consumer is an activation (Relu, Clip, ...) is skipped: the cut belongs after the
activation. Graphs without module paths (or with one flat module, as a torch.export
program gives) fall back to one block per node.

FLOPs count a multiply and an add as two (2 per MAC) for Conv, Gemm and MatMul, one per output
element for activations, element-wise arithmetic and normalization, and kernel-size per output
element for pooling; reshapes, pads and constants are free. Counts are per sample (batch 1).
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference
from onnx.utils import Extractor

from export._errors import ExportError

ACTIVATIONS = frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Elu",
        "Selu",
        "PRelu",
        "Softplus",
        "Mish",
        "Gelu",
    }
)
FREE_OPS = frozenset(
    {
        "Reshape",
        "Flatten",
        "Shape",
        "Gather",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Transpose",
        "Pad",
        "Constant",
        "Identity",
        "Dropout",
        "Cast",
        "Slice",
        "ConstantOfShape",
        "Expand",
        "Split",
    }
)
_INDEXED = re.compile(r"\.\d+$")


@dataclass(frozen=True)
class Boundary:
    """A split point: 1-based ``index`` in graph order, the ONNX ``tensor`` name, the ``block``
    it ends, the ``shape`` ``(C, H, W)`` of the feature and the FLOPs before it (``head_flops``,
    per sample)."""

    index: int
    tensor: str
    block: str
    shape: tuple[int, int, int]
    head_flops: int

    @property
    def feature_bytes(self) -> int:
        """Bytes of the feature at 8 bits per value."""
        c, h, w = self.shape
        return c * h * w


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with inferred value_info (strict: an inconsistent graph is an ExportError)."""
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises its own InferenceError and others
        raise ExportError(f"ONNX shape inference failed: {str(e).splitlines()[0]}") from None


# Ops whose outputs are a pure function of their inputs, folded when every input is constant.
_FOLDABLE = frozenset(
    {
        "ConstantOfShape",
        "Concat",
        "Reshape",
        "Slice",
        "Transpose",
        "Cast",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Range",
        "Equal",
        "Where",
        "Expand",
        "Pad",
        "Identity",
        "Floor",
        "Ceil",
        "Sqrt",
        "ReduceProd",
        "Min",
        "Max",
    }
)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every node of _FOLDABLE whose inputs are all constant
    (initializers or Constant nodes) is evaluated (onnx.reference) and replaced by an
    initializer; Constant nodes become initializers. Leaves weights untouched."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    const: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    kept: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type == "Constant":
            const[node.output[0]] = ReferenceEvaluator(_single(node, [], model)).run(None, {})[0]
            continue
        ins = [t for t in node.input if t]
        if node.op_type in _FOLDABLE and all(t in const for t in ins):
            feeds = {t: const[t] for t in ins}
            outs = ReferenceEvaluator(_single(node, ins, model)).run(None, feeds)
            for name, value in zip(node.output, outs, strict=True):
                const[name] = np.asarray(value)
            continue
        kept.append(node)
    used = {t for n in kept for t in n.input} | {o.name for o in g.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    del out.graph.initializer[:]
    del out.graph.value_info[:]
    out.graph.initializer.extend(
        numpy_helper.from_array(const[t], t) for t in sorted(used & set(const), key=_order(g))
    )
    return out


def _order(g: onnx.GraphProto) -> Callable[[str], tuple[int, str]]:
    """Sort key keeping original initializers first, in their order, then folded ones."""
    pos = {i.name: k for k, i in enumerate(g.initializer)}
    return lambda name: (pos.get(name, len(pos)), name)


def _single(node: onnx.NodeProto, inputs: list[str], model: onnx.ModelProto) -> onnx.ModelProto:
    """A one-node model running `node` on `inputs` (types left open for the evaluator)."""
    from onnx import helper

    graph = helper.make_graph(
        [node],
        "fold",
        [helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None) for t in inputs],
        [helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None) for t in node.output],
    )
    return helper.make_model(graph, opset_imports=list(model.opset_import))


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shape of each typed tensor of an inferred `model`, symbolic dims as 1 (batch)."""
    shapes: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _scope(node: onnx.NodeProto) -> list[str]:
    """Module path of a TorchScript-exported node name ``/a/a.0/Op`` -> ``["a", "a.0"]``."""
    if not node.name.startswith("/"):
        return []
    return node.name.split("/")[1:-1]


def _block_keys(nodes: list[onnx.NodeProto]) -> list[str]:
    """Each node's block (see the module docstring)."""
    scopes = [_scope(n) for n in nodes]
    if not any(scopes):
        return [n.name or f"node{i}" for i, n in enumerate(nodes)]
    prefix = 0  # drop path components shared by every scoped node (a wrapper module)
    scoped = [s for s in scopes if s]
    while all(len(s) > prefix + 1 and s[prefix] == scoped[0][prefix] for s in scoped):
        prefix += 1
    keys = [_key(scope[prefix:]) for scope in scopes]
    if len(set(keys)) <= 1:  # one flat module (a torch.export program): no blocks to read
        return [n.name or f"node{i}" for i, n in enumerate(nodes)]
    return keys


def _key(path: list[str]) -> str:
    """A module path's block: up to its first container index, written ``name.i`` whether the
    exporter spelt it ``/blocks/blocks.3`` (traced) or ``/blocks/3`` (scripted)."""
    for k, component in enumerate(path):
        if _INDEXED.search(component):
            return component
        if component.isdigit():
            return f"{path[k - 1]}.{component}" if k else component
    return path[0] if path else ""


def _reaches_output(
    consumers: dict[str, list[int]], nodes: list[onnx.NodeProto], src: str, dst: str, cut: str
) -> bool:
    """Whether tensor `dst` is reachable from tensor `src` without passing through `cut`."""
    seen = {src}
    queue = deque([src])
    while queue:
        t = queue.popleft()
        if t == dst:
            return True
        for i in consumers.get(t, ()):
            for out in nodes[i].output:
                if out and out != cut and out not in seen:
                    seen.add(out)
                    queue.append(out)
    return False


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """FLOPs of one node per sample (see the module docstring); 0 when shapes are unknown."""
    op = node.op_type
    if op in FREE_OPS:
        return 0
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    out_n = int(np.prod(out[1:])) if len(out) > 1 else int(np.prod(out))
    if op in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        if w is None:
            return 0
        if op == "Conv":
            macs = out_n * int(np.prod(w[1:]))  # per output: Cin/groups * kh * kw
        else:
            x = shapes.get(node.input[0], ())
            macs = int(np.prod(x[1:])) * int(np.prod(w[1:]))  # per input: Cout/groups * kh * kw
        bias = out_n if len(node.input) > 2 and node.input[2] else 0
        return 2 * macs + bias
    if op == "Gemm":
        a = shapes.get(node.input[0], (1, 1))
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[0] if trans_a else a[-1]
        bias = out_n if len(node.input) > 2 and node.input[2] else 0
        return 2 * out_n * k + bias
    if op == "MatMul":
        a = shapes.get(node.input[0], (1,))
        return 2 * out_n * a[-1]
    if op in ("MaxPool", "AveragePool"):
        kernel = next((list(at.ints) for at in node.attribute if at.name == "kernel_shape"), [1])
        return out_n * int(np.prod(kernel))
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"):
        x = shapes.get(node.input[0], out)
        return int(np.prod(x[1:]))
    return out_n


@dataclass(frozen=True)
class GraphInfo:
    """The inferred full graph with its boundaries and total FLOPs per sample."""

    model: onnx.ModelProto
    boundaries: list[Boundary]
    flops: int
    input_name: str
    output_name: str


def analyze(model: onnx.ModelProto) -> GraphInfo:
    """Infer shapes and find every boundary of a one-input, one-output graph."""
    model = infer_shapes(model)
    g = model.graph
    init_names = {i.name for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in init_names]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ExportError(
            f"a splittable CNN has one input and one output; this graph has inputs {inputs} "
            f"and outputs {[o.name for o in g.output]}"
        )
    src, dst = inputs[0], g.output[0].name
    nodes = list(g.node)
    shapes = tensor_shapes(model)
    keys = _block_keys(nodes)
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for t in n.input:
            if t:
                consumers[t].append(i)
    flops = [node_flops(n, shapes) for n in nodes]
    boundaries = []
    cumulative = 0
    for i, n in enumerate(nodes):  # exporter order is topological
        cumulative += flops[i]
        for t in n.output:
            shape = shapes.get(t)
            users = consumers.get(t, [])
            if shape is None or len(shape) != 4 or not users or t == dst:
                continue
            if all(nodes[u].op_type in ACTIVATIONS for u in users):
                continue  # cut after the activation instead
            if any(keys[u] == keys[i] for u in users):
                continue  # inside a block
            if _reaches_output(consumers, nodes, src, dst, t):
                continue  # a path around t (a skip connection): not a cut
            c, h, w = (int(d) for d in shape[1:])
            boundaries.append(Boundary(len(boundaries) + 1, t, keys[i], (c, h, w), cumulative))
    if not boundaries:
        raise ExportError(
            "no split point: the graph has no [N, C, H, W] feature map that every path from "
            "input to output goes through (is this a CNN?)"
        )
    return GraphInfo(model, boundaries, int(sum(flops)), src, dst)


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename tensor `old` to `new` everywhere in `model`'s graph (in place)."""
    g = model.graph
    for n in g.node:
        for k, t in enumerate(n.input):
            if t == old:
                n.input[k] = new
        for k, t in enumerate(n.output):
            if t == old:
                n.output[k] = new
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.name == old:
            vi.name = new


def extract(
    info: GraphInfo, boundary: Boundary, feature_name: str = "feature"
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(head, tail) at `boundary`: head ``input -> feature``, tail ``feature -> logits``,
    both checked by onnx.checker."""
    extractor = Extractor(info.model)
    head = extractor.extract_model([info.input_name], [boundary.tensor])
    tail = extractor.extract_model([boundary.tensor], [info.output_name])
    _rename(head, boundary.tensor, feature_name)
    _rename(tail, boundary.tensor, feature_name)
    for part, name in ((head, "head"), (tail, "tail")):
        part.graph.name = f"{info.model.graph.name or 'model'}_{name}_{boundary.index}"
        try:
            onnx.checker.check_model(part, full_check=True)
        except Exception as e:  # onnx.checker.ValidationError and shape errors
            raise ExportError(f"split {boundary.index}: invalid {name}: {e}") from None
    tail_inputs = [i.name for i in tail.graph.input]
    if tail_inputs != [feature_name]:
        raise ExportError(f"split {boundary.index}: tail needs {tail_inputs}, not just the feature")
    return head, tail


def graph_flops(model: onnx.ModelProto) -> int:
    """Total FLOPs per sample of a (fp32) graph."""
    inferred = infer_shapes(model)
    shapes = tensor_shapes(inferred)
    return int(sum(node_flops(n, shapes) for n in inferred.graph.node))
