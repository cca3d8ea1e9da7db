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
import onnx_ir as ir

from models.builders import GraphBuilder, seeded_inputs


@dataclasses.dataclass(frozen=True)
class Variant:
    opset: int = 17
    dtype: str = "float32"
    squeeze: str = "gap"  # gap | reducemean | reducemean_keepdims
    negative_axes: bool = False  # ReduceMean over axes -2, -1 (PyTorch's mean(dim=(-2, -1)))
    flatten: str | None = None  # Flatten | Reshape | Squeeze after the squeeze (Gemm/MatMul layers)
    layer: str = "conv"  # conv | gemm | matmul
    bias: str = "inside"  # inside | add (a separate Add; MatMul always uses one) | both | none
    # relu | silu | silu_decomposed | hardswish | hardswish_decomposed | leakyrelu | prelu | none (the one-layer
    # "effective SE" variant)
    activation: str = "relu"
    # sigmoid | hardsigmoid_torch | hardsigmoid_paddle | hardsigmoid_default | clip_div | clip_mul
    gate: str = "sigmoid"
    broadcast: str | None = None  # reshape | unsqueeze: how an N × C gate gets back to N × C × 1 × 1
    gate_first: bool = False  # Mul(gate, x) instead of Mul(x, gate)
    first_kernel: int = 1  # a first excitation conv that is not 1×1 makes a near-miss
    blocks: int = 1
    se_is_output: bool = False
    channels: int = 8
    squeeze_channels: int = 4
    spatial: tuple[int, ...] = (6, 6)

    @property
    def id(self) -> ir.Value:
        default = Variant()
        fields = dataclasses.fields(self)
        changed = [
            f"{f.name}={getattr(self, f.name)}" for f in fields if getattr(self, f.name) != getattr(default, f.name)
        ]
        return ",".join(changed) or "default"


def se_model(variant: Variant = Variant()) -> onnx.ModelProto:
    """A model with `variant.blocks` SE blocks in `variant`'s form (see the module docstring)."""
    trunk = GraphBuilder(dtype=variant.dtype, seed=1, opset=variant.opset)
    se = trunk.stream(seed=2)
    c, spatial = variant.channels, variant.spatial
    rank = len(spatial)
    x = trunk.input("x", ["N", 3, *spatial])
    h = trunk.op(
        "Conv", [x, trunk.weight("conv_w", c, 3, *([3] * rank)), trunk.weight("conv_b", c)], "conv", pads=[1] * 2 * rank
    )
    h = trunk.op("Relu", [h], "relu")
    for index in range(variant.blocks):
        h = _se_block(se, h, variant, f"se{index}/")
    if not variant.se_is_output:
        h = trunk.op("Conv", [h, trunk.weight("head_w", c, c, *([1] * rank))], "head")
    return trunk.model("se_variant", [x], [trunk.output(h, "y", ["N", c, *spatial])])


def _se_block(g: GraphBuilder, x: ir.Value, v: Variant, prefix: ir.Value) -> ir.Value:
    c, s, rank = v.channels, v.squeeze_channels, len(v.spatial)
    spatial_axes = list(range(2, 2 + rank))
    mean_axes = [axis - 2 - rank for axis in spatial_axes] if v.negative_axes else spatial_axes
    conv = v.layer == "conv"
    keepdims = conv or v.squeeze == "reducemean_keepdims"

    # Squeeze.
    if v.squeeze == "gap":
        h = g.op("GlobalAveragePool", [x], prefix + "pool")
        keepdims = True
    else:
        h = g.mean(x, mean_axes, prefix + "mean", keepdims=int(keepdims))
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
        else:
            h = g.unsqueeze(h, spatial_axes, prefix + "unsqueeze")
    operands = [h, x] if v.gate_first else [x, h]
    return g.op("Mul", operands, prefix + "scale")


def _flatten(g: GraphBuilder, h: ir.Value, op: str, prefix: ir.Value, c: int, spatial_axes: list[int]) -> ir.Value:
    if op == "Flatten":
        return g.op("Flatten", [h], prefix + "flatten")
    if op == "Reshape":
        shape = g.const(prefix + "flat_shape", np.array([-1, c], np.int64), exact=True)
        return g.op("Reshape", [h, shape], prefix + "flatten")
    axes = g.const(prefix + "squeeze_axes", np.array(spatial_axes, np.int64), exact=True)
    return g.op("Squeeze", [h, axes], prefix + "flatten")


def _layer(
    g: GraphBuilder, h: ir.Value, v: Variant, stem: str, n_in: int, n_out: int, kernel: int, rank: int
) -> ir.Value:
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


def _activation(g: GraphBuilder, h: ir.Value, v: Variant, prefix: ir.Value) -> ir.Value:
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


def _gate(g: GraphBuilder, h: ir.Value, gate: str, prefix: ir.Value) -> ir.Value:
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
    g = GraphBuilder(seed=3, opset=opset)
    c, d = 8, 16
    if kind in _TRANSFORMER:
        x = g.input("x", ["N", 5, d])  # tokens × features
        y, y_shape = _TRANSFORMER[kind](g, x, d), ["N", 5, d]
    else:
        x = g.input("x", ["N", c, 6, 6])
        y, y_shape = _CONV[kind](g, x, c)
    return g.model(kind, [x], [g.output(y, "y", y_shape)])


def _layernorm(g: GraphBuilder, x: ir.Value, d: int) -> ir.Value:
    centered = g.op("Sub", [x, g.mean(x, [-1], "ln_mean")], "ln_sub")
    variance = g.mean(g.op("Mul", [centered, centered], "ln_sq"), [-1], "ln_var")
    std = g.op("Sqrt", [g.op("Add", [variance, g.const("ln_eps", np.array(1e-5))], "ln_add")], "ln_sqrt")
    normalized = g.op("Div", [centered, std], "ln_div")
    return g.op(
        "Add", [g.op("Mul", [normalized, g.weight("ln_gamma", d)], "ln_scale"), g.weight("ln_beta", d)], "ln_shift"
    )


def _rmsnorm(g: GraphBuilder, x: ir.Value, d: int) -> ir.Value:
    mean_square = g.mean(g.op("Mul", [x, x], "rms_sq"), [-1], "rms_mean")
    root = g.op("Sqrt", [g.op("Add", [mean_square, g.const("rms_eps", np.array(1e-6))], "rms_add")], "rms_sqrt")
    inverse = g.op("Reciprocal", [root], "rms_inv")
    return g.op("Mul", [g.op("Mul", [x, inverse], "rms_norm"), g.weight("rms_gamma", d)], "rms_scale")


def _softmax_attention(g: GraphBuilder, x: ir.Value, d: int) -> ir.Value:
    q = g.op("MatMul", [x, g.weight("wq", d, d)], "q")
    k = g.op("MatMul", [x, g.weight("wk", d, d)], "k")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], "kt", perm=[0, 2, 1])], "scores")
    scores = g.op("Mul", [scores, g.const("scale", np.array(d**-0.5))], "scaled")
    weights = g.op("Softmax", [scores], "softmax", axis=-1)
    # A gated output: x · Softmax(…)·V, the Mul a rescale detector must not take for SE.
    attended = g.op("MatMul", [weights, x], "attend")
    return g.op("Mul", [x, g.op("Sigmoid", [attended], "gate")], "gated")


def _groupnorm(g: GraphBuilder, x: ir.Value, c: int) -> tuple[ir.Value, list]:
    groups = 2
    grouped = g.op("Reshape", [x, g.const("gn_shape", np.array([0, groups, -1], np.int64), exact=True)], "gn_group")
    mean = g.mean(grouped, [2], "gn_mean")
    centered = g.op("Sub", [grouped, mean], "gn_sub")
    variance = g.mean(g.op("Mul", [centered, centered], "gn_sq"), [2], "gn_var")
    std = g.op("Sqrt", [g.op("Add", [variance, g.const("gn_eps", np.array(1e-5))], "gn_add")], "gn_sqrt")
    normalized = g.op("Div", [centered, std], "gn_div")
    back = g.op("Reshape", [normalized, g.const("gn_back", np.array([0, c, 6, 6], np.int64), exact=True)], "gn_ungroup")
    scale = g.const("gn_gamma", g.rng.uniform(0.5, 1.5, (c, 1, 1)))
    return g.op("Mul", [back, scale], "gn_scale"), ["N", c, 6, 6]


def _classifier_head(g: GraphBuilder, x: ir.Value, c: int) -> tuple[ir.Value, list]:
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "flatten")
    logits = g.op("Gemm", [pooled, g.weight("fc_w", 10, c), g.weight("fc_b", 10)], "fc", transB=1)
    return g.op("Softmax", [logits], "softmax", axis=-1), ["N", 10]


def _silu_feature_map(g: GraphBuilder, x: ir.Value, c: int) -> tuple[ir.Value, list]:
    h = g.op("Conv", [x, g.weight("conv_w", c, c, 1, 1)], "conv")
    return g.op("Mul", [h, g.op("Sigmoid", [h], "sigmoid")], "silu"), ["N", c, 6, 6]


def _spatial_attention(g: GraphBuilder, x: ir.Value, c: int) -> tuple[ir.Value, list]:
    """CBAM's spatial gate: the mean over channels, a 7×7 conv, Sigmoid, Mul."""
    mean = g.mean(x, [1], "channel_mean")
    h = g.op("Conv", [mean, g.weight("sa_w", 1, 1, 7, 7)], "sa_conv", pads=[3, 3, 3, 3])
    return g.op("Mul", [x, g.op("Sigmoid", [h], "sa_gate")], "sa_scale"), ["N", c, 6, 6]


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
    return seeded_inputs(model, batch=batch, seed=seed)[0]
