"""Tests of the trainable identity init (gate 2·σ(0)): exact outputs, live gradients, and the gain
surviving find, fuse, strip, export-weights and --weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from models import build_samples
from se_onnx import find_se, fuse_se, insert_se, save_model, strip_se, unfuse_se
from se_onnx.ir.se_block import TRAINABLE_GATE_GAIN
from se_onnx.passes.export_weights import export_se_weights
from se_onnx.passes.insert import InsertOptions
from tests.se_variants import feeds_for, ort_outputs

OPSETS = (13, 18)


def _inserted(opset: int, **options) -> tuple[onnx.ModelProto, ir.Model]:
    original = build_samples.resnet_like(opset=opset)
    model, _ = insert_se(ir.from_proto(original), InsertOptions(**options))
    return original, model


def _outputs(model: onnx.ModelProto | ir.Model, feeds) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return ort_outputs(proto, feeds)


@pytest.mark.parametrize("opset", OPSETS)
def test_identity_init_leaves_outputs_unchanged(opset, tmp_path):
    original, model = _inserted(opset)
    save_model(model, tmp_path / "se.onnx")  # the full checker
    feeds = feeds_for(original, batch=3)
    for before, after in zip(_outputs(original, feeds), _outputs(model, feeds)):
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    blocks = find_se(model)
    assert blocks and all(block.gate.gain == TRAINABLE_GATE_GAIN for block in blocks)
    assert all(np.all(block.layers[1].weights.bias == 0) for block in blocks)


@pytest.mark.parametrize("opset", OPSETS)
def test_identity_init_has_live_gradients_and_the_saturated_init_has_none(opset):
    torch = pytest.importorskip("torch")
    from se_onnx.training.graph_module import OnnxModule
    from se_onnx.training.loop import trainable_initializers

    feeds = feeds_for(build_samples.resnet_like(opset=opset), batch=4)
    x = torch.from_numpy(next(iter(feeds.values())))
    gradients = {}
    for init in ("identity", "saturated"):
        _, model = _inserted(opset, init=init)
        names, _ = trainable_initializers(model, "se")
        module = OnnxModule(model)
        for name in names:
            module.parameters_by_name[name].requires_grad_(True)
        module(x)[0].square().sum().backward()
        gradients[init] = max(float(module.parameters_by_name[n].grad.abs().max()) for n in names if "fc2" in n)
    assert gradients["identity"] > 1e-3
    assert gradients["saturated"] < 1e-6


@pytest.mark.parametrize("opset", OPSETS)
def test_gain_survives_every_rewrite(opset, tmp_path):
    original, inserted = _inserted(opset)
    # A trained-looking block: a non-zero excitation, so that losing the gain would show.
    for value in inserted.graph.initializers.values():
        if value.name.endswith("fc2_weight"):
            value.const_value = ir.tensor(np.full(value.const_value.shape.numpy(), 0.3, np.float32), name=value.name)
    feeds = feeds_for(original, batch=2)
    expected = _outputs(inserted, feeds)
    for rewritten in (
        fuse_se(inserted, "canonical")[0],
        fuse_se(inserted, "function")[0],
        unfuse_se(fuse_se(inserted, "function")[0])[0],
    ):
        save_model(rewritten, tmp_path / "rewritten.onnx")
        for a, b in zip(expected, _outputs(rewritten, feeds)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # The canonical rewrite is found again with its gain.
    assert {block.gate.gain for block in find_se(fuse_se(inserted, "canonical")[0])} == {TRAINABLE_GATE_GAIN}
    stripped, report = strip_se(inserted)
    assert not find_se(stripped) and len(report.blocks) == 2
    assert len(stripped.graph) == len(original.graph.node)


def test_export_weights_and_weights_file_round_trip_the_gain(tmp_path):
    original = build_samples.resnet_like(opset=13)
    model, _ = insert_se(ir.from_proto(original), InsertOptions())
    arrays = export_se_weights(model)
    gains = {key: float(value) for key, value in arrays.items() if key.endswith(".gate.gain")}
    assert gains and set(gains.values()) == {TRAINABLE_GATE_GAIN}
    # Perturb the weights, as training would, then rebuild from the file.
    arrays = {key: value + 0.1 if key.endswith("fc2.bias") else value for key, value in arrays.items()}
    rebuilt, _ = insert_se(ir.from_proto(original), InsertOptions(weights=arrays))
    again = export_se_weights(rebuilt)
    assert again.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(again[key], arrays[key])
    # A plain (saturated or random) block writes four keys, no gain.
    plain, _ = insert_se(ir.from_proto(original), InsertOptions(init="saturated"))
    assert not any(key.endswith(".gate.gain") for key in export_se_weights(plain))
