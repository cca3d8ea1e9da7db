"""Tests of the attention kinds after SE (ECA, CBAM, coordinate attention): insert → find → strip →
export/--weights at every supported opset and float type, the forms torch.onnx writes from PyTorch
modules, look-alikes that are not counted, and training."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from models import build_samples
from models.builders import GraphBuilder, quantize_qdq
from se_onnx import find_se
from se_onnx.cli import main
from se_onnx.errors import OptionError
from se_onnx.ir.attention import eca_kernel
from se_onnx.passes.export_weights import export_weights
from se_onnx.passes.find_attention import detect_attention, find_attention
from se_onnx.passes.insert import InsertOptions, InsertSE, insert_se
from se_onnx.passes.strip import StripSE, strip_se
from tests import exporter_layouts as layouts
from tests import exporter_styles as styles
from tests.se_variants import feeds_for, ort_outputs

KINDS = ("eca", "cbam", "coord")


def _checked(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _outputs(model: onnx.ModelProto, feeds) -> np.ndarray:
    return ort_outputs(model, feeds)[0].astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("opset", [11, 13, 17, 21])
@pytest.mark.parametrize("kind", KINDS)
def test_insert_find_strip_and_weights_round_trip(kind, opset, dtype):
    base = build_samples.resnet_like(opset=opset, dtype=dtype)
    feeds = feeds_for(base)
    expected = _outputs(base, feeds)

    identity, report = insert_se(ir.from_proto(base), InsertOptions(block=kind, where="conv"))
    assert report.blocks and {block.kind for block in report.blocks} == {kind}
    found = find_attention(identity)
    assert [block.kind for block in found] == [kind] * len(report.blocks)
    assert find_se(identity) == []  # SE detection counts none of them
    # The trainable identity: every gate is exactly 2·σ(0) = 1.
    np.testing.assert_allclose(_outputs(_checked(identity), feeds), expected, rtol=1e-5, atol=1e-5)

    random, _ = insert_se(ir.from_proto(base), InsertOptions(block=kind, where="conv", init="random", seed=3))
    changed = _outputs(_checked(random), feeds)
    assert np.abs(changed - expected).max() > 1e-2

    stripped, strip_report = strip_se(random, kind)
    assert len(strip_report.blocks) == len(report.blocks) and find_attention(stripped) == []
    np.testing.assert_allclose(_outputs(_checked(stripped), feeds), expected, rtol=1e-5, atol=1e-5)

    weights = export_weights(random)
    again, _ = insert_se(ir.from_proto(base), InsertOptions(block=kind, where="conv", weights=weights))
    np.testing.assert_array_equal(_outputs(_checked(again), feeds), changed)
    assert export_weights(again).keys() == weights.keys()


@pytest.mark.parametrize("kind", ["se", *KINDS])
def test_every_pass_converges_under_a_pass_manager(kind):
    model = ir.from_proto(build_samples.resnet_like(opset=17))
    result = ir.passes.PassManager([InsertSE(InsertOptions(block=kind))], steps=2)(model)
    assert result.modified
    blocks = find_attention(result.model)
    assert {block.kind for block in blocks} == {kind}
    # A second insertion of any kind finds every site taken and every block's convs no candidates.
    for other in ("se", *KINDS):
        assert not InsertSE(InsertOptions(block=other))(result.model).modified
    stripped = ir.passes.PassManager([StripSE("all")], steps=2)(result.model)
    assert stripped.modified and find_attention(stripped.model) == []


def test_eca_kernel_follows_the_paper_and_can_be_set():
    assert [eca_kernel(c) for c in (16, 64, 128, 256, 512)] == [3, 3, 5, 5, 5]
    model = ir.from_proto(build_samples.resnet_like(opset=17))
    _, report = insert_se(model, InsertOptions(block="eca", where="conv", eca_kernel=5))
    assert {block.kernel for block in report.blocks} == {5}
    with pytest.raises(OptionError, match="odd"):
        InsertOptions(block="eca", eca_kernel=4)


@pytest.mark.parametrize("opset", [11, 21])
def test_eca_with_a_bias_is_found_stripped_and_its_bias_exported(opset):
    """Paddle's ECA and a Conv1d(bias=True) have a bias; `insert --weights` with conv.bias builds one."""
    base = build_samples.resnet_like(opset=opset)
    feeds = feeds_for(base)
    random, _ = insert_se(ir.from_proto(base), InsertOptions(block="eca", where="conv", init="random", seed=3))
    weights = export_weights(random)
    assert not any(key.endswith(".conv.bias") for key in weights)  # timm's ECA: no bias
    biased = {**weights, **{key.replace(".weight", ".bias"): np.array([0.75], np.float32) for key in weights}}
    model, report = insert_se(ir.from_proto(base), InsertOptions(block="eca", where="conv", weights=biased))
    outputs = _outputs(_checked(model), feeds)
    assert np.abs(outputs - _outputs(_checked(random), feeds)).max() > 1e-3  # the bias counts

    found = find_attention(model)
    assert [block.kind for block in found] == ["eca"] * len(report.blocks)
    assert all(len(node.inputs) == 3 for block in found for node in block.nodes if node.op_type == "Conv")
    exported = export_weights(model)
    assert exported.keys() == biased.keys()
    for key, array in biased.items():
        np.testing.assert_array_equal(exported[key], array)
    stripped, _ = strip_se(model, "eca")
    np.testing.assert_allclose(_outputs(_checked(stripped), feeds), _outputs(base, feeds), rtol=1e-5, atol=1e-5)


def test_coord_hidden_width_is_at_least_8_and_cbam_uses_the_ratio():
    model = ir.from_proto(build_samples.resnet_like(opset=17))
    _, coord = insert_se(model, InsertOptions(block="coord", where="conv", ratio=1 / 32))
    assert {block.squeeze_channels for block in coord.blocks} == {8}
    _, cbam = insert_se(model, InsertOptions(block="cbam", where="conv", ratio=0.5, cbam_spatial_kernel=3))
    assert all(b.squeeze_channels == b.channels // 2 and b.kernel == 3 for b in cbam.blocks)


# --- The forms torch.onnx (TorchScript) writes from PyTorch modules ------------------------------


def _torch_modules():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class EcaNet(nn.Module):  # ECA-Net's layer: squeeze/transpose around a Conv1d, expand_as
        bias = False

        def __init__(self, channels: int) -> None:
            super().__init__()
            k = eca_kernel(channels)
            self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=self.bias)

        def forward(self, x):
            y = nn.functional.adaptive_avg_pool2d(x, 1)
            y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
            return x * torch.sigmoid(y).expand_as(x)

    class EcaTimm(EcaNet):  # timm's EcaModule: mean, view, view, sigmoid
        def forward(self, x):
            y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
            return x * y.view(x.shape[0], -1, 1, 1).sigmoid().expand_as(x)

    class EcaBiased(EcaTimm):  # timm's forward over a Conv1d with a bias, as Paddle's ECA has
        bias = True

    class CbamTimm(nn.Module):  # timm's CbamModule: 1×1 conv MLP on mean and amax; [mean, max] spatially
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(channels, 4, 1), nn.Conv2d(4, channels, 1)
            self.spatial = nn.Conv2d(2, 1, 7, padding=3)

        def mlp(self, y):
            return self.fc2(torch.relu(self.fc1(y)))

        def forward(self, x):
            x = x * torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
            pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
            return x * torch.sigmoid(self.spatial(pooled))

    class CbamNorm(CbamTimm):  # timm's spatial ConvNormAct: the 7×7 conv without bias, then BatchNorm
        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))

    class CbamOriginal(CbamTimm):  # CBAM's code: Linear MLP on global pools, [max, mean] spatially
        def __init__(self, channels: int) -> None:
            super().__init__(channels)
            self.lin1, self.lin2 = nn.Linear(channels, 4), nn.Linear(4, channels)

        def forward(self, x):
            avg = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            peak = nn.functional.adaptive_max_pool2d(x, 1).flatten(1)
            att = self.lin2(torch.relu(self.lin1(avg))) + self.lin2(torch.relu(self.lin1(peak)))
            x = x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)
            pooled = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], 1)
            return x * torch.sigmoid(self.spatial(pooled))

    class CoordAttention(nn.Module):  # the CA paper's layer, with BatchNorm and hardswish
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(channels, 8, 1), nn.BatchNorm2d(8)
            self.conv_h, self.conv_w = nn.Conv2d(8, channels, 1), nn.Conv2d(8, channels, 1)

        def forward(self, x):
            n, c, h, w = x.size()
            x_h = nn.functional.adaptive_avg_pool2d(x, (None, 1))
            x_w = nn.functional.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
            y = nn.functional.hardswish(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
            x_h, x_w = torch.split(y, [h, w], dim=2)
            a_h = self.conv_h(x_h).sigmoid()
            a_w = self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid()
            return x * a_w * a_h

    class HardSigmoid(nn.Module):  # the CA code's h_sigmoid and h_swish
        def forward(self, x):
            return nn.functional.relu6(x + 3) / 6

    class CoordReference(CoordAttention):
        def forward(self, x):
            n, c, h, w = x.size()
            x_h = nn.functional.adaptive_avg_pool2d(x, (None, 1))
            x_w = nn.functional.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
            y = self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2)))
            y = y * HardSigmoid()(y)
            x_h, x_w = torch.split(y, [h, w], dim=2)
            return x * self.conv_w(x_w.permute(0, 1, 3, 2)).sigmoid() * self.conv_h(x_h).sigmoid()

    return torch, {
        "eca-net": EcaNet,
        "eca-timm": EcaTimm,
        "eca-bias": EcaBiased,
        "cbam-timm": CbamTimm,
        "cbam-original": CbamOriginal,
        "cbam-bn": CbamNorm,
        "coord-paper": CoordAttention,
        "coord-reference": CoordReference,
    }


@pytest.mark.parametrize(
    "form",
    ["eca-net", "eca-timm", "eca-bias", "cbam-timm", "cbam-original", "cbam-bn", "coord-paper", "coord-reference"],
)
def test_blocks_that_torch_onnx_exports_are_found_and_rebuilt_exactly(form):
    """A block exported from PyTorch is found, its weights read out, and `insert --weights` into
    the model exported without it computes what PyTorch computes. "cbam-bn" is exported without
    constant folding, so that its BatchNorm stays a node."""
    torch, modules = _torch_modules()
    torch.manual_seed(0)
    attention = modules[form](16)
    for parameter in attention.parameters():  # away from any identity, BatchNorm's statistics too
        torch.nn.init.uniform_(parameter, -0.5, 0.5)
    for norm in (module for module in attention.modules() if isinstance(module, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 1.5)

    class Net(torch.nn.Module):
        def __init__(self, block) -> None:
            super().__init__()
            self.conv, self.block = torch.nn.Conv2d(3, 16, 3, padding=1), block

        def forward(self, x):
            return self.block(torch.relu(self.conv(x)))

    def export(net) -> ir.Model:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net.eval(),
                torch.randn(1, 3, 8, 6),
                buffer,
                opset_version=17,
                dynamo=False,
                do_constant_folding=not form.endswith("-bn"),
            )
        return ir.from_proto(onnx.load_from_string(buffer.getvalue()))

    net, bare = Net(attention), Net(torch.nn.Identity())
    bare.conv = net.conv  # the same trunk, without the block
    with_block, without = export(net), export(bare)
    without.graph.node(0).name = with_block.graph.node(0).name  # the same conv, the same block key
    kind = form.split("-")[0]
    blocks = find_attention(with_block)
    assert [block.kind for block in blocks] == [kind]

    x = np.random.default_rng(0).standard_normal((1, 3, 8, 6)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    rebuilt, _ = insert_se(without, InsertOptions(block=kind, where="conv", weights=export_weights(with_block)))
    feeds = {rebuilt.graph.inputs[0].name: x}
    np.testing.assert_allclose(_outputs(_checked(rebuilt), feeds), expected, rtol=1e-4, atol=1e-5)
    stripped, _ = strip_se(with_block, kind)
    assert find_attention(stripped) == []


# --- The forms other exporters write (`tests.exporter_styles.attention_model`) -------------------


def _found_and_rebuilt_exactly(kind: str, **form):
    """The one block of the model `kind` and `form` build is found; `insert --weights` with what
    `export-weights` reads from it, into the same trunk without it, computes the same; strip leaves
    the trunk's outputs. Returns the block."""
    model = styles.attention_model(kind, **form)
    found = find_attention(ir.from_proto(model))
    assert [block.kind for block in found] == [kind]
    base = styles.attention_model(kind, block=False, **form)
    weights = export_weights(ir.from_proto(model))
    rebuilt, _ = insert_se(ir.from_proto(base), InsertOptions(block=kind, where="conv", weights=weights))
    feeds = feeds_for(model)
    expected = _outputs(model, feeds)
    assert np.abs(expected - _outputs(base, feeds)).max() > 1e-2  # the block does something
    np.testing.assert_allclose(_outputs(_checked(rebuilt), feeds), expected, rtol=1e-5, atol=1e-5)
    stripped, _ = strip_se(ir.from_proto(model), kind)
    assert find_attention(stripped) == []
    np.testing.assert_allclose(_outputs(_checked(stripped), feeds), _outputs(base, feeds), rtol=1e-6, atol=1e-6)
    return found[0]


@pytest.mark.parametrize("opset", [11, 14])
@pytest.mark.parametrize("activation", styles.HARD_SWISH_FORMS)
def test_coord_attention_with_each_form_of_hard_swish(activation, opset):
    block = _found_and_rebuilt_exactly("coord", opset=opset, activation=activation)
    assert block.details["activation"] == "HardSwish"


def test_a_hard_swish_with_the_wrong_constant_is_no_coord_attention():
    model = ir.from_proto(styles.attention_model("coord", opset=13, activation="h_swish"))
    model.graph.initializers["coord/act_div"].const_value = ir.tensor(np.array(5.0, np.float32))
    detection = detect_attention(model)
    assert detection.blocks == []
    # The first gate's Mul is the candidate (the second rescales a rescaled map, not a pooled one).
    assert [miss.node for miss in detection.near_misses] == ["coord/scale_w"]


def test_se_with_a_written_out_hard_swish_between_its_layers_is_found():
    """MobileNetV3's hand-written h_swish, as coordinate attention's code has it, in an SE block."""
    g = GraphBuilder(seed=1, opset=13)
    x = g.input("x", ["N", 8, 4, 4])
    h = g.op("Conv", [g.op("GlobalAveragePool", [x], "pool"), g.weight("fc1", 4, 8, 1, 1)], "fc1")
    h = styles.hard_swish(g, h, "timm", "act")
    h = g.op("Sigmoid", [g.op("Conv", [h, g.weight("fc2", 8, 4, 1, 1)], "fc2")], "gate")
    model = g.model("se", [x], [g.output(g.op("Mul", [x, h], "scale"), "y", ["N", 8, 4, 4])])
    (block,) = find_se(ir.from_proto(model))
    assert block.activation is not None and block.activation.op_type == "HardSwish"


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("kind", ["cbam", "coord"])
def test_a_batch_norm_left_unfolded_is_folded_into_the_exported_weights(kind, opset):
    """timm's CBAM spatial ConvNormAct and the CA paper's conv1 → bn1, as exported without constant folding."""
    block = _found_and_rebuilt_exactly(kind, opset=opset, bn=True)
    assert "BatchNormalization" in [node.op_type for node in block.nodes]


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("kind", KINDS)
def test_the_forms_the_dynamo_exporter_writes(kind, opset):
    """torch.onnx.export(dynamo=True)'s forms of timm's ECA and CBAM and the CA code, as checked
    against real exports: kept and dropped means, Reshapes with allowzero, Expand, shared axes."""
    _found_and_rebuilt_exactly(kind, opset=opset, dynamo=True)


@pytest.mark.parametrize("no_op", [None, "Identity"])
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("kind", KINDS)
def test_the_forms_paddle2onnx_writes(kind, opset, no_op):
    """Constant-node weights, bias Adds, an Identity after each Add and Mul (the newest
    Paddle2ONNX), BatchNorm unfolded, Paddle's conv1d as a Conv2d over a row with its bias."""
    block = _found_and_rebuilt_exactly(kind, opset=opset, paddle=True, no_op=no_op, bias=True, bn=True)
    assert all(node.op_type != "Identity" for node in block.nodes) or no_op == "Identity"


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_eca_in_the_nhwc_islands_tf2onnx_writes_is_found_stripped_and_exported(opset):
    """Keras' ECA through tf2onnx: the mean over axes 1, 2 of an N×H×W×C map, the Conv1D between
    Transposes, the gate Reshaped to N×1×1×C. (`insert` puts no block of these kinds in NHWC.)"""
    model = layouts.keras_eca_model(opset, blocks=2)
    found = find_attention(ir.from_proto(model))
    assert [(block.kind, block.details["layout"]) for block in found] == [("eca", "NHWC")] * 2
    weights = export_weights(ir.from_proto(model))
    written = {
        tuple(onnx.numpy_helper.to_array(tensor).reshape(-1))
        for tensor in model.graph.initializer
        if tensor.name.startswith("eca") and "conv_w" in tensor.name
    }
    assert {weights[key].shape for key in weights} == {(1, 1, 3)}
    assert {tuple(array.reshape(-1)) for array in weights.values()} == written
    stripped, _ = strip_se(ir.from_proto(model), "eca")
    feeds = feeds_for(model)
    without = layouts.keras_eca_model(opset, blocks=0)
    np.testing.assert_allclose(_outputs(_checked(stripped), feeds), _outputs(without, feeds), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_qdq_models_with_the_new_kinds_are_found_or_near_misses_never_miscounted(kind):
    """ONNX Runtime's QDQ format: ECA is found through the Q/DQ pairs. CBAM's two branches get
    biases quantized at each branch's own input scale (no longer one shared MLP) and its Relus
    folded into the pairs, and coordinate attention's Split and Transposes get pairs of their own:
    those are near-misses with a reason, never blocks of another kind."""
    model, report = insert_se(
        ir.from_proto(build_samples.resnet_like(opset=13)), InsertOptions(block=kind, init="random", seed=1)
    )
    quantized = ir.from_proto(quantize_qdq(ir.to_proto(model)))
    detection = detect_attention(quantized)
    assert {block.kind for block in detection.blocks} <= {kind}
    missed = len(report.blocks) - len(detection.blocks)
    assert missed == 0 if kind == "eca" else missed > 0
    assert len(detection.near_misses) >= missed
    assert all(miss.reason.startswith("closest to ") for miss in detection.near_misses)
    if kind == "eca":
        stripped, strip_report = strip_se(quantized, kind)
        assert len(strip_report.blocks) == len(report.blocks) and find_attention(stripped) == []
        _checked(stripped)


# --- Look-alikes -----------------------------------------------------------------------------------


def _look_alike(kind: str) -> onnx.ModelProto:
    g = GraphBuilder(seed=4, opset=18)
    c = 8
    x = g.input("x", ["N", c, 6, 6])
    h = g.op("Relu", [g.op("Conv", [x, g.weight("w", c, c, 3, 3)], "conv", pads=[1] * 4)], "relu")
    if kind == "ungated":  # GAP → 1×1 conv, no gate
        scale = g.op("Conv", [g.op("GlobalAveragePool", [h], "gap"), g.weight("fc", c, c, 1, 1)], "fc")
    elif kind == "global_context":  # GCNet's attention pooling, then an SE-like transform, fused by scale
        logits = g.op(
            "Reshape",
            [g.op("Conv", [h, g.weight("mask", 1, c, 1, 1)], "mask"), g.const("s1", np.array([0, 1, 36]), exact=True)],
            "r1",
        )
        attention = g.op("Softmax", [logits], "softmax", axis=2)
        flat = g.op("Reshape", [h, g.const("s2", np.array([0, c, 36]), exact=True)], "r2")
        context = g.op("MatMul", [flat, g.op("Transpose", [attention], "t", perm=[0, 2, 1])], "context")
        context = g.unsqueeze(context, [3], "context4")
        hidden = g.op("Relu", [g.op("Conv", [context, g.weight("f1", 2, c, 1, 1)], "f1")], "act")
        scale = g.op("Sigmoid", [g.op("Conv", [hidden, g.weight("f2", c, 2, 1, 1)], "f2")], "gate")
    else:  # CBAM's spatial attention alone, no channel gate before it
        pooled = g.op(
            "Concat",
            [
                g.mean(h, [1], "mean"),
                g.op("ReduceMax", [h, g.const("ax", np.array([1]), exact=True)], "max", keepdims=1),
            ],
            "cat",
            axis=1,
        )
        scale = g.op("Sigmoid", [g.op("Conv", [pooled, g.weight("sp", 1, 2, 7, 7)], "sp", pads=[3] * 4)], "gate")
    y = g.op("Mul", [h, scale], "rescale")
    return g.model(kind, [x], [g.output(y, "y", ["N", c, 6, 6])])


@pytest.mark.parametrize("kind", ["ungated", "global_context", "spatial_only"])
def test_look_alikes_are_near_misses_never_blocks(kind):
    detection = detect_attention(ir.from_proto(_look_alike(kind)))
    assert detection.blocks == []
    assert [miss.node for miss in detection.near_misses] == ["rescale_0"]
    assert detection.near_misses[0].reason.startswith("closest to ")


# --- Training and the command line ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_train_attention_moves_every_kind(kind):
    pytest.importorskip("torch")
    from se_onnx.runtime.datasets import Dataset
    from se_onnx.training.loop import TrainOptions, train_model, trainable_initializers

    model, _ = insert_se(ir.from_proto(build_samples.tiny_conv(opset=17)), InsertOptions(block=kind, where="conv"))
    names, blocks = trainable_initializers(model, "attention")
    assert {block.kind for block in blocks} == {kind}
    rng = np.random.default_rng(0)
    shape = [d.value if isinstance(d, ir.SymbolicDim) else d for d in model.graph.inputs[0].shape][1:]
    x = rng.standard_normal((32, *shape)).astype(np.float32)
    data = Dataset(x, (x[:, 0].mean((1, 2)) > 0).astype(np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained, report = train_model(
            model, data, None, TrainOptions(epochs=1, lr=0.05, batch_size=16, progress=False, train="attention")
        )
    before = {name: ir.to_proto(model).graph for name in names}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in ir.to_proto(trained).graph.initializer}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in next(iter(before.values())).initializer}
    moved = [name for name in names if not np.array_equal(after[name], original[name])]
    assert report.trained_parameters > 0 and moved
    # The last layer before each gate starts at zero and is what the identity init lets move.
    zero_at_start = [name for name in names if not original[name].any()]
    assert zero_at_start and set(zero_at_start) <= set(moved)


def test_cli_insert_inspect_strip_and_export(tmp_path, capsys):
    source = tmp_path / "base.onnx"
    onnx.save(build_samples.resnet_like(opset=17), source)
    cbam = tmp_path / "cbam.onnx"
    assert main(["insert", str(source), "-o", str(cbam), "--block", "cbam", "--where", "conv", "--json"]) == 0
    inserted = json.loads(capsys.readouterr().out)
    assert {block["kind"] for block in inserted["blocks"]} == {"cbam"}
    assert main(["inspect", str(cbam), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["se_blocks"] == [] and {b["kind"] for b in summary["attention_blocks"]} == {"cbam"}
    assert main(["export-weights", str(cbam), "-o", str(tmp_path / "w.npz")]) == 0
    assert "spatial.weight" in capsys.readouterr().out
    stripped = tmp_path / "stripped.onnx"
    assert main(["strip", str(cbam), "-o", str(stripped), "--block", "all"]) == 0
    assert "attention blocks removed" in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS)
def test_train_attention_trains_the_bias_adds_of_paddles_form_and_no_other_constant(kind):
    """Paddle2ONNX writes each conv's bias as an Add of a Reshape(Constant): those are weights; the
    Adds of h_swish (+3) and of CBAM's two branches are not."""
    pytest.importorskip("torch")
    from se_onnx.training.loop import trainable_initializers

    model = ir.from_proto(styles.attention_model(kind, opset=13, paddle=True, bias=True, no_op="Identity"))
    names, _ = trainable_initializers(model, "attention")
    biases = {name for name in names if name.endswith("_b")}
    assert biases and {name.removesuffix("_b") + "_w" for name in biases} <= set(names)
    assert all(name.endswith(("_w", "_b")) for name in names)
