"""The one builder of se-onnx's sample and test models: a graph recorded on an onnx-ir tape.

A model reads as its graph, one `g.op(...)` per node:

    g = GraphBuilder(seed=0, opset=13)
    x = g.input("x", ["N", 3, 6, 6])
    h = g.op("Relu", [g.op("Conv", [x, g.weight("w", 8, 3, 3, 3)], "conv", pads=[1] * 4)], "relu")
    proto = g.model("chain", [x], [g.output(h, "y", ["N", 8, 6, 6])])

It lives in models/, beside models/build_samples.py, because three kinds of code build models with
it: build_samples.py (the committed samples), the tests' descriptions of how exporters write graphs
(tests/exporter_styles.py, tests/se_variants.py, tests/exporter_layouts.py), and the benchmarks,
which must not import from tests/. `models` is importable from the repository root, which pytest
(`pythonpath = ["."]`) and every benchmark put on sys.path. What only the tests need stays in tests/.

Names follow one of two schemes (`Names`): suffixed from 0 ("conv_0", "conv_1"), or the first
use of a stem bare ("conv", "conv_1") where a test names nodes and values as an exporter wrote them.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir


class Names:
    """Unique names from stems; one `Names` shared by every scope of a model keeps values unique."""

    def __init__(self, *, first_bare: bool = False) -> None:
        self.first_bare = first_bare
        self.counts: dict[str, int] = {}
        self.taken: set[str] = set()

    def __call__(self, stem: str) -> str:
        while True:
            count = self.counts.get(stem, 0)
            self.counts[stem] = count + 1
            name = stem if self.first_bare and count == 0 else f"{stem}_{count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def take(self, name: str) -> str:
        """`name` itself while it is free, else a fresh name with it as the stem."""
        if name in self.taken:
            return self(name)
        self.taken.add(name)
        return name


class GraphBuilder:
    """Nodes and weights of one graph, with seeded weights in the model's float type.

    Weights are initializers, or (with `constants`) Constant nodes. Node names come from
    `names(stem)` and each node's output is named after its node plus `output_suffix`.
    Initializers are kept apart from the tape, untyped, so that the model carries no value_info
    for them (as onnx.helper writes a model).
    """

    def __init__(
        self,
        *,
        dtype: str = "float32",
        seed: int = 0,
        rng: np.random.Generator | None = None,
        opset: int = 13,
        names: Names | None = None,
        constants: bool = False,
        output_suffix: str = "_out",
    ) -> None:
        self.np_dtype = np.dtype(dtype)
        self.dtype = ir.DataType.from_numpy(self.np_dtype)
        self.rng = np.random.default_rng(seed) if rng is None else rng
        self.opset = opset
        self.names = Names() if names is None else names
        self.constants = constants
        self.output_suffix = output_suffix
        self.tape = ir.tape.Tape()
        self.initializers: list[ir.Value] = []

    def input(self, name: str, shape: Sequence[int | str], dtype: ir.DataType | None = None) -> ir.Value:
        return ir.Value(name=name, type=ir.TensorType(dtype or self.dtype), shape=ir.Shape(shape))

    def output(
        self, value: ir.Value, name: str, shape: Sequence[int | str], dtype: ir.DataType | None = None
    ) -> ir.Value:
        """`value`, renamed `name` and typed as a graph output."""
        value.name = name
        value.type = ir.TensorType(dtype or self.dtype)
        value.shape = ir.Shape(shape)
        return value

    def op(
        self, op_type: str, inputs: Sequence[ir.Value | None], stem: str, *, name: str | None = None, **attributes
    ) -> ir.Value:
        """One node; `name` overrides the name drawn from `stem` (names repeated on purpose)."""
        node_name = name or self.names(stem)
        output = ir.Value(name=self.names.take(node_name + self.output_suffix))
        # Sorted as onnx.helper.make_node sorts them, so that models built either way serialize alike.
        return self.tape.op(op_type, inputs, dict(sorted(attributes.items())) or None, name=node_name, output=output)

    def tensor(self, name: str, array, *, exact: bool = False) -> ir.Value:
        """A constant named `name`: an initializer, or a Constant node's `value` with `constants`."""
        array = np.asarray(array) if exact else np.asarray(array, dtype=self.np_dtype)
        if not self.constants:
            self.initializers.append(ir.Value(name=name, const_value=ir.tensor(array, name=name)))
            return self.initializers[-1]
        return self.constant(name, value=ir.tensor(array, name=f"{name}_value"))

    def constant(self, name: str, **attribute) -> ir.Value:
        """A Constant node whose output is `name`, with its one `value*` attribute."""
        return self.tape.op("Constant", [], attribute, name=f"{name}_constant", output=ir.Value(name=name))

    def const(self, stem: str, array, *, exact: bool = False) -> ir.Value:
        """A constant named from `stem`, in the model's float type unless `exact`."""
        return self.tensor(self.names(stem), array, exact=exact)

    def weight(self, stem: str, *shape: int, scale: float = 1.0) -> ir.Value:
        """Uniform in ±scale/√fan_in, fan_in being the product of all dims after the first."""
        bound = scale / np.sqrt(int(np.prod(shape[1:])) if len(shape) > 1 else 1)
        return self.const(stem, self.rng.uniform(-bound, bound, shape))

    def stream(self, seed: int) -> GraphBuilder:
        """A builder of this same graph drawing its weights from a stream of their own, so that a
        part of the model (its SE blocks) can come and go without changing the other weights."""
        other = copy.copy(self)
        other.rng = np.random.default_rng(seed)
        return other

    def mean(self, x: ir.Value, axes: list[int], stem: str, *, keepdims: int = 1) -> ir.Value:
        """ReduceMean over `axes`: an input from opset 18, an attribute before."""
        if self.opset >= 18:
            axes_value = self.const(stem + "_axes", np.array(axes, np.int64), exact=True)
            return self.op("ReduceMean", [x, axes_value], stem, keepdims=keepdims)
        return self.op("ReduceMean", [x], stem, axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: ir.Value, axes: list[int], stem: str) -> ir.Value:
        """Unsqueeze on `axes`: an input from opset 13, an attribute before."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(stem + "_axes", np.array(axes, np.int64), exact=True)], stem)
        return self.op("Unsqueeze", [x], stem, axes=axes)

    def graph(self, name: str, inputs: Sequence[ir.Value], outputs: Sequence[ir.Value]) -> ir.Graph:
        """The graph of what was recorded; a subgraph when it is a branch or body."""
        return ir.Graph(inputs, outputs, nodes=self.tape.nodes, initializers=self.initializers, name=name)

    def model(
        self,
        name: str,
        inputs: Sequence[ir.Value],
        outputs: Sequence[ir.Value],
        *,
        ir_version: int = 8,
        producer_name: str | None = None,
    ) -> onnx.ModelProto:
        """The checked model: this graph at `self.opset`."""
        graph = self.graph(name, inputs, outputs)
        graph.opset_imports[""] = self.opset
        proto = ir.to_proto(ir.Model(graph, ir_version=ir_version, producer_name=producer_name))
        onnx.checker.check_model(proto, full_check=True)
        return proto


def seeded_inputs(
    model: onnx.ModelProto, *, batch: int = 2, seed: int = 0, count: int = 1
) -> list[dict[str, np.ndarray]]:
    """`count` feeds of N(0, 1) values in each input's type, symbolic dims set to `batch`, from one seeded stream."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in model.graph.input:
            tensor_type = value.type.tensor_type
            shape = [dim.dim_value if dim.HasField("dim_value") else batch for dim in tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        feeds.append(feed)
    return feeds


def quantize_qdq(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """The model quantized by ONNX Runtime's `quantize_static`, QDQ format, its defaults otherwise,
    calibrated on four seeded batches of 2."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(seeded_inputs(model, count=4))

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as directory:
        source, target = Path(directory, "float.onnx"), Path(directory, "qdq.onnx")
        onnx.save(model, source)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, **options)
        return onnx.load(target)
