"""Builds conv models the way other exporters write them, for running every pass over.

- `paddle_model`: Paddle2ONNX's style. No initializers at all: every weight is a `Constant` node,
  each conv bias is `Reshape(Constant)` in a separate `Add`, and the SE block is
  GlobalAveragePool → Conv → Add → Relu → Conv → Add → HardSigmoid(0.2, 0.5) → Mul. A user's own
  `Constant` (a scalar in `value_float` form) scales the output, so tests can check it survives.
  `paddle_resnet_model` is the same style with a residual block. With `no_op`, a no-op follows
  every Add and Mul, inside the SE blocks and out: "Identity" as the newest Paddle2ONNX writes
  (its `p2o.pd_op.*` graphs), or a "Dropout" or "Cast" to the same type.
- `c2f_model`: YOLOv8's C2f: cv1 → Split → bottlenecks (Conv → SiLU → Conv → SiLU, each Added to
  the split half it read) → Concat → cv2, BatchNorm folded into the convs as PyTorch exports
  them; `split="slice"` splits with two Slices, `split="none"` is YOLOv5's C3 (the bottlenecks
  read cv1's output, a conv layer ending in its SiLU, with no split).
- `csp_model`: a CSPDarknet stage as timm writes cs3darknet: conv_exp → Slice halves → dark
  blocks (Conv 1×1 → BN → act → Conv 3×3 → BN → act, Added to the block's input) → Concat, with
  BatchNormalization nodes and one activation op throughout.
- `plain_adds_model`: residual-looking Adds whose branch is one activation or has no conv.
- `if_model`: the network sits in the branches of an If that picks one of two conv stacks; the
  branches capture the feature map and a weight from the outer graph, and reuse node names.
- `loop_model`: a Loop body runs conv → SE block on its carried feature map, with an If nested in
  the body (two levels of subgraph).
- `scan_model`: a Scan body runs conv → SE block on each step of a sequence of feature maps.
- `attention_model`: an ECA, CBAM or coordinate-attention block after a conv, as torch.onnx writes
  timm's and the papers' modules or (`paddle`) as Paddle2ONNX writes Paddle's, with an ECA conv's
  bias, BatchNorm left unfolded, coordinate attention's h_swish in each form `hard_swish` writes.
- `in_if_branches(model)`: any single-graph model moved whole into both branches of an If (as a
  voice-activity model picks its network by sample rate), names reused across the branches.

Every builder returns a checked `onnx.ModelProto`; `feeds(model)` makes seeded inputs for it.
SE nodes are named "<prefix>se/…" so tests can tell which nodes a detected block should hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from models.builders import GraphBuilder, Names, seeded_inputs

CHANNELS = 8
SQUEEZE_CHANNELS = 4
SPATIAL = (6, 6)


class _Graph(GraphBuilder):
    """A graph named as exporters name it: the first use of a stem bare ("conv0", "relu0_out").

    With `no_op` set, each Add and Mul is followed by that no-op, named "<node>_<op>".
    """

    no_op: str | None = None

    def op(
        self, op_type: str, inputs: Sequence[ir.Value | None], stem: str, *, name: str | None = None, **attributes
    ) -> ir.Value:
        output = super().op(op_type, inputs, stem, name=name, **attributes)
        if self.no_op is None or op_type not in ("Add", "Mul"):
            return output
        stem = f"{name or stem}_{self.no_op.lower()}"
        if self.no_op == "Cast":
            output.type = ir.TensorType(self.dtype)  # typed, as exporters that write value_info leave it
            return super().op("Cast", [output], stem, to=int(self.dtype))
        return super().op(self.no_op, [output], stem)

    def paddle_bias(self, stem: str, channels: int, rank: int) -> ir.Value:
        """A bias as Paddle2ONNX writes it: Reshape(Constant(C), Constant(value_ints=[1, C, 1…]))
        (the shape as a `value` tensor before opset 12, which introduced value_ints)."""
        values = self.const(stem, self.rng.uniform(-0.5, 0.5, channels))
        dims = [1, channels, *([1] * rank)]
        form = {"value_ints": dims} if self.opset >= 12 else {"value": ir.tensor(np.array(dims, np.int64))}
        return self.op("Reshape", [values, self.constant(self.names(stem + "_shape"), **form)], stem + "_reshape")

    def conv(
        self,
        x: ir.Value,
        in_channels: int,
        out_channels: int,
        stem: str,
        *,
        kernel: int = 3,
        paddle: bool = False,
        name: str | None = None,
    ) -> ir.Value:
        """A conv with its bias inside, or (paddle) in a separate Add of a reshaped constant."""
        rank = len(SPATIAL)
        weight = self.weight(stem + "_w", out_channels, in_channels, *([kernel] * rank))
        pads = [kernel // 2] * 2 * rank
        if paddle:
            h = self.op("Conv", [x, weight], stem, pads=pads)
            return self.op("Add", [h, self.paddle_bias(stem + "_b", out_channels, rank)], stem + "_bias")
        return self.op("Conv", [x, weight, self.weight(stem + "_b", out_channels)], stem, name=name, pads=pads)

    def paddle_se(self, x: ir.Value, channels: int, squeeze_channels: int, prefix: str) -> ir.Value:
        """GlobalAveragePool → Conv → Add → Relu → Conv → Add → HardSigmoid(0.2, 0.5) → Mul."""
        h = self.op("GlobalAveragePool", [x], prefix + "se/pool")
        h = self.conv(h, channels, squeeze_channels, prefix + "se/fc1", kernel=1, paddle=True)
        h = self.op("Relu", [h], prefix + "se/relu")
        h = self.conv(h, squeeze_channels, channels, prefix + "se/fc2", kernel=1, paddle=True)
        h = self.op("HardSigmoid", [h], prefix + "se/gate", alpha=0.2, beta=0.5)
        return self.op("Mul", [x, h], prefix + "se/scale")

    def feature_map(self, name: str, channels: int = CHANNELS) -> ir.Value:
        return self.input(name, ["N", channels, *SPATIAL])

    def output_map(self, value: ir.Value, name: str) -> ir.Value:
        return self.output(value, name, ["N", CHANNELS, *SPATIAL])


def _graphs(seed: int, dtype: str, constants: bool, opset: int = 13):
    """Builders of one model's graphs: one weight stream, one set of names across every scope."""
    rng, names = np.random.default_rng(seed), Names(first_bare=True)
    return lambda: _Graph(rng=rng, names=names, dtype=dtype, constants=constants, opset=opset)


def paddle_model(
    *, opset: int = 13, dtype: str = "float32", blocks: int = 2, se: bool = True, no_op: str | None = None
) -> onnx.ModelProto:
    """x → [Conv 3×3 → bias Add → Relu → SE] × blocks → Conv 1×1 → bias Add → ·Constant(1.0) → y
    (without `se`, the same trunk with no SE blocks, for the insertion pass; `no_op` after every
    Add and Mul)."""
    g = _graphs(0, dtype, constants=True, opset=opset)()
    g.no_op = no_op
    x = g.feature_map("x", 3)
    h, in_channels = x, 3
    for index in range(blocks):
        h = g.conv(h, in_channels, CHANNELS, f"conv{index}", paddle=True)
        h = g.op("Relu", [h], f"relu{index}")
        if se:
            h = g.paddle_se(h, CHANNELS, SQUEEZE_CHANNELS, f"block{index}/")
        in_channels = CHANNELS
    h = g.conv(h, CHANNELS, CHANNELS, "head", kernel=1, paddle=True)
    # The user's own Constant, in the value_float form from opset 12 (float32 whatever the model's
    # dtype: Cast it).
    form = {"value_float": 1.0} if opset >= 12 else {"value": ir.tensor(np.array(1.0, np.float32))}
    scale = g.constant(g.names("output_scale"), **form)
    cast = g.op("Cast", [scale], "output_scale_cast", to=int(g.dtype))
    y = g.op("Mul", [h, cast], "output_scale", name="output_scale")
    return g.model("paddle_style", [x], [g.output_map(y, "y")])


def paddle_resnet_model(*, opset: int = 13, dtype: str = "float32", no_op: str | None = None) -> onnx.ModelProto:
    """Paddle style with a residual block: x → Conv → Add → Relu → [Conv → Add → Relu → Conv → Add]
    + shortcut → Relu → y, every weight a Constant node and every bias a Reshape(Constant) Add."""
    g = _graphs(4, dtype, constants=True, opset=opset)()
    g.no_op = no_op
    x = g.feature_map("x", 3)
    stem = g.op("Relu", [g.conv(x, 3, CHANNELS, "stem", paddle=True)], "stem_relu")
    h = g.op("Relu", [g.conv(stem, CHANNELS, CHANNELS, "branch_a", paddle=True)], "branch_relu")
    h = g.conv(h, CHANNELS, CHANNELS, "branch_b", paddle=True)
    y = g.op("Relu", [g.op("Add", [h, stem], "residual")], "out_relu")
    return g.model("paddle_resnet", [x], [g.output_map(y, "y")])


class _Yolo(GraphBuilder):
    """Conv layers as PyTorch exports YOLO and timm models: Conv (BN folded, or a BatchNormalization
    node) → activation, SiLU written out as x·Sigmoid(x)."""

    def layer(
        self, x: ir.Value, cin: int, cout: int, kernel: int, stem: str, act: str, *, bn: bool = False
    ) -> ir.Value:
        rank = len(SPATIAL)
        weight = self.weight(stem + ".conv.weight", cout, cin, *([kernel] * rank), scale=np.sqrt(6))
        pads = [kernel // 2] * 2 * rank
        if bn:
            h = self.op("Conv", [x, weight], stem + "/conv", pads=pads)
            stats = [self.const(stem + f".bn.{key}", self.rng.uniform(*bounds, cout)) for key, bounds in _BN_RANGES]
            h = self.op("BatchNormalization", [h, *stats], stem + "/bn", epsilon=1e-3)
        else:
            h = self.op("Conv", [x, weight, self.weight(stem + ".conv.bias", cout)], stem + "/conv", pads=pads)
        if act == "SiLU":
            return self.op("Mul", [h, self.op("Sigmoid", [h], stem + "/sigmoid")], stem + "/mul")
        if act == "Clip":  # ReLU6, bounds as inputs from opset 11
            bounds = [self.const(stem + "/clip_" + key, np.array(v)) for key, v in (("min", 0.0), ("max", 6.0))]
            return self.op("Clip", [h, *bounds], stem + "/act")
        return self.op(act, [h], stem + "/act", **({"alpha": 0.1} if act == "LeakyRelu" else {}))

    def halves(self, x: ir.Value, channels: int, how: str, stem: str) -> tuple[ir.Value, ir.Value]:
        """x split in two along the channels: one Split (its sizes an attribute before opset 13, an
        input from 13), two Slices, or two Slices at a bound computed from x's Shape ("shape-slice",
        as the TorchScript exporter writes YOLOv8's `chunk`: no shape inference of ONNX's own sees
        the halves' sizes through it)."""
        half = channels // 2
        if how == "shape-slice":
            axes = self.const(stem + "/axes", np.array([1], np.int64), exact=True)
            shape = self.op("Shape", [x], stem + "/shape")
            width = self.op(
                "Gather",
                [shape, self.const(stem + "/channel_axis", np.array([1], np.int64), exact=True)],
                stem + "/gather",
                axis=0,
            )
            bound = self.op(
                "Div", [width, self.const(stem + "/two", np.array([2], np.int64), exact=True)], stem + "/half"
            )
            start = self.const(stem + "/start", np.array([0], np.int64), exact=True)
            end = self.const(stem + "/end", np.array([np.iinfo(np.int64).max], np.int64), exact=True)
            first = self.op("Slice", [x, start, bound, axes], stem + "/slice")
            second = self.op("Slice", [x, bound, end, axes], stem + "/slice")
            return first, second
        if how == "slice":
            axes = self.const(stem + "/axes", np.array([1], np.int64), exact=True)
            first, second = (
                self.op(
                    "Slice",
                    [
                        x,
                        self.const(stem + "/starts", np.array([start], np.int64), exact=True),
                        self.const(stem + "/ends", np.array([end], np.int64), exact=True),
                        axes,
                    ],
                    stem + "/slice",
                )
                for start, end in ((0, half), (half, channels))
            )
            return first, second
        sizes = [half, half]
        if self.opset >= 13:
            inputs, attributes = [x, self.const(stem + "/sizes", np.array(sizes, np.int64), exact=True)], {"axis": 1}
        else:
            inputs, attributes = [x], {"axis": 1, "split": sizes}
        first, second = self.tape.op_multi_out(
            "Split", inputs, attributes, num_outputs=2, name=self.names(stem + "/split")
        )
        first.name, second.name = self.names(stem + "/split_out"), self.names(stem + "/split_out")
        return first, second


_BN_RANGES = (("weight", (0.5, 1.5)), ("bias", (-0.1, 0.1)), ("running_mean", (-0.1, 0.1)), ("running_var", (0.5, 1.5)))


def c2f_model(
    *, opset: int = 13, dtype: str = "float32", split: str = "split", bottlenecks: int = 2
) -> onnx.ModelProto:
    """x → stem → C2f(cv1 → Split → `bottlenecks` × (Conv 3×3 → SiLU → Conv 3×3 → SiLU, + the half
    it read) → Concat of every half → cv2) → y, as YOLOv8 exports; `split` "slice" for two Slices,
    "shape-slice" for two at a bound computed at run time, "none" for YOLOv5's C3 (the bottlenecks
    read cv1's output and the C3 has no split)."""
    g = _Yolo(dtype=dtype, seed=5, opset=opset, names=Names(first_bare=True))
    c = CHANNELS
    x = g.input("x", ["N", 3, *SPATIAL])
    h = g.layer(x, 3, 2 * c, 3, "model.0", "SiLU")
    h = g.layer(h, 2 * c, 2 * c if split != "none" else c, 1, "model.1.cv1", "SiLU")
    parts = list(g.halves(h, 2 * c, split, "model.1")) if split != "none" else [h]
    for index in range(bottlenecks):
        stem = f"model.1.m.{index}"
        b = g.layer(parts[-1], c, c, 3, stem + ".cv1", "SiLU")
        b = g.layer(b, c, c, 3, stem + ".cv2", "SiLU")
        parts.append(g.op("Add", [parts[-1], b], stem + "/add"))
    y = g.op("Concat", parts, "model.1/concat", axis=1) if len(parts) > 1 else parts[0]
    y = g.layer(y, c * len(parts), c, 1, "model.1.cv2", "SiLU")
    return g.model("yolo_c2f", [x], [g.output(y, "y", ["N", c, *SPATIAL])])


def csp_model(*, opset: int = 13, dtype: str = "float32", act: str = "LeakyRelu", blocks: int = 2) -> onnx.ModelProto:
    """x → stem → conv_exp → two Slices: [a, b]; b → `blocks` dark blocks (Conv 1×1 → BN → act →
    Conv 3×3 → BN → act, + the block's input) → conv_transition_b; Concat(a, b) → conv_transition
    → y: a stage of timm's cs3darknet, every conv a Conv → BatchNormalization → `act` layer."""
    g = _Yolo(dtype=dtype, seed=6, opset=opset, names=Names(first_bare=True))
    c = CHANNELS
    x = g.input("x", ["N", 3, *SPATIAL])
    h = g.layer(x, 3, c, 3, "stem", act, bn=True)
    h = g.layer(h, c, 2 * c, 1, "stages.0.conv_exp", act, bn=True)
    a, b = g.halves(h, 2 * c, "slice", "stages.0")
    for index in range(blocks):
        stem = f"stages.0.blocks.{index}"
        branch = g.layer(b, c, c // 2, 1, stem + ".conv1", act, bn=True)
        branch = g.layer(branch, c // 2, c, 3, stem + ".conv2", act, bn=True)
        b = g.op("Add", [branch, b], stem + "/add")
    b = g.layer(b, c, c, 1, "stages.0.conv_transition_b", act, bn=True)
    y = g.layer(
        g.op("Concat", [a, b], "stages.0/concat", axis=1), 2 * c, c, 1, "stages.0.conv_transition", act, bn=True
    )
    return g.model("cs3darknet", [x], [g.output(y, "y", ["N", c, *SPATIAL])])


def plain_adds_model(*, opset: int = 13, dtype: str = "float32") -> onnx.ModelProto:
    """x → Conv → BN → SiLU = h; h + Relu(h) (a branch of one activation); + MaxPool of it (a branch
    with no conv) → Conv → y: Adds of a feature map and a function of it, none of them residual blocks."""
    g = _Yolo(dtype=dtype, seed=7, opset=opset, names=Names(first_bare=True))
    c = CHANNELS
    x = g.input("x", ["N", 3, *SPATIAL])
    h = g.layer(x, 3, c, 3, "conv0", "SiLU", bn=True)
    h = g.op("Add", [h, g.op("Relu", [h], "relu")], "add_activation")
    pooled = g.op("MaxPool", [h], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.op("Add", [pooled, h], "add_pool")
    y = g.layer(h, c, c, 1, "conv1", "Relu")
    return g.model("plain_adds", [x], [g.output(y, "y", ["N", c, *SPATIAL])])


def if_model(*, opset: int = 13, dtype: str = "float32", constants: bool = False) -> onnx.ModelProto:
    """x, flag → Conv (main graph) → If(flag; then: Conv → Relu → SE → Conv, else: Conv → Relu) → y.

    Both branches read the outer feature map, the then branch also an outer weight; both name
    their first node "conv".
    """
    graph = _graphs(1, dtype, constants, opset)
    main = graph()
    x, flag = main.feature_map("x", 3), main.input("flag", [], ir.DataType.BOOL)
    h = main.conv(x, 3, CHANNELS, "stem")
    shared = main.weight("shared_w", CHANNELS, CHANNELS, 1, 1)

    then = graph()
    t = then.op("Conv", [h, shared], "conv")  # captures the outer feature map and weight
    t = then.op("Relu", [t], "relu")
    t = then.paddle_se(t, CHANNELS, SQUEEZE_CHANNELS, "then/")
    t = then.output_map(then.conv(t, CHANNELS, CHANNELS, "then_head", kernel=1), "then_y")

    other = graph()
    e = other.conv(h, CHANNELS, CHANNELS, "conv", name="conv")
    e = other.output_map(other.op("Relu", [e], "relu", name="relu"), "else_y")

    branches = {"then_branch": then.graph("then_branch", [], [t]), "else_branch": other.graph("else_branch", [], [e])}
    y = main.op("If", [flag], "pick", name="pick", **branches)
    return main.model("if_style", [x, flag], [main.output_map(y, "y")])


def loop_model(*, opset: int = 13, dtype: str = "float32", constants: bool = False) -> onnx.ModelProto:
    """x, flag → Conv → Loop(2 times; body: Conv → Relu → SE → If(flag; Conv | Relu)) → y."""
    graph = _graphs(2, dtype, constants, opset)
    main = graph()
    x, flag = main.feature_map("x", 3), main.input("flag", [], ir.DataType.BOOL)
    h = main.conv(x, 3, CHANNELS, "stem")
    trips = main.const("trips", np.array(2, np.int64), exact=True)
    keep_going = main.const("keep_going", np.array(True), exact=True)

    body = graph()
    iteration, cond = body.input("iteration", [], ir.DataType.INT64), body.input("cond", [], ir.DataType.BOOL)
    carried = body.feature_map("carried")
    b = body.conv(carried, CHANNELS, CHANNELS, "body_conv")
    b = body.op("Relu", [b], "body_relu")
    b = body.paddle_se(b, CHANNELS, SQUEEZE_CHANNELS, "body/")
    then = graph()
    inner_then = then.output_map(then.conv(b, CHANNELS, CHANNELS, "inner_conv", kernel=1), "inner_then")  # reads b
    other = graph()
    inner_else = other.output_map(other.op("Relu", [b], "inner_relu"), "inner_else")
    carried_next = body.op(
        "If",
        [flag],
        "inner_pick",
        name="inner_pick",
        then_branch=then.graph("inner_then_branch", [], [inner_then]),
        else_branch=other.graph("inner_else_branch", [], [inner_else]),
    )
    cond_next = body.output(
        body.op("Identity", [cond], "body_cond", name="body_cond"), "cond_next", [], ir.DataType.BOOL
    )
    carried_next = body.output_map(carried_next, "carried_next")
    body_graph = body.graph("loop_body", [iteration, cond, carried], [cond_next, carried_next])
    y = main.op("Loop", [trips, keep_going, h], "repeat", name="repeat", body=body_graph)
    return main.model("loop_style", [x, flag], [main.output_map(y, "y")])


def scan_model(*, opset: int = 13, dtype: str = "float32", constants: bool = False) -> onnx.ModelProto:
    """x (steps × N × 3 × SPATIAL) → Scan(body: Conv → Relu → SE → Conv, per step) → y (steps × N × C × SPATIAL)."""
    graph = _graphs(3, dtype, constants, opset)
    main, body = graph(), graph()
    step = body.feature_map("step", 3)
    b = body.conv(step, 3, CHANNELS, "step_conv")
    b = body.op("Relu", [b], "step_relu")
    b = body.paddle_se(b, CHANNELS, SQUEEZE_CHANNELS, "step/")
    step_y = body.output_map(body.conv(b, CHANNELS, CHANNELS, "step_head", kernel=1), "step_y")
    x = main.input("x", [2, "N", 3, *SPATIAL])
    y = main.op("Scan", [x], "steps", name="steps", body=body.graph("scan_body", [step], [step_y]), num_scan_inputs=1)
    return main.model("scan_style", [x], [main.output(y, "y", [2, "N", CHANNELS, *SPATIAL])])


def in_if_branches(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`'s graph as both branches of an If on a new `flag` input: the branches read the graph
    inputs from the outer scope, keep their initializers and node names, and prefix every other
    value name with "then/" or "else/" so that values stay unique across the scopes."""
    graph = model.graph
    outer = {value.name for value in graph.input}

    def branch(prefix: str) -> onnx.GraphProto:
        def rename(name: str) -> str:
            return name if not name or name in outer else prefix + name

        nodes = []
        for node in graph.node:
            copy = onnx.NodeProto.FromString(node.SerializeToString())
            copy.input[:] = [rename(name) for name in node.input]
            copy.output[:] = [rename(name) for name in node.output]
            nodes.append(copy)
        initializers = []
        for tensor in graph.initializer:
            copy = onnx.TensorProto.FromString(tensor.SerializeToString())
            copy.name = rename(tensor.name)
            initializers.append(copy)
        outputs = []
        for value in graph.output:
            copy = onnx.ValueInfoProto.FromString(value.SerializeToString())
            copy.name = rename(value.name)
            outputs.append(copy)
        return helper.make_graph(nodes, f"{prefix.strip('/')}_branch", [], outputs, initializers)

    pick = helper.make_node(
        "If",
        ["flag"],
        [value.name for value in graph.output],
        name="pick",
        then_branch=branch("then/"),
        else_branch=branch("else/"),
    )
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    nested = helper.make_graph([pick], graph.name, [*graph.input, flag], list(graph.output))
    result = helper.make_model(nested, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    onnx.checker.check_model(result, full_check=True)
    return result


def feeds(model: onnx.ModelProto, *, flag: bool = True, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in the model's dtype for every float input (symbolic dims set to `batch`),
    and `flag` where it has one."""
    result = seeded_inputs(model, batch=batch, seed=seed)[0]
    if "flag" in result:
        result["flag"] = np.array(flag)
    return result


# --- Attention blocks after SE (ECA, CBAM, coordinate attention) as exporters write them ----------

ATTENTION_SPATIAL = (8, 6)  # H ≠ W, so that a block that mixes up the two axes shows
ATTENTION_CHANNELS = 16
# Coordinate attention's h_swish, as each exporter or implementation writes it (see `hard_swish`).
HARD_SWISH_FORMS = ("HardSwish", "HardSigmoid", "h_swish", "h_swish_mul", "timm", "relu_min")


def attention_model(
    kind: str,
    *,
    opset: int = 13,
    block: bool = True,
    paddle: bool = False,
    dynamo: bool = False,
    no_op: str | None = None,
    bias: bool = False,
    bn: bool = False,
    activation: str = "HardSwish",
) -> onnx.ModelProto:
    """x (N×3×8×6) → Conv 3×3 → Relu → one `kind` block → y, the block written as torch.onnx's
    TorchScript exporter writes timm's and the papers' modules; as its dynamo exporter does
    (`dynamo`, opset 18 on: means over axes kept or dropped by ReduceMean, Reshapes with
    allowzero, expand_as an Expand, one axes constant shared by a mean and a max, h_swish dividing
    by the Clip's own 6); or (`paddle`) as Paddle2ONNX does: Constant-node weights, each conv bias
    in a separate Add, `no_op` after each Add and Mul, and Paddle's conv1d as Unsqueeze → Conv2d
    over a 1 × C row → Add → Squeeze.

    `bias`: ECA's conv has one. `bn`: a BatchNormalization node, not folded, after CBAM's spatial
    conv and coordinate attention's conv1 (timm's ConvNormAct, the CA paper's conv1 → bn1). The
    `activation`: coordinate attention's h_swish, one of `HARD_SWISH_FORMS`. Without `block`, the
    same trunk with the same weights (the block's come from a stream of their own), so a found
    block's exported weights can be inserted there and the outputs compared. Block nodes are
    named "<kind>/…".
    """
    g = _graphs(5, "float32", constants=paddle, opset=opset)()
    g.no_op = no_op
    x = g.input("x", ["N", 3, *ATTENTION_SPATIAL])
    h = g.op("Relu", [g.conv(x, 3, ATTENTION_CHANNELS, "conv", paddle=paddle)], "relu")
    if block:
        blocks = g.stream(seed=6)
        if kind == "eca":
            h = _eca(blocks, h, paddle=paddle, dynamo=dynamo, bias=bias)
        elif kind == "cbam":
            h = _cbam(blocks, h, paddle=paddle, dynamo=dynamo, bn=bn)
        else:
            h = _coord(blocks, h, paddle=paddle, bn=bn, activation="dynamo" if dynamo else activation)
    y = g.output(h, "y", ["N", ATTENTION_CHANNELS, *ATTENTION_SPATIAL])
    return g.model(f"{kind}_style", [x], [y])


def _squeeze(g: _Graph, x: ir.Value, axes: list[int], stem: str) -> ir.Value:
    """Squeeze on `axes`: an input from opset 13, an attribute before."""
    if g.opset >= 13:
        return g.op("Squeeze", [x, g.const(stem + "_axes", np.array(axes, np.int64), exact=True)], stem)
    return g.op("Squeeze", [x], stem, axes=axes)


def _layer(
    g: _Graph, x: ir.Value, weight: ir.Value, bias: ir.Value | None, stem: str, *, paddle: bool, pads: list[int]
) -> ir.Value:
    """A conv with the given weights: its bias inside, or (`paddle`) in an Add of it reshaped to 1×C×1…."""
    if bias is None or not paddle:
        return g.op("Conv", [x, weight, *([bias] if bias is not None else [])], stem, pads=pads)
    rank = len(pads) // 2
    shape = g.const(stem + "_bias_shape", np.array([1, -1, *([1] * rank)], np.int64), exact=True)
    h = g.op("Conv", [x, weight], stem, pads=pads)
    return g.op("Add", [h, g.op("Reshape", [bias, shape], stem + "_bias_reshape")], stem + "_bias")


def _batch_norm(g: _Graph, x: ir.Value, channels: int, stem: str) -> ir.Value:
    """An inference BatchNormalization node with its statistics, away from the identity."""
    scale = g.const(stem + "_scale", g.rng.uniform(0.5, 1.5, channels))
    shift = g.const(stem + "_bias", g.rng.uniform(-0.5, 0.5, channels))
    mean = g.const(stem + "_mean", g.rng.uniform(-0.5, 0.5, channels))
    var = g.const(stem + "_var", g.rng.uniform(0.5, 1.5, channels))
    return g.op("BatchNormalization", [x, scale, shift, mean, var], stem, epsilon=1e-5)


def _eca(g: _Graph, x: ir.Value, *, paddle: bool, dynamo: bool, bias: bool) -> ir.Value:
    """timm's EcaModule (GlobalAveragePool → Reshape N×1×C → Conv1d → Reshape → Sigmoid → Mul), or
    Paddle's: squeeze, transpose, its conv1d as a Conv2d over N×1×1×C, and back."""
    c, k = ATTENTION_CHANNELS, 3
    # dynamo: x.mean((2, 3)) drops the dims, view(N, 1, -1) restores one.
    pooled = g.mean(x, [2, 3], "eca/pool", keepdims=0) if dynamo else g.op("GlobalAveragePool", [x], "eca/pool")
    reshape = {"allowzero": 1} if dynamo else {}
    conv_bias = g.weight("eca/conv_b", 1) if bias else None
    if paddle:
        row = g.op("Transpose", [_squeeze(g, pooled, [3], "eca/squeeze")], "eca/transpose", perm=[0, 2, 1])
        row = g.unsqueeze(row, [2], "eca/conv_unsqueeze")
        weight = g.weight("eca/conv_w", 1, 1, 1, k)
        y = _layer(g, row, weight, conv_bias, "eca/conv", paddle=True, pads=[0, 1, 0, 1])
        y = g.op("Transpose", [_squeeze(g, y, [2], "eca/conv_squeeze")], "eca/transpose_back", perm=[0, 2, 1])
        y = g.unsqueeze(y, [3], "eca/unsqueeze")
    else:
        row = g.op("Reshape", [pooled, g.const("eca/row", np.array([-1, 1, c]), exact=True)], "eca/view", **reshape)
        y = _layer(g, row, g.weight("eca/conv_w", 1, 1, k), conv_bias, "eca/conv", paddle=False, pads=[1, 1])
        y = g.op("Reshape", [y, g.const("eca/col", np.array([-1, c, 1, 1]), exact=True)], "eca/view_back", **reshape)
    gate = g.op("Sigmoid", [y], "eca/gate")
    if dynamo:
        gate = g.op(
            "Expand", [gate, g.const("eca/map", np.array([1, c, *ATTENTION_SPATIAL]), exact=True)], "eca/expand"
        )
    return g.op("Mul", [x, gate], "eca/scale")


def _cbam(g: _Graph, x: ir.Value, *, paddle: bool, dynamo: bool, bn: bool) -> ir.Value:
    """timm's CbamModule: one 1×1-conv MLP on the average and max pools, summed, Sigmoid, Mul; then
    Concat(mean, max over C) → 7×7 conv (→ BatchNormalization with `bn`) → Sigmoid → Mul."""
    c, s = ATTENTION_CHANNELS, 4
    fc1, fc1_b = g.weight("cbam/fc1_w", s, c, 1, 1), g.weight("cbam/fc1_b", s)
    fc2, fc2_b = g.weight("cbam/fc2_w", c, s, 1, 1), g.weight("cbam/fc2_b", c)
    spatial_axes = g.const("cbam/spatial_axes", np.array([2, 3]), exact=True) if dynamo else None
    branches = []
    for pool in ("GlobalAveragePool", "GlobalMaxPool"):
        if spatial_axes is not None:  # x.mean((2, 3), keepdim=True) and x.amax(…), one axes constant
            reduce = "ReduceMean" if pool == "GlobalAveragePool" else "ReduceMax"
            h = g.op(reduce, [x, spatial_axes], f"cbam/{reduce}", keepdims=1)
        else:
            h = g.op(pool, [x], f"cbam/{pool}")
        h = g.op("Relu", [_layer(g, h, fc1, fc1_b, "cbam/fc1", paddle=paddle, pads=[0] * 4)], "cbam/relu")
        branches.append(_layer(g, h, fc2, fc2_b, "cbam/fc2", paddle=paddle, pads=[0] * 4))
    gate = g.op("Sigmoid", [g.op("Add", branches, "cbam/sum")], "cbam/channel_gate")
    x = g.op("Mul", [x, gate], "cbam/channel_scale")
    peak = g.op("ReduceMax", [x], "cbam/channel_max", axes=[1], keepdims=1) if g.opset < 18 else None
    if peak is None:
        axes = g.const("cbam/max_axes", np.array([1]), exact=True)
        peak = g.op("ReduceMax", [x, axes], "cbam/channel_max", keepdims=1)
    pooled = g.op("Concat", [g.mean(x, [1], "cbam/channel_mean"), peak], "cbam/pooled", axis=1)
    spatial_bias = None if bn else g.weight("cbam/spatial_b", 1)
    h = _layer(
        g, pooled, g.weight("cbam/spatial_w", 1, 2, 7, 7), spatial_bias, "cbam/spatial", paddle=paddle, pads=[3] * 4
    )
    if bn:
        h = _batch_norm(g, h, 1, "cbam/spatial_bn")
    return g.op("Mul", [x, g.op("Sigmoid", [h], "cbam/spatial_gate")], "cbam/spatial_scale")


def _coord(g: _Graph, x: ir.Value, *, paddle: bool, bn: bool, activation: str) -> ir.Value:
    """The CA paper's CoordAtt as torch.onnx writes it: AveragePool over W and over H (Transposed),
    Concat, conv1 (→ BatchNormalization with `bn`) → h_swish, Split, conv_h / conv_w (the W half
    Transposed back) → Sigmoid, x·a_w·a_h."""
    (height, width), c, m = ATTENTION_SPATIAL, ATTENTION_CHANNELS, 8
    pool_h = g.op("AveragePool", [x], "coord/pool_h", kernel_shape=[1, width], strides=[1, width])
    pool_w = g.op("AveragePool", [x], "coord/pool_w", kernel_shape=[height, 1], strides=[height, 1])
    pool_w = g.op("Transpose", [pool_w], "coord/pool_w_t", perm=[0, 1, 3, 2])
    both = g.op("Concat", [pool_h, pool_w], "coord/cat", axis=2)
    h = _layer(
        g,
        both,
        g.weight("coord/conv1_w", m, c, 1, 1),
        g.weight("coord/conv1_b", m),
        "coord/conv1",
        paddle=paddle,
        pads=[0] * 4,
    )
    if bn:
        h = _batch_norm(g, h, m, "coord/bn1")
    h = hard_swish(g, h, activation, "coord/act")
    sizes = [height, width]
    if g.opset >= 13:
        inputs, attributes = [h, g.const("coord/sizes", np.array(sizes, np.int64), exact=True)], {"axis": 2}
    else:
        inputs, attributes = [h], {"axis": 2, "split": sizes}
    halves = g.tape.op_multi_out("Split", inputs, attributes, num_outputs=2, name=g.names("coord/split"))
    for half in halves:
        half.name = g.names("coord/split_out")
    w_half = g.op("Transpose", [halves[1]], "coord/split_w_t", perm=[0, 1, 3, 2])
    gates = []
    for half, stem in ((halves[0], "conv_h"), (w_half, "conv_w")):
        weight, bias = g.weight(f"coord/{stem}_w", c, m, 1, 1), g.weight(f"coord/{stem}_b", c)
        gates.append(
            g.op(
                "Sigmoid",
                [_layer(g, half, weight, bias, f"coord/{stem}", paddle=paddle, pads=[0] * 4)],
                f"coord/{stem}_gate",
            )
        )
    return g.op("Mul", [g.op("Mul", [x, gates[1]], "coord/scale_w"), gates[0]], "coord/scale_h")


def hard_swish(g: GraphBuilder, h: ir.Value, form: str, stem: str) -> ir.Value:
    """h_swish(h) = h·ReLU6(h + 3)/6 in one of `HARD_SWISH_FORMS`: the HardSwish op (h·HardSigmoid
    before opset 14), h·HardSigmoid(h; 1/6, 0.5), the CA code's h·(ReLU6(h + 3)/6) with ReLU6 as
    Clip (h_swish) and with / 6 as · (1/6) (h_swish_mul), timm's (h·ReLU6(h + 3))/6, ReLU6 as
    Min(Relu(·), 6) (relu_min); and as the dynamo exporter writes it, dividing by the Clip's own 6."""
    if form == "HardSwish" and g.opset >= 14:
        return g.op("HardSwish", [h], stem)
    if form in ("HardSwish", "HardSigmoid"):
        return g.op("Mul", [h, g.op("HardSigmoid", [h], stem + "_hsig", alpha=1 / 6, beta=0.5)], stem)
    shifted = g.op("Add", [h, g.const(stem + "_three", np.array(3.0))], stem + "_add")
    high = g.const(stem + "_six", np.array(6.0))
    if form == "relu_min":
        clipped = g.op("Min", [g.op("Relu", [shifted], stem + "_relu"), high], stem + "_min")
    else:
        clipped = g.op("Clip", [shifted, g.const(stem + "_zero", np.array(0.0)), high], stem + "_clip")
    six = high if form == "dynamo" else g.const(stem + "_div", np.array(6.0))
    if form == "timm":
        return g.op("Div", [g.op("Mul", [h, clipped], stem + "_mul"), six], stem)
    if form == "h_swish_mul":
        gate = g.op("Mul", [clipped, g.const(stem + "_sixth", np.array(1 / 6))], stem + "_scale")
    else:
        gate = g.op("Div", [clipped, six], stem + "_scale")
    return g.op("Mul", [h, gate], stem)
