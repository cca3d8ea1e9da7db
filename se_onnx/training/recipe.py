"""The training recipe's optimizer and learning-rate schedule: AdamW or Nesterov SGD with weight
decay kept off biases, normalisation parameters and gains, and a linear warmup into a cosine or
constant learning rate, stepped once per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import onnx_ir as ir
import torch

from se_onnx.errors import SeOnnxError
from se_onnx.ir.constants import constant_source, constant_tensor
from se_onnx.ir.graph import value_name
from se_onnx.training.options import OPTIMIZERS, SCHEDULES

SGD_MOMENTUM = 0.9
# The inputs that hold a bias, a normalisation's scale and shift, or a slope, by op type. Decay pulls
# a value towards 0: a kernel towards a smoother function, but these only towards a shifted or
# shrunk one, which regularises nothing.
_NO_DECAY_INPUTS: Mapping[str, tuple[int, ...]] = {
    "Conv": (2,),
    "ConvTranspose": (2,),
    "Gemm": (2,),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "PRelu": (1,),
}
# A constant operand of these is a bias (Add) or a gain (Mul, e.g. an attention gate's), whatever its rank.
_OPERAND_OPS = frozenset({"Add", "Mul"})


def no_decay_names(model: ir.Model, names: Iterable[str]) -> set[str]:
    """Those of `names` (initializers and `Constant` node outputs of the main graph, see
    `se_onnx.ir.constants.constant_source`) that weight decay must not touch: biases,
    normalisation parameters, gains, PReLU slopes, and every constant of fewer than 2 dims
    (timm's convention: decay only matrices and kernels)."""
    wanted = set(names)
    constants = {value_name(value): value for value in model.graph.initializers.values()}
    constants.update(
        (value_name(node.outputs[0]), node.outputs[0]) for node in model.graph if node.op_type == "Constant"
    )
    missing = wanted - constants.keys()
    if missing:
        raise ValueError(f"not constants of the main graph: {', '.join(sorted(missing))}")
    found = set()
    for name in wanted:
        tensor = constant_tensor(constants[name])
        if tensor is not None and len(tensor.shape) < 2:
            found.add(name)
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _OPERAND_OPS:
            indices: Iterable[int] = range(len(node.inputs))
        else:
            indices = _NO_DECAY_INPUTS.get(node.op_type, ())
        for index in indices:
            source = constant_source(node.inputs[index] if index < len(node.inputs) else None)
            if source is not None and source.name in wanted:
                found.add(value_name(source))
    return found


def build_optimizer(
    named: Sequence[tuple[str, torch.nn.Parameter]],
    *,
    kind: str,
    lr: float,
    weight_decay: float,
    no_decay: set[str],
) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, over `named` parameters in two groups: those not in
    `no_decay` with `weight_decay`, the others with none (an empty group is left out)."""
    if kind not in OPTIMIZERS:
        raise SeOnnxError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {kind!r}")
    if not weight_decay >= 0:
        raise SeOnnxError(f"--weight-decay must be at least 0, not {weight_decay:g}")
    decayed = [parameter for name, parameter in named if name not in no_decay]
    kept = [parameter for name, parameter in named if name in no_decay]
    groups = [
        {"params": params, "weight_decay": decay} for params, decay in ((decayed, weight_decay), (kept, 0.0)) if params
    ]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM, nesterov=True)


def build_schedule(
    optimizer: torch.optim.Optimizer, *, kind: str, epochs: int, steps_per_epoch: int, warmup_epochs: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate of each optimizer step (call `step()` after each): a linear warmup over
    `warmup_epochs` (the s-th of its W steps at (s + 1) / W of the base rate, the last at the base
    rate), then the base rate (constant) or a half cosine that reaches 0 just after the last step
    (cosine), so that every step still learns.

    Its `state_dict` holds the step count: a resumed run builds the schedule with the same
    arguments, loads both state dicts, and continues with the same learning rates."""
    if kind not in SCHEDULES:
        raise SeOnnxError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {kind!r}")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"a schedule needs at least one epoch and step, not {epochs} and {steps_per_epoch}")
    # Cosine needs steps after the warmup to decay over; constant is only warmup, if asked.
    limit = "less than" if kind == "cosine" else "at most"
    fits = warmup_epochs < epochs if kind == "cosine" else warmup_epochs <= epochs
    if not (warmup_epochs >= 0 and fits):
        raise SeOnnxError(
            f"--warmup-epochs must be at least 0 and {limit} --epochs ({epochs}) with --schedule {kind}, "
            f"not {warmup_epochs:g}"
        )
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _factor(kind, warmup, total))


def _factor(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """The base rate's multiplier at step `step` (0 before the first optimizer step)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        # A warmup rounded up to every step leaves none to decay over: max() only avoids 0 / 0.
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return factor


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the next step takes (every group has the same)."""
    return float(optimizer.param_groups[0]["lr"])
