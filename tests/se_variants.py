"""Builds small conv models holding SE blocks in each form exporters write, and look-alikes that are not.

Shared by the detector, fuse and strip tests, with `ort_outputs` to run what they build.

`se_model(Variant(...))` makes x → Conv 3×3 → Relu → SE block × `blocks` → Conv 1×1 → y (or the
last SE block's output as y). Every SE node is named "se<i>/…", so tests can tell which nodes a
detected block should hold. The trunk's weights come from their own seeded stream, so a model
with `blocks=0` is the same model with its SE blocks stripped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("relu", "silu", "silu_decomposed", "hardswish", "hardswish_decomposed", "leakyrelu", "prelu", "none")
GATES = ("sigmoid", "hardsigmoid_torch", "hardsigmoid_paddle", "hardsigmoid_default", "clip_div", "clip_mul")
SQUEEZES = ("gap", "reducemean", "reducemean_keepdims")


@dataclasses.dataclass(frozen=True)
class Variant:
    opset: int = 17
    dtype: str = "float32"
    squeeze: str = "gap"  # gap | reducemean | reducemean_keepdims
    negative_axes: bool = False  # ReduceMean over axes -2, -1 (PyTorch's mean(dim=(-2, -1)))
    flatten: str | None = None  # Flatten | Reshape | Squeeze after the squeeze (Gemm/MatMul layers)
    layer: str = "conv"  # conv | gemm | matmul
    bias: str = "inside"  # inside | add (a separate Add; MatMul always uses one) | both | none
    activation: str = "relu"  # see ACTIVATIONS; "none" is the one-layer "effective SE" variant
    gate: str = "sigmoid"  # see GATES
    broadcast: str | None = None  # reshape | unsqueeze: how an N × C gate gets back to N × C × 1 × 1
    gate_first: bool = False  # Mul(gate, x) instead of Mul(x, gate)
    first_kernel: int = 1  # a first excitation conv that is not 1×1 makes a near-miss
    blocks: int = 1
    se_is_output: bool = False
    channels: int = 8
    squeeze_channels: int = 4
    spatial: tuple[int, ...] = (6, 6)

    @property
    def id(self) -> str:
        default = Variant()
        fields = dataclasses.fields(self)
        changed = [
            f"{f.name}={getattr(self, f.name)}" for f in fields if getattr(self, f.name) != getattr(default, f.name)
        ]
        return ",".join(changed) or "default"


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, dtype: str, seed: int) -> None:
        self.np_dtype = np.dtype(dtype)
        self.elem_type = helper.np_dtype_to_tensor_dtype(self.np_dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array: np.ndarray, *, exact: bool = False) -> str:
        name = self.name(stem)
        array = np.asarray(array) if exact else np.asarray(array, dtype=self.np_dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, stem: str, *shape: int, scale: float = 1.0) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        bound = scale / np.sqrt(fan_in)
        return self.const(stem, self.rng.uniform(-bound, bound, shape))

    def op(self, op_type: str, inputs: list[str], stem: str, **attributes) -> str:
        output = self.name(f"{stem}_out")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(stem), **attributes))
        return output


def se_model(variant: Variant = Variant()) -> onnx.ModelProto:
    """A model with `variant.blocks` SE blocks in `variant`'s form (see the module docstring)."""
    trunk = _Graph(variant.dtype, seed=1)
    se = _Graph(variant.dtype, seed=2)
    se.nodes = trunk.nodes  # one node list, two weight streams
    se.initializers = trunk.initializers
    se.count = 10_000
    c = variant.channels
    rank = len(variant.spatial)
    x = "x"
    conv_weights = [trunk.weight("conv_w", c, 3, *([3] * rank)), trunk.weight("conv_b", c)]
    h = trunk.op("Conv", [x, *conv_weights], "conv", pads=[1] * 2 * rank)
    h = trunk.op("Relu", [h], "relu")
    for index in range(variant.blocks):
        h = _se_block(se, h, variant, f"se{index}/")
    if not variant.se_is_output:
        trunk.op("Conv", [h, trunk.weight("head_w", c, c, *([1] * rank))], "head")
    return _model(trunk, variant, x)


def _model(graph: _Graph, variant: Variant, x: str) -> onnx.ModelProto:
    rank = len(variant.spatial)
    nodes = graph.nodes
    nodes[-1].output[0] = "y"  # the last node computes the model's output
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "se_variant",
            [helper.make_tensor_value_info(x, graph.elem_type, ["N", 3, *variant.spatial])],
            [helper.make_tensor_value_info("y", graph.elem_type, ["N", variant.channels, *variant.spatial[:rank]])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", variant.opset)],
        ir_version=8,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _se_block(g: _Graph, x: str, v: Variant, prefix: str) -> str:
    c, s, rank = v.channels, v.squeeze_channels, len(v.spatial)
    spatial_axes = list(range(2, 2 + rank))
    mean_axes = [axis - 2 - rank for axis in spatial_axes] if v.negative_axes else spatial_axes
    conv = v.layer == "conv"
    keepdims = conv or v.squeeze == "reducemean_keepdims"

    # Squeeze.
    if v.squeeze == "gap":
        h = g.op("GlobalAveragePool", [x], prefix + "pool")
        keepdims = True
    elif v.opset >= 18:
        axes = g.const(prefix + "axes", np.array(mean_axes, np.int64), exact=True)
        h = g.op("ReduceMean", [x, axes], prefix + "mean", keepdims=int(keepdims))
    else:
        h = g.op("ReduceMean", [x], prefix + "mean", axes=mean_axes, keepdims=int(keepdims))
    if not conv and keepdims:
        h = _flatten(g, h, v.flatten or "Flatten", prefix, c, spatial_axes)

    # Excitation.
    widths = [(c, s), (s, c)] if v.activation != "none" else [(c, c)]
    for index, (n_in, n_out) in enumerate(widths):
        if index == 1:
            h = _activation(g, h, v, prefix)
        kernel = v.first_kernel if index == 0 else 1
        h = _layer(g, h, v, prefix + f"fc{index + 1}", n_in, n_out, kernel, rank)

    # Gate, broadcast back to the feature map's rank, rescale.
    h = _gate(g, h, v.gate, prefix)
    if not conv:
        if v.broadcast == "reshape":
            shape = g.const(prefix + "shape", np.array([-1, c, *([1] * rank)], np.int64), exact=True)
            h = g.op("Reshape", [h, shape], prefix + "reshape")
        elif v.opset >= 13:
            axes = g.const(prefix + "unsqueeze_axes", np.array(spatial_axes, np.int64), exact=True)
            h = g.op("Unsqueeze", [h, axes], prefix + "unsqueeze")
        else:
            h = g.op("Unsqueeze", [h], prefix + "unsqueeze", axes=spatial_axes)
    operands = [h, x] if v.gate_first else [x, h]
    return g.op("Mul", operands, prefix + "scale")


def _flatten(g: _Graph, h: str, op: str, prefix: str, c: int, spatial_axes: list[int]) -> str:
    if op == "Flatten":
        return g.op("Flatten", [h], prefix + "flatten")
    if op == "Reshape":
        shape = g.const(prefix + "flat_shape", np.array([-1, c], np.int64), exact=True)
        return g.op("Reshape", [h, shape], prefix + "flatten")
    axes = g.const(prefix + "squeeze_axes", np.array(spatial_axes, np.int64), exact=True)
    return g.op("Squeeze", [h, axes], prefix + "flatten")


def _layer(g: _Graph, h: str, v: Variant, stem: str, n_in: int, n_out: int, kernel: int, rank: int) -> str:
    inside = v.bias in ("inside", "both") and v.layer != "matmul"
    separate = v.bias in ("add", "both") or (v.layer == "matmul" and v.bias != "none")
    if v.layer == "conv":
        inputs = [h, g.weight(stem + "_w", n_out, n_in, *([kernel] * rank), scale=2.0)]
        if inside:
            inputs.append(g.weight(stem + "_b", n_out))
        pads = [kernel // 2] * 2 * rank
        h = g.op("Conv", inputs, stem, pads=pads)
        bias_shape = (1, n_out, *([1] * rank))
    elif v.layer == "gemm":
        # PyTorch's Linear: W is out × in with transB=1; alpha/beta show the folding is right.
        inputs = [h, g.weight(stem + "_w", n_out, n_in, scale=2.0)]
        if inside:
            inputs.append(g.weight(stem + "_b", n_out))
        h = g.op("Gemm", inputs, stem, transB=1, alpha=0.5, beta=2.0)
        bias_shape = (n_out,)
    else:
        h = g.op("MatMul", [h, g.weight(stem + "_w", n_in, n_out, scale=2.0)], stem)
        bias_shape = (n_out,)
    if separate:
        h = g.op("Add", [h, g.const(stem + "_add_b", g.rng.uniform(-0.5, 0.5, bias_shape))], stem + "_add")
    return h


def _activation(g: _Graph, h: str, v: Variant, prefix: str) -> str:
    stem = prefix + "act"
    if v.activation == "relu":
        return g.op("Relu", [h], stem)
    if v.activation == "hardswish":
        return g.op("HardSwish", [h], stem)
    if v.activation == "hardswish_decomposed":  # PyTorch's hardswish exported below opset 14
        return g.op("Mul", [h, g.op("HardSigmoid", [h], stem + "_hardsigmoid", alpha=1 / 6, beta=0.5)], stem)
    if v.activation == "leakyrelu":
        return g.op("LeakyRelu", [h], stem, alpha=0.1)
    if v.activation == "prelu":
        shape = (v.squeeze_channels, *([1] * len(v.spatial))) if v.layer == "conv" else (v.squeeze_channels,)
        return g.op("PRelu", [h, g.const(stem + "_slope", g.rng.uniform(0, 0.5, shape))], stem)
    if v.activation in ("silu", "silu_decomposed"):
        # "silu" puts the Sigmoid first among Mul's operands, as the TorchScript exporter does.
        sigmoid = g.op("Sigmoid", [h], stem + "_sigmoid")
        operands = [sigmoid, h] if v.activation == "silu" else [h, sigmoid]
        return g.op("Mul", operands, stem)
    raise ValueError(v.activation)


def _gate(g: _Graph, h: str, gate: str, prefix: str) -> str:
    stem = prefix + "gate"
    if gate == "sigmoid":
        return g.op("Sigmoid", [h], stem)
    if gate == "hardsigmoid_torch":
        return g.op("HardSigmoid", [h], stem, alpha=1 / 6, beta=0.5)
    if gate == "hardsigmoid_paddle":
        return g.op("HardSigmoid", [h], stem, alpha=0.2, beta=0.5)
    if gate == "hardsigmoid_default":
        return g.op("HardSigmoid", [h], stem)
    # Written out: Clip(h + 3, 0, 6) / 6 or · (1/6), with Clip's bounds as inputs (opset ≥ 11).
    shifted = g.op("Add", [h, g.const(stem + "_three", np.array(3.0))], stem + "_add")
    low, high = g.const(stem + "_zero", np.array(0.0)), g.const(stem + "_six", np.array(6.0))
    clipped = g.op("Clip", [shifted, low, high], stem + "_clip")
    if gate == "clip_div":
        return g.op("Div", [clipped, g.const(stem + "_div6", np.array(6.0))], stem)
    if gate == "clip_mul":
        return g.op("Mul", [g.const(stem + "_sixth", np.array(1 / 6)), clipped], stem)
    raise ValueError(gate)


# --- Look-alikes that are not SE blocks ----------------------------------------------------------


def negative_model(kind: str, opset: int = 17) -> onnx.ModelProto:
    """A model with a pattern that shares parts with SE but is not one: `NEGATIVES` lists them."""
    g = _Graph("float32", seed=3)
    c, d = 8, 16
    if kind in ("layernorm", "rmsnorm", "softmax_attention"):
        x_shape = ["N", 5, d]  # tokens × features
        _TRANSFORMER[kind](g, "x", d, opset)
        y_shape = ["N", 5, d]
    else:
        x_shape = ["N", c, 6, 6]
        y_shape = _CONV[kind](g, "x", c, opset)
    nodes = g.nodes
    nodes[-1].output[0] = "y"  # the last node computes the model's output
    model = helper.make_model(
        helper.make_graph(
            nodes,
            kind,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
            g.initializers,
        ),
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=8,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _mean(g: _Graph, x: str, axes: list[int], opset: int, stem: str) -> str:
    if opset >= 18:
        return g.op("ReduceMean", [x, g.const(stem + "_axes", np.array(axes, np.int64), exact=True)], stem, keepdims=1)
    return g.op("ReduceMean", [x], stem, axes=axes, keepdims=1)


def _layernorm(g: _Graph, x: str, d: int, opset: int) -> str:
    centered = g.op("Sub", [x, _mean(g, x, [-1], opset, "ln_mean")], "ln_sub")
    variance = _mean(g, g.op("Mul", [centered, centered], "ln_sq"), [-1], opset, "ln_var")
    std = g.op("Sqrt", [g.op("Add", [variance, g.const("ln_eps", np.array(1e-5))], "ln_add")], "ln_sqrt")
    normalized = g.op("Div", [centered, std], "ln_div")
    return g.op("Add", [g.op("Mul", [normalized, g.weight("ln_gamma", d)], "ln_scale"), g.weight("ln_beta", d)], "ln_shift")


def _rmsnorm(g: _Graph, x: str, d: int, opset: int) -> str:
    mean_square = _mean(g, g.op("Mul", [x, x], "rms_sq"), [-1], opset, "rms_mean")
    root = g.op("Sqrt", [g.op("Add", [mean_square, g.const("rms_eps", np.array(1e-6))], "rms_add")], "rms_sqrt")
    inverse = g.op("Reciprocal", [root], "rms_inv")
    return g.op("Mul", [g.op("Mul", [x, inverse], "rms_norm"), g.weight("rms_gamma", d)], "rms_scale")


def _softmax_attention(g: _Graph, x: str, d: int, opset: int) -> str:
    q = g.op("MatMul", [x, g.weight("wq", d, d)], "q")
    k = g.op("MatMul", [x, g.weight("wk", d, d)], "k")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], "kt", perm=[0, 2, 1])], "scores")
    scores = g.op("Mul", [scores, g.const("scale", np.array(d**-0.5))], "scaled")
    weights = g.op("Softmax", [scores], "softmax", axis=-1)
    # A gated output: x · Softmax(…)·V, the Mul a rescale detector must not take for SE.
    attended = g.op("MatMul", [weights, x], "attend")
    return g.op("Mul", [x, g.op("Sigmoid", [attended], "gate")], "gated")


def _groupnorm(g: _Graph, x: str, c: int, opset: int) -> list:
    groups = 2
    grouped = g.op("Reshape", [x, g.const("gn_shape", np.array([0, groups, -1], np.int64), exact=True)], "gn_group")
    mean = _mean(g, grouped, [2], opset, "gn_mean")
    centered = g.op("Sub", [grouped, mean], "gn_sub")
    variance = _mean(g, g.op("Mul", [centered, centered], "gn_sq"), [2], opset, "gn_var")
    std = g.op("Sqrt", [g.op("Add", [variance, g.const("gn_eps", np.array(1e-5))], "gn_add")], "gn_sqrt")
    normalized = g.op("Div", [centered, std], "gn_div")
    back = g.op("Reshape", [normalized, g.const("gn_back", np.array([0, c, 6, 6], np.int64), exact=True)], "gn_ungroup")
    scale = g.const("gn_gamma", g.rng.uniform(0.5, 1.5, (c, 1, 1)))
    g.op("Mul", [back, scale], "gn_scale")
    return ["N", c, 6, 6]


def _classifier_head(g: _Graph, x: str, c: int, opset: int) -> list:
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "flatten")
    logits = g.op("Gemm", [pooled, g.weight("fc_w", 10, c), g.weight("fc_b", 10)], "fc", transB=1)
    g.op("Softmax", [logits], "softmax", axis=-1)
    return ["N", 10]


def _silu_feature_map(g: _Graph, x: str, c: int, opset: int) -> list:
    h = g.op("Conv", [x, g.weight("conv_w", c, c, 1, 1)], "conv")
    g.op("Mul", [h, g.op("Sigmoid", [h], "sigmoid")], "silu")
    return ["N", c, 6, 6]


def _spatial_attention(g: _Graph, x: str, c: int, opset: int) -> list:
    """CBAM's spatial gate: the mean over channels, a 7×7 conv, Sigmoid, Mul."""
    mean = _mean(g, x, [1], opset, "channel_mean")
    h = g.op("Conv", [mean, g.weight("sa_w", 1, 1, 7, 7)], "sa_conv", pads=[3, 3, 3, 3])
    g.op("Mul", [x, g.op("Sigmoid", [h], "sa_gate")], "sa_scale")
    return ["N", c, 6, 6]


_TRANSFORMER = {"layernorm": _layernorm, "rmsnorm": _rmsnorm, "softmax_attention": _softmax_attention}
_CONV = {
    "groupnorm": _groupnorm,
    "classifier_head": _classifier_head,
    "silu_feature_map": _silu_feature_map,
    "spatial_attention": _spatial_attention,
}
NEGATIVES = (*_TRANSFORMER, *_CONV)

# One variant per form the detector must accept (the parameter spaces are too big to cross).
POSITIVES = (
    Variant(),  # torchvision SqueezeExcitation: GAP → Conv → Relu → Conv → Sigmoid → Mul
    Variant(opset=11),
    Variant(opset=13, gate="hardsigmoid_torch"),  # torchvision mobilenet_v3
    Variant(opset=18, squeeze="reducemean_keepdims"),
    Variant(opset=11, squeeze="reducemean_keepdims"),
    Variant(opset=18, squeeze="reducemean_keepdims", negative_axes=True),  # the dynamo exporter
    Variant(opset=13, squeeze="reducemean", negative_axes=True, layer="gemm"),
    Variant(opset=21, squeeze="reducemean", layer="gemm"),
    Variant(opset=11, squeeze="reducemean", layer="gemm", bias="add"),
    Variant(squeeze="reducemean_keepdims", layer="gemm", flatten="Flatten", broadcast="reshape"),
    Variant(squeeze="gap", layer="gemm", flatten="Reshape", broadcast="unsqueeze"),
    Variant(opset=18, squeeze="gap", layer="gemm", flatten="Squeeze"),
    Variant(squeeze="reducemean", layer="matmul", activation="silu"),  # Keras/TF export style
    Variant(squeeze="reducemean", layer="matmul", bias="none", broadcast="reshape"),
    Variant(bias="add"),
    Variant(bias="both"),
    Variant(bias="none"),
    Variant(activation="silu"),  # efficientnet: SiLU written as x·Sigmoid(x)
    Variant(activation="silu_decomposed"),
    Variant(activation="hardswish"),
    Variant(opset=13, activation="hardswish_decomposed"),
    Variant(opset=11, activation="hardswish_decomposed", layer="gemm", squeeze="reducemean"),
    Variant(activation="leakyrelu"),
    Variant(activation="prelu"),
    Variant(activation="prelu", layer="gemm", squeeze="reducemean"),
    Variant(gate="hardsigmoid_paddle"),
    Variant(gate="hardsigmoid_default"),
    Variant(gate="clip_div"),
    Variant(gate="clip_mul", layer="gemm", squeeze="reducemean"),
    Variant(gate_first=True),
    Variant(gate_first=True, layer="gemm", squeeze="reducemean", broadcast="reshape"),
    Variant(activation="none"),  # effective SE: one 1×1 conv
    Variant(activation="none", layer="gemm", squeeze="reducemean", gate="hardsigmoid_torch"),
    Variant(spatial=(10,)),  # Conv1d
    Variant(spatial=(3, 4, 4), layer="gemm", squeeze="reducemean"),  # Conv3d
    Variant(blocks=3),  # back to back: each block rescales the one before
    Variant(se_is_output=True, layer="gemm", squeeze="reducemean"),
    Variant(dtype="float16"),
    Variant(dtype="float16", opset=18, layer="gemm", squeeze="reducemean", gate="hardsigmoid_torch"),
)


def ort_outputs(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs in ONNX Runtime on the CPU (a proto, its bytes, or a path)."""
    from se_onnx.runtime.sessions import make_session

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return make_session(source).run(None, feeds)


def feeds_for(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for the model's one input (batch × its static dims)."""
    (graph_input,) = model.graph.input
    tensor_type = graph_input.type.tensor_type
    shape = [batch, *(dim.dim_value for dim in tensor_type.shape.dim[1:])]
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    return {graph_input.name: np.random.default_rng(seed).standard_normal(shape).astype(dtype)}
