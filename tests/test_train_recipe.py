"""Tests of the training recipe: which constants weight decay leaves alone, the optimizers, and the
learning-rate schedule's values, resumption and errors."""

from __future__ import annotations

import io

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from models.builders import GraphBuilder  # noqa: E402
from se_onnx import SeOnnxError  # noqa: E402
from se_onnx.training.recipe import build_optimizer, build_schedule, current_lr, no_decay_names  # noqa: E402


def _conv_bn_gemm() -> ir.Model:
    """Conv, BatchNorm, PRelu, a gain that reaches its Mul through Identity(Constant), a MatMul with a
    2-D bias Add, and a Gemm: every kind of constant that decay must skip, none of them 1-D only."""
    g = GraphBuilder(seed=0, opset=13)
    x = g.input("x", ["N", 3, 6, 6])
    h = g.op("Conv", [x, g.tensor("conv_w", np.ones((4, 3, 3, 3))), g.tensor("conv_b", np.zeros(4))], "conv")
    bn = [g.tensor(f"bn_{name}", np.ones(4)) for name in ("scale", "bias", "mean", "var")]
    h = g.op("BatchNormalization", [h, *bn], "bn")
    h = g.op("PRelu", [h, g.tensor("slope", np.full((4, 1, 1), 0.25))], "prelu")
    gain = g.constant("gain", value=ir.tensor(np.ones((1, 4, 1, 1), np.float32), name="gain_value"))
    h = g.op("Mul", [h, g.op("Identity", [gain], "gain_identity")], "gate")
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h], "pool")], "flatten")
    h = g.op("MatMul", [h, g.tensor("fc_w", np.ones((4, 5)))], "fc")
    h = g.op("Add", [h, g.tensor("fc_b", np.zeros((1, 5)))], "fc_bias")
    h = g.op("Gemm", [h, g.tensor("head_w", np.ones((3, 5))), g.tensor("head_b", np.zeros(3))], "head", transB=1)
    return ir.from_proto(g.model("tiny", [x], [g.output(h, "y", ["N", 3])]))


def test_decay_skips_biases_normalisation_gains_and_slopes():
    model = _conv_bn_gemm()
    every = [*model.graph.initializers, "gain"]
    assert no_decay_names(model, every) == set(every) - {"conv_w", "fc_w", "head_w"}
    # Only the names asked about: a subset comes back as a subset.
    assert no_decay_names(model, ["conv_w", "conv_b"]) == {"conv_b"}


def test_decay_refuses_a_name_that_is_no_constant():
    with pytest.raises(ValueError, match="x"):
        no_decay_names(_conv_bn_gemm(), ["x"])


def _parameters(*names: str) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, torch.nn.Parameter(torch.ones(2, 2))) for name in names]


def test_optimizer_groups_decay_and_no_decay():
    named = _parameters("w1", "b1", "w2")
    optimizer = build_optimizer(named, kind="adamw", lr=0.1, weight_decay=0.05, no_decay={"b1"})
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, kept = optimizer.param_groups
    assert [len(decay["params"]), decay["weight_decay"]] == [2, 0.05]
    assert kept["params"] == [named[1][1]] and kept["weight_decay"] == 0
    only_kept = build_optimizer(named, kind="adamw", lr=0.1, weight_decay=0.05, no_decay={"w1", "b1", "w2"})
    assert [group["weight_decay"] for group in only_kept.param_groups] == [0]


def test_sgd_has_nesterov_momentum():
    optimizer = build_optimizer(_parameters("w"), kind="sgd", lr=0.1, weight_decay=1e-4, no_decay=set())
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4


def test_optimizer_errors_name_their_flags():
    with pytest.raises(SeOnnxError, match="--optimizer must be one of adamw, sgd, not 'adam'"):
        build_optimizer(_parameters("w"), kind="adam", lr=0.1, weight_decay=0, no_decay=set())
    with pytest.raises(SeOnnxError, match="--weight-decay"):
        build_optimizer(_parameters("w"), kind="sgd", lr=0.1, weight_decay=-1, no_decay=set())


def _run(kind: str, steps: int, *, state: tuple[dict, dict] | None = None, **schedule) -> tuple[list[float], tuple]:
    """The learning rate of each of `steps` optimizer steps (base rate 1), and the states after,
    starting from `state` when given, as a resumed run does."""
    optimizer = build_optimizer(_parameters("w"), kind="sgd", lr=1.0, weight_decay=0, no_decay=set())
    scheduler = build_schedule(optimizer, kind=kind, **schedule)
    if state is not None:
        optimizer.load_state_dict(state[0])
        scheduler.load_state_dict(state[1])
    rates = []
    for _ in range(steps):
        rates.append(current_lr(optimizer))
        optimizer.step()
        scheduler.step()
    return rates, (optimizer.state_dict(), scheduler.state_dict())


SHAPE = {"epochs": 3, "steps_per_epoch": 4, "warmup_epochs": 1}  # 4 warmup steps of 12


def test_cosine_warms_up_then_decays_to_zero_after_the_last_step():
    rates, (_, state) = _run("cosine", 12, **SHAPE)
    np.testing.assert_allclose(rates[:5], [0.25, 0.5, 0.75, 1.0, 1.0])
    assert rates[8] == pytest.approx(0.5)  # halfway through the cosine
    assert rates[11] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert 0 < rates[11] < rates[10]
    assert state["_last_lr"] == [pytest.approx(0)]


def test_constant_warms_up_then_holds():
    rates, _ = _run("constant", 12, **SHAPE)
    np.testing.assert_allclose(rates, [0.25, 0.5, 0.75] + [1.0] * 9)
    assert _run("constant", 2, epochs=1, steps_per_epoch=2, warmup_epochs=0)[0] == [1.0, 1.0]


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_a_resumed_schedule_gives_the_same_rates(kind):
    whole, _ = _run(kind, 12, **SHAPE)
    first, state = _run(kind, 5, **SHAPE)
    saved = io.BytesIO()
    torch.save(state, saved)  # as a checkpoint holds it
    saved.seek(0)
    rest, _ = _run(kind, 7, state=torch.load(saved, weights_only=True), **SHAPE)
    assert first + rest == whole


@pytest.mark.parametrize(
    "kind, warmup", [("cosine", 3), ("cosine", -0.5), ("constant", 3.5), ("constant", float("nan"))]
)
def test_schedule_refuses_a_warmup_beyond_training(kind, warmup):
    optimizer = build_optimizer(_parameters("w"), kind="sgd", lr=1.0, weight_decay=0, no_decay=set())
    with pytest.raises(SeOnnxError, match=f"--warmup-epochs .* with --schedule {kind}"):
        build_schedule(optimizer, kind=kind, epochs=3, steps_per_epoch=4, warmup_epochs=warmup)


def test_schedule_refuses_an_unknown_kind():
    optimizer = build_optimizer(_parameters("w"), kind="sgd", lr=1.0, weight_decay=0, no_decay=set())
    with pytest.raises(SeOnnxError, match="--schedule must be one of cosine, constant, not 'step'"):
        build_schedule(optimizer, kind="step", epochs=3, steps_per_epoch=4, warmup_epochs=0)
