"""Builds conv models the way other exporters write them, for running every pass over.

- `paddle_model`: Paddle2ONNX's style. No initializers at all: every weight is a `Constant` node,
  each conv bias is `Reshape(Constant)` in a separate `Add`, and the SE block is
  GlobalAveragePool → Conv → Add → Relu → Conv → Add → HardSigmoid(0.2, 0.5) → Mul. A user's own
  `Constant` (a scalar in `value_float` form) scales the output, so tests can check it survives.
  `paddle_resnet_model` is the same style with a residual block.
- `if_model`: the network sits in the branches of an If that picks one of two conv stacks; the
  branches capture the feature map and a weight from the outer graph, and reuse node names.
- `loop_model`: a Loop body runs conv → SE block on its carried feature map, with an If nested in
  the body (two levels of subgraph).
- `scan_model`: a Scan body runs conv → SE block on each step of a sequence of feature maps.
- `in_if_branches(model)`: any single-graph model moved whole into both branches of an If (as a
  voice-activity model picks its network by sample rate), names reused across the branches.

Every builder returns a checked `onnx.ModelProto`; `feeds(model)` makes seeded inputs for it.
SE nodes are named "<prefix>se/…" so tests can tell which nodes a detected block should hold.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 8
SQUEEZE_CHANNELS = 4
SPATIAL = (6, 6)


class GraphBuilder:
    """Nodes and weights of one graph; weights as initializers or as Constant nodes.

    `names` is shared by the builders of one model, so value names are unique across every scope
    (node names may repeat on purpose: `node_names=False` keeps the stems as they are).
    """

    def __init__(
        self,
        *,
        rng: np.random.Generator,
        dtype: str = "float32",
        constants: bool = False,
        names: dict[str, int] | None = None,
        prefix: str = "",
        opset: int = 13,
    ) -> None:
        self.rng = rng
        self.opset = opset
        self.np_dtype = np.dtype(dtype)
        self.elem_type = helper.np_dtype_to_tensor_dtype(self.np_dtype)
        self.constants = constants
        self.names = {} if names is None else names
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def name(self, stem: str) -> str:
        stem = self.prefix + stem
        count = self.names.get(stem, 0)
        self.names[stem] = count + 1
        return stem if count == 0 else f"{stem}_{count}"

    def op(self, op_type: str, inputs: list[str], stem: str, **attributes) -> str:
        output = self.name(f"{stem}_out")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.prefix + stem, **attributes))
        return output

    def tensor(self, stem: str, array: np.ndarray, *, exact: bool = False) -> str:
        """A constant: an initializer, or (with `constants`) a Constant node's `value`."""
        array = np.asarray(array) if exact else np.asarray(array, dtype=self.np_dtype)
        name = self.name(stem)
        if not self.constants:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = numpy_helper.from_array(array, name + "_value")
        self.nodes.append(helper.make_node("Constant", [], [name], name=name + "_constant", value=tensor))
        return name

    def weight(self, stem: str, *shape: int, scale: float = 1.0) -> str:
        bound = scale / np.sqrt(int(np.prod(shape[1:])) if len(shape) > 1 else 1)
        return self.tensor(stem, self.rng.uniform(-bound, bound, shape))

    def paddle_bias(self, stem: str, channels: int, rank: int) -> str:
        """A bias as Paddle2ONNX writes it: Reshape(Constant(C), Constant(value_ints=[1, C, 1…]))
        (the shape as a `value` tensor before opset 12, which introduced value_ints)."""
        values = self.tensor(stem, self.rng.uniform(-0.5, 0.5, channels))
        shape = self.name(stem + "_shape")
        dims = [1, channels, *([1] * rank)]
        form = {"value_ints": dims} if self.opset >= 12 else {"value": numpy_helper.from_array(np.array(dims, np.int64))}
        self.nodes.append(helper.make_node("Constant", [], [shape], name=shape + "_constant", **form))
        return self.op("Reshape", [values, shape], stem + "_reshape")

    def conv(self, x: str, in_channels: int, out_channels: int, stem: str, *, kernel: int = 3, paddle: bool = False) -> str:
        """A conv with its bias inside, or (paddle) in a separate Add of a reshaped constant."""
        rank = len(SPATIAL)
        weight = self.weight(stem + "_w", out_channels, in_channels, *([kernel] * rank))
        pads = [kernel // 2] * 2 * rank
        if paddle:
            h = self.op("Conv", [x, weight], stem, pads=pads)
            return self.op("Add", [h, self.paddle_bias(stem + "_b", out_channels, rank)], stem + "_bias")
        return self.op("Conv", [x, weight, self.weight(stem + "_b", out_channels)], stem, pads=pads)

    def paddle_se(self, x: str, channels: int, squeeze_channels: int, prefix: str) -> str:
        """GlobalAveragePool → Conv → Add → Relu → Conv → Add → HardSigmoid(0.2, 0.5) → Mul."""
        h = self.op("GlobalAveragePool", [x], prefix + "se/pool")
        h = self.conv(h, channels, squeeze_channels, prefix + "se/fc1", kernel=1, paddle=True)
        h = self.op("Relu", [h], prefix + "se/relu")
        h = self.conv(h, squeeze_channels, channels, prefix + "se/fc2", kernel=1, paddle=True)
        h = self.op("HardSigmoid", [h], prefix + "se/gate", alpha=0.2, beta=0.5)
        return self.op("Mul", [x, h], prefix + "se/scale")

    def graph(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)


def feature_map(name: str, elem_type: int, channels: int = CHANNELS) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, ["N", channels, *SPATIAL])


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _rename_output(builder: GraphBuilder, output: str) -> None:
    builder.nodes[-1].output[0] = output


def paddle_model(*, opset: int = 13, dtype: str = "float32", blocks: int = 2, se: bool = True) -> onnx.ModelProto:
    """x → [Conv 3×3 → bias Add → Relu → SE] × blocks → Conv 1×1 → bias Add → ·Constant(1.0) → y
    (without `se`, the same trunk with no SE blocks, for the insertion pass)."""
    g = GraphBuilder(rng=np.random.default_rng(0), dtype=dtype, constants=True, opset=opset)
    h = "x"
    in_channels = 3
    for index in range(blocks):
        h = g.conv(h, in_channels, CHANNELS, f"conv{index}", paddle=True)
        h = g.op("Relu", [h], f"relu{index}")
        if se:
            h = g.paddle_se(h, CHANNELS, SQUEEZE_CHANNELS, f"block{index}/")
        in_channels = CHANNELS
    h = g.conv(h, CHANNELS, CHANNELS, "head", kernel=1, paddle=True)
    # The user's own Constant, in the value_float form from opset 12 (float32 whatever the model's
    # dtype: Cast it).
    scale = g.name("output_scale")
    form = {"value_float": 1.0} if opset >= 12 else {"value": numpy_helper.from_array(np.array(1.0, np.float32))}
    g.nodes.append(helper.make_node("Constant", [], [scale], name="output_scale_constant", **form))
    cast = g.op("Cast", [scale], "output_scale_cast", to=g.elem_type)
    g.op("Mul", [h, cast], "output_scale")
    _rename_output(g, "y")
    graph = g.graph("paddle_style", [feature_map("x", g.elem_type, 3)], [feature_map("y", g.elem_type)])
    return _model(graph, opset)


def paddle_resnet_model(*, opset: int = 13, dtype: str = "float32") -> onnx.ModelProto:
    """Paddle style with a residual block: x → Conv → Add → Relu → [Conv → Add → Relu → Conv → Add]
    + shortcut → Relu → y, every weight a Constant node and every bias a Reshape(Constant) Add."""
    g = GraphBuilder(rng=np.random.default_rng(4), dtype=dtype, constants=True, opset=opset)
    stem = g.op("Relu", [g.conv("x", 3, CHANNELS, "stem", paddle=True)], "stem_relu")
    h = g.op("Relu", [g.conv(stem, CHANNELS, CHANNELS, "branch_a", paddle=True)], "branch_relu")
    h = g.conv(h, CHANNELS, CHANNELS, "branch_b", paddle=True)
    g.op("Relu", [g.op("Add", [h, stem], "residual")], "out_relu")
    _rename_output(g, "y")
    graph = g.graph("paddle_resnet", [feature_map("x", g.elem_type, 3)], [feature_map("y", g.elem_type)])
    return _model(graph, opset)


def if_model(*, opset: int = 13, dtype: str = "float32", constants: bool = False) -> onnx.ModelProto:
    """x, flag → Conv (main graph) → If(flag; then: Conv → Relu → SE → Conv, else: Conv → Relu) → y.

    Both branches read the outer feature map, the then branch also an outer weight; both name
    their first node "conv".
    """
    rng = np.random.default_rng(1)
    names: dict[str, int] = {}
    main = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    h = main.conv("x", 3, CHANNELS, "stem")
    shared = main.weight("shared_w", CHANNELS, CHANNELS, 1, 1)

    then = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names, prefix="")
    t = then.op("Conv", [h, shared], "conv")  # captures the outer feature map and weight
    t = then.op("Relu", [t], "relu")
    t = then.paddle_se(t, CHANNELS, SQUEEZE_CHANNELS, "then/")
    t = then.conv(t, CHANNELS, CHANNELS, "then_head", kernel=1)
    _rename_output(then, "then_y")

    other = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    e = other.conv(h, CHANNELS, CHANNELS, "conv")
    other.op("Relu", [e], "relu")
    _rename_output(other, "else_y")

    then_graph = then.graph("then_branch", [], [feature_map("then_y", main.elem_type)])
    else_graph = other.graph("else_branch", [], [feature_map("else_y", main.elem_type)])
    main.nodes.append(helper.make_node("If", ["flag"], ["y"], name="pick", then_branch=then_graph, else_branch=else_graph))
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    graph = main.graph("if_style", [feature_map("x", main.elem_type, 3), flag], [feature_map("y", main.elem_type)])
    return _model(graph, opset)


def loop_model(*, opset: int = 13, dtype: str = "float32", constants: bool = False) -> onnx.ModelProto:
    """x, flag → Conv → Loop(2 times; body: Conv → Relu → SE → If(flag; Conv | Relu)) → y."""
    rng = np.random.default_rng(2)
    names: dict[str, int] = {}
    main = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    h = main.conv("x", 3, CHANNELS, "stem")
    trips = main.tensor("trips", np.array(2, np.int64), exact=True)
    keep_going = main.tensor("keep_going", np.array(True), exact=True)

    body = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    b = body.conv("carried", CHANNELS, CHANNELS, "body_conv")
    b = body.op("Relu", [b], "body_relu")
    b = body.paddle_se(b, CHANNELS, SQUEEZE_CHANNELS, "body/")
    then = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    then.conv(b, CHANNELS, CHANNELS, "inner_conv", kernel=1)  # reads the body's value
    _rename_output(then, "inner_then")
    other = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    other.op("Relu", [b], "inner_relu")
    _rename_output(other, "inner_else")
    body.nodes.append(
        helper.make_node(
            "If",
            ["flag"],
            ["carried_next"],
            name="inner_pick",
            then_branch=then.graph("inner_then_branch", [], [feature_map("inner_then", main.elem_type)]),
            else_branch=other.graph("inner_else_branch", [], [feature_map("inner_else", main.elem_type)]),
        )
    )
    body.nodes.append(helper.make_node("Identity", ["cond"], ["cond_next"], name="body_cond"))
    body_graph = body.graph(
        "loop_body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            feature_map("carried", main.elem_type),
        ],
        [helper.make_tensor_value_info("cond_next", TensorProto.BOOL, []), feature_map("carried_next", main.elem_type)],
    )
    main.nodes.append(helper.make_node("Loop", [trips, keep_going, h], ["y"], name="repeat", body=body_graph))
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    graph = main.graph("loop_style", [feature_map("x", main.elem_type, 3), flag], [feature_map("y", main.elem_type)])
    return _model(graph, opset)


def scan_model(*, opset: int = 13, dtype: str = "float32", constants: bool = False) -> onnx.ModelProto:
    """x (steps × N × 3 × SPATIAL) → Scan(body: Conv → Relu → SE → Conv, per step) → y (steps × N × C × SPATIAL)."""
    rng = np.random.default_rng(3)
    names: dict[str, int] = {}
    main = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    body = GraphBuilder(rng=rng, dtype=dtype, constants=constants, names=names)
    b = body.conv("step", 3, CHANNELS, "step_conv")
    b = body.op("Relu", [b], "step_relu")
    b = body.paddle_se(b, CHANNELS, SQUEEZE_CHANNELS, "step/")
    body.conv(b, CHANNELS, CHANNELS, "step_head", kernel=1)
    _rename_output(body, "step_y")
    body_graph = body.graph("scan_body", [feature_map("step", main.elem_type, 3)], [feature_map("step_y", main.elem_type)])
    main.nodes.append(helper.make_node("Scan", ["x"], ["y"], name="steps", body=body_graph, num_scan_inputs=1))
    x = helper.make_tensor_value_info("x", main.elem_type, [2, "N", 3, *SPATIAL])
    y = helper.make_tensor_value_info("y", main.elem_type, [2, "N", CHANNELS, *SPATIAL])
    return _model(main.graph("scan_style", [x], [y]), opset)


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
        "If", ["flag"], [value.name for value in graph.output], name="pick", then_branch=branch("then/"), else_branch=branch("else/")
    )
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    nested = helper.make_graph([pick], graph.name, [*graph.input, flag], list(graph.output))
    result = helper.make_model(nested, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    onnx.checker.check_model(result, full_check=True)
    return result


def feeds(model: onnx.ModelProto, *, flag: bool = True, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in the model's dtype for every float input (symbolic dims set to `batch`),
    and `flag` where it has one."""
    rng = np.random.default_rng(seed)
    result = {}
    for value in model.graph.input:
        if value.name == "flag":
            result["flag"] = np.array(flag)
            continue
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else batch for dim in tensor_type.shape.dim]
        result[value.name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return result
