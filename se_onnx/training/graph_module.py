"""Runs an ONNX graph as a PyTorch module, its float constants as parameters named after them.

`se-onnx train` fine-tunes a model in PyTorch and writes the trained values back into the same
ONNX graph. Keeping one torch parameter per constant (an initializer, or a `Constant` node as
Paddle2ONNX writes every weight), in the constant's own layout, makes
that write-back a copy by name: no layer is re-laid out (a Gemm's transposed weight, a conv bias
folded elsewhere), so every other byte of the model stays as it was.

Why not onnx2torch (or onnx2pytorch): both require torchvision, which se-onnx does not install,
and onnx2torch imports it for two detection ops even to convert a classifier (with the CPU wheel
of torch 2.13 the registry's torchvision build does not even import). Their modules also regroup
initializers into layers (a Gemm becomes a Linear with its weight transposed and scaled), which
would need each converter's layout undone to write the weights back. The op table below covers
the ops of conv classifiers; any other op is named in the error before training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import constant_array
from se_onnx.ir.graph import node_label, value_name

Tensor = torch.Tensor
# An op's output, or its outputs for a node with several (Split).
_Op = Callable[[list, Mapping[str, Any], int], Tensor | tuple[Tensor, ...]]

_TORCH_DTYPES = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}


def _ints(value: Any) -> list[int]:
    return [int(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]


def _axes(inputs: list, attributes: Mapping[str, Any], index: int = 1) -> list[int] | None:
    """Axes from the attribute (older opsets) or the input at `index` (newer ones)."""
    if "axes" in attributes:
        return _ints(attributes["axes"])
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    return None


def _same_pads(
    x: Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], upper: bool
) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _padded(x: Tensor, pads: list[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """(x, symmetric per-axis padding) — asymmetric ONNX pads are applied here with F.pad."""
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return x, begins
    torch_pads: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends)):
        torch_pads += [begin, end]
    return F.pad(x, torch_pads, value=value), [0] * rank


def _window(x: Tensor, attributes: Mapping[str, Any], kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    rank = len(kernel)
    strides = _ints(attributes.get("strides", [1] * rank))
    dilations = _ints(attributes.get("dilations", [1] * rank))
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID":
        pads = [0] * 2 * rank
    else:
        pads = _ints(attributes.get("pads", [0] * 2 * rank))
    return strides, dilations, pads


def _conv(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel = list(weight.shape[2:])
    strides, dilations, pads = _window(x, attributes, kernel)
    x, padding = _padded(x, pads)
    function = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    return function(x, weight, bias, strides, padding, dilations, int(attributes.get("group", 1)))


def _pool(kind: str) -> _Op:
    def pool(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
        x = inputs[0]
        kernel = _ints(attributes["kernel_shape"])
        strides, dilations, pads = _window(x, attributes, kernel)
        ceil_mode = bool(attributes.get("ceil_mode", 0))
        rank = len(kernel)
        if kind == "max":
            x, padding = _padded(x, pads, value=-math.inf)
            max_pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
            return max_pool(x, kernel, strides, padding, dilations, ceil_mode)
        count_include_pad = bool(attributes.get("count_include_pad", 0))
        if pads[:rank] != pads[rank:] or any(p * 2 > k for p, k in zip(pads, kernel)):
            x, padding = _padded(x, pads)
            count_include_pad = True
        else:
            padding = pads[:rank]
        avg_pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
        return avg_pool(x, kernel, strides, padding, ceil_mode, count_include_pad)

    return pool


def _gemm(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    a, b = inputs[0], inputs[1]
    if attributes.get("transA", 0):
        a = a.transpose(0, 1)
    if attributes.get("transB", 0):
        b = b.transpose(0, 1)
    output = (a @ b) * float(attributes.get("alpha", 1.0))
    if len(inputs) > 2 and inputs[2] is not None:
        output = output + inputs[2] * float(attributes.get("beta", 1.0))
    return output


def _batch_norm(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x, scale, bias, mean, var = inputs[:5]
    # Inference form: the running statistics are the model's and are not updated by training.
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(attributes.get("epsilon", 1e-5)))


def _batch_norm_training(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    """Normalise with the batch's statistics and fold them into the running ones, in place.
    ONNX keeps `momentum` of the running value (default 0.9); torch's momentum is the new value's share."""
    x, scale, bias, mean, var = inputs[:5]
    momentum = 1.0 - float(attributes.get("momentum", 0.9))
    eps = float(attributes.get("epsilon", 1e-5))
    return F.batch_norm(x, mean, var, scale, bias, training=True, momentum=momentum, eps=eps)


def _reduce_mean(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    axes = _axes(inputs, attributes)
    keepdims = bool(attributes.get("keepdims", 1))
    if not axes:
        if attributes.get("noop_with_empty_axes", 0):
            return inputs[0]
        axes = list(range(inputs[0].dim()))
    return inputs[0].mean(dim=axes, keepdim=keepdims)


def _reduce_max(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    axes = _axes(inputs, attributes) or list(range(inputs[0].dim()))
    return inputs[0].amax(dim=axes, keepdim=bool(attributes.get("keepdims", 1)))


def _split(inputs: list, attributes: Mapping[str, Any], opset: int) -> tuple[Tensor, ...]:
    """Split by the sizes given (an attribute before opset 13, an input after), else in equal parts."""
    axis = int(attributes.get("axis", 0))
    sizes = _ints(attributes["split"]) if "split" in attributes else None
    if sizes is None and len(inputs) > 1 and inputs[1] is not None:
        sizes = _ints(inputs[1])
    if sizes is None:
        parts = int(attributes.get("num_outputs", 2))
        sizes = [inputs[0].shape[axis] // parts] * parts
    return tuple(torch.split(inputs[0], sizes, dim=axis))


def _reshape(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    if not attributes.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x = inputs[0]
    axis = int(attributes.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis  # axis = rank is allowed: N·…·last × 1
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _unsqueeze(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x, axes = inputs[0], _axes(inputs, attributes)
    if axes is None:
        raise SeOnnxError("an Unsqueeze node has no axes: not a valid model")
    rank = x.dim() + len(axes)  # negative axes count from the end of the output
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    axes = _axes(inputs, attributes)
    if axes is None:
        return inputs[0].squeeze()
    return inputs[0].squeeze(tuple(a % inputs[0].dim() for a in axes))


def _softmax(log: bool) -> _Op:
    def softmax(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
        x = inputs[0]
        function = F.log_softmax if log else F.softmax
        if opset >= 13:
            return function(x, dim=int(attributes.get("axis", -1)))
        # Before opset 13 the op flattens the axes from `axis` on into one.
        axis = int(attributes.get("axis", 1)) % x.dim()
        return function(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)

    return softmax


def _clip(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attributes.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attributes.get("max")
    return torch.clamp(inputs[0], low, high)


def _hard_sigmoid(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    alpha, beta = float(attributes.get("alpha", 0.2)), float(attributes.get("beta", 0.5))
    return torch.clamp(inputs[0] * alpha + beta, 0.0, 1.0)


def _prelu(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x, slope = inputs
    return torch.where(x >= 0, x, x * slope)


def _shape(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    dims = list(inputs[0].shape)
    start, end = int(attributes.get("start", 0)), attributes.get("end")
    return torch.tensor(dims[start : None if end is None else int(end)], dtype=torch.int64)


def _gather(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    x, indices = inputs
    axis = int(attributes.get("axis", 0)) % x.dim()
    indices = indices.to(x.device)  # shape arithmetic stays on the CPU; the data may be on a GPU
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    return x.index_select(axis, indices.reshape(-1)).reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])


def _cast(inputs: list, attributes: Mapping[str, Any], opset: int) -> Tensor:
    target = ir.DataType(int(attributes["to"]))
    if target not in _TORCH_DTYPES:
        raise SeOnnxError(f"Cast to {target.name} is not supported in training")
    return inputs[0].to(_TORCH_DTYPES[target])


def _elementwise(function: Callable[..., Tensor]) -> _Op:
    return lambda inputs, attributes, opset: function(*inputs)


OPS: dict[str, _Op] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "MatMul": _elementwise(torch.matmul),
    "Add": _elementwise(torch.add),
    "Sub": _elementwise(torch.sub),
    "Mul": _elementwise(torch.mul),
    "Div": _elementwise(torch.div),
    "Relu": _elementwise(F.relu),
    "Sigmoid": _elementwise(torch.sigmoid),
    "Tanh": _elementwise(torch.tanh),
    "HardSwish": _elementwise(F.hardswish),
    "HardSigmoid": _hard_sigmoid,
    "LeakyRelu": lambda inputs, attributes, opset: F.leaky_relu(inputs[0], float(attributes.get("alpha", 0.01))),
    "Elu": lambda inputs, attributes, opset: F.elu(inputs[0], float(attributes.get("alpha", 1.0))),
    "Gelu": lambda inputs, attributes, opset: F.gelu(inputs[0], approximate=str(attributes.get("approximate", "none"))),
    "Softplus": _elementwise(F.softplus),
    "PRelu": _prelu,
    "Clip": _clip,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("average"),
    "GlobalAveragePool": lambda inputs, attributes, opset: inputs[0].mean(
        dim=tuple(range(2, inputs[0].dim())), keepdim=True
    ),
    "GlobalMaxPool": lambda inputs, attributes, opset: inputs[0].amax(
        dim=tuple(range(2, inputs[0].dim())), keepdim=True
    ),
    "ReduceMean": _reduce_mean,
    "ReduceMax": _reduce_max,
    "Split": _split,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Transpose": lambda inputs, attributes, opset: inputs[0].permute(
        *_ints(attributes.get("perm", list(reversed(range(inputs[0].dim())))))
    ),
    "Concat": lambda inputs, attributes, opset: torch.cat(
        [x for x in inputs if x is not None], dim=int(attributes["axis"])
    ),
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
    "Identity": _elementwise(lambda x: x),
    "Dropout": lambda inputs, attributes, opset: inputs[0],  # inference form, as the model was exported
    "Shape": _shape,
    "Gather": _gather,
    "Cast": _cast,
}


class OnnxModule(torch.nn.Module):
    """The model's main graph as a torch module: forward(*inputs) returns the graph's outputs.

    `parameters_by_name` maps each float constant's ONNX name (an initializer's, or a `Constant`
    node output's) to its torch parameter. Integer constants (shapes, axes) stay on the CPU when
    the module moves to a GPU: they are read as Python numbers.

    With `batch_norm_statistics`, BatchNormalization nodes normalise with each batch's statistics
    in training mode (`module.train()`) and update their running mean and variance, which are the
    parameters `batch_norm_statistics_names` lists; in eval mode, and by default, they use the
    model's running statistics as exported.
    """

    def __init__(self, model: ir.Model, *, batch_norm_statistics: bool = False) -> None:
        super().__init__()
        self.batch_norm_statistics = batch_norm_statistics
        graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        unsupported: dict[str, str] = {}
        for node in graph:
            if node.domain not in ("", "ai.onnx") or (node.op_type not in OPS and node.op_type != "Constant"):
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
                unsupported.setdefault(op, node_label(node))
        if unsupported:
            raise SeOnnxError(
                "se-onnx train cannot run these ops in PyTorch: "
                + ", ".join(f"{op} (e.g. node {name!r})" for op, name in sorted(unsupported.items()))
            )
        self._parameters_list = torch.nn.ParameterList()
        self.parameters_by_name: dict[str, torch.nn.Parameter] = {}
        self._constants: dict[str, Tensor] = {}
        constants = [value for value in graph.initializers.values()]
        constants += [node.outputs[0] for node in graph if node.op_type == "Constant"]
        for value in constants:
            tensor = torch.from_numpy(np.array(constant_array(value)))
            if tensor.is_floating_point():
                parameter = torch.nn.Parameter(tensor, requires_grad=False)
                self._parameters_list.append(parameter)
                self.parameters_by_name[value_name(value)] = parameter
            else:
                self._constants[value_name(value)] = tensor
        self.steps: list[tuple[str, list[str | None], list[str], dict[str, object]]] = []
        for node in graph:
            if node.op_type == "Constant":
                continue
            attributes = {name: _attribute_value(attr) for name, attr in node.attributes.items()}
            self.steps.append(
                (
                    node.op_type,
                    [value_name(v) if v is not None else None for v in node.inputs],
                    [value_name(v) for v in node.outputs],
                    attributes,
                )
            )
        self.batch_norm_statistics_names = [
            value_name(statistic)
            for node in graph
            if node.op_type == "BatchNormalization"
            for statistic in node.inputs[3:5]
            if statistic is not None and value_name(statistic) in self.parameters_by_name
        ]
        self.input_names = [value_name(value) for value in graph.inputs if value.name not in graph.initializers]
        self.output_names = [value_name(value) for value in graph.outputs]

    def forward(self, *inputs: Tensor, extra: Sequence[str] = ()) -> list[Tensor]:
        """The graph's outputs, then the values named in `extra` (any value the graph computes)."""
        values: dict[str, Tensor] = {**self._constants, **self.parameters_by_name}
        values.update(zip(self.input_names, inputs))
        for op_type, input_names, output_names, attributes in self.steps:
            operands = [values[name] if name else None for name in input_names]
            result: Tensor | tuple[Tensor, ...]
            if op_type == "BatchNormalization" and self.batch_norm_statistics and self.training:
                result = _batch_norm_training(operands, attributes, self.opset)
            else:
                result = OPS[op_type](operands, attributes, self.opset)
            if isinstance(result, tuple):  # a node with several outputs (Split)
                values.update(zip(output_names, result))
            else:
                values[output_names[0]] = result
        return [values[name] for name in (*self.output_names, *extra)]


def _attribute_value(attribute: ir.Attr) -> Any:
    if attribute.type == ir.AttributeType.TENSOR:
        return torch.from_numpy(np.array(attribute.value.numpy()))
    return attribute.value
