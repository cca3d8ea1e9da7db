"""Tests of fuse (canonical, function, fastest) and unfuse: same outputs, opsets, dtypes, names, CLI."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from se_onnx import SeOnnxError, find_se, fuse_se, load_model, save_model, unfuse_se
from se_onnx.passes.fuse import FUNCTION_NAME, SE_DOMAIN
from se_onnx.runtime import fastest as fastest_module
from se_onnx.runtime.fastest import FormTiming, fuse_fastest
from tests.se_variants import (
    POSITIVES,
    Variant,
    feeds_for,
    negative_model,
    ort_outputs,
    se_model,
)

REPO = Path(__file__).resolve().parents[1]


def _saved(model: ir.Model, path: Path) -> onnx.ModelProto:
    save_model(model, path)  # the full checker runs here
    return onnx.load(path)


def _assert_same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto | Path, dtype: str) -> None:
    feeds = feeds_for(original)
    expected = ort_outputs(original, feeds)
    actual = ort_outputs(str(rewritten) if isinstance(rewritten, Path) else rewritten, feeds)
    rtol, atol = (1e-5, 1e-6) if dtype == "float32" else (1e-2, 1e-2)
    for a, b in zip(expected, actual):
        np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=rtol, atol=atol)


def _signature(proto: onnx.ModelProto) -> tuple:
    return [(v.name, v.type.SerializeToString()) for v in proto.graph.input], [
        (v.name, v.type.SerializeToString()) for v in proto.graph.output
    ]


def _ops(proto: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in proto.graph.node)


def _check_common(original: onnx.ModelProto, fused: onnx.ModelProto, variant: Variant) -> None:
    assert _signature(fused) == _signature(original)
    assert {o.domain: o.version for o in fused.opset_import}[""] == variant.opset
    names = [n.name for n in fused.graph.node]
    outputs = [o for n in fused.graph.node for o in n.output]
    assert len(set(names)) == len(names) and len(set(outputs)) == len(outputs)
    weights = [t for t in fused.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    expected_type = onnx.TensorProto.FLOAT16 if variant.dtype == "float16" else onnx.TensorProto.FLOAT
    assert {t.data_type for t in weights} == {expected_type}


@pytest.mark.parametrize("variant", POSITIVES, ids=lambda v: v.id)
def test_canonical_form_keeps_outputs(variant: Variant, tmp_path):
    original = se_model(variant)
    model, report = fuse_se(ir.from_proto(original), "canonical")
    fused = _saved(model, tmp_path / "fused.onnx")

    _assert_same_outputs(original, fused, variant.dtype)
    _check_common(original, fused, variant)
    assert report.written == "canonical" and len(report.blocks) == variant.blocks
    ops = _ops(fused)
    layers = 1 if variant.activation == "none" else 2
    assert ops["Gemm"] == layers * variant.blocks and ops["MatMul"] == 0
    assert ops["ReduceMean"] == ops["Unsqueeze"] == variant.blocks
    assert ops["Add"] == 0 and ops["Reshape"] == ops["Flatten"] == ops["GlobalAveragePool"] == 0
    reduce_mean = next(n for n in fused.graph.node if n.op_type == "ReduceMean")
    assert (len(reduce_mean.input) == 2) == (variant.opset >= 18)
    refound = find_se(ir.from_proto(fused))
    assert [b.gate for b in refound] == [b.gate for b in find_se(ir.from_proto(original))]


@pytest.mark.parametrize("variant", POSITIVES, ids=lambda v: v.id)
def test_function_form_is_one_node_per_block_and_unfuses_back(variant: Variant, tmp_path):
    original = se_model(variant)
    model, report = fuse_se(ir.from_proto(original), "function")
    fused = _saved(model, tmp_path / "fused.onnx")

    _assert_same_outputs(original, fused, variant.dtype)
    _check_common(original, fused, variant)
    calls = [n for n in fused.graph.node if n.domain == SE_DOMAIN]
    assert len(calls) == variant.blocks and {n.op_type for n in calls} == {FUNCTION_NAME}
    assert {(f.domain, f.name, f.overload) for f in fused.functions} == {
        (SE_DOMAIN, FUNCTION_NAME, c.overload) for c in calls
    }
    assert {o.domain: o.version for o in fused.opset_import}[SE_DOMAIN] == 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in calls[0].attribute}
    assert attributes["channels"] == variant.channels
    if variant.gate.startswith(("hardsigmoid", "clip")):
        assert attributes["gate"] == b"HardSigmoid" and "gate_alpha" in attributes
    assert find_se(ir.from_proto(fused)) == []

    unfused_model, unfuse_report = unfuse_se(ir.from_proto(fused))
    unfused = _saved(unfused_model, tmp_path / "unfused.onnx")
    assert unfuse_report.blocks_inlined == variant.blocks
    assert not unfused.functions and SE_DOMAIN not in {o.domain for o in unfused.opset_import}
    _assert_same_outputs(original, unfused, variant.dtype)
    _check_common(original, unfused, variant)
    assert len(find_se(ir.from_proto(unfused))) == variant.blocks


def test_a_function_call_sets_hard_sigmoid_alpha_per_block(tmp_path):
    """Two blocks share one body but not their alphas: the body must read the call's attribute."""
    proto = se_model(Variant(blocks=2, gate="hardsigmoid_torch"))
    second_gate = next(n for n in proto.graph.node if n.name.startswith("se1/gate"))
    second_gate.attribute[0].f = 0.3  # alpha
    model, _ = fuse_se(ir.from_proto(proto), "function")
    fused = _saved(model, tmp_path / "fused.onnx")
    assert len(fused.functions) == 1
    _assert_same_outputs(proto, fused, "float32")


SMALL = [
    Variant(),
    Variant(layer="gemm", squeeze="reducemean", gate="hardsigmoid_torch", blocks=2),
    Variant(dtype="float16"),
]


@pytest.mark.parametrize("variant", SMALL, ids=lambda v: v.id)
def test_fastest_form_keeps_outputs_and_reports_timings(variant: Variant, tmp_path):
    original = se_model(variant)
    model, report = fuse_fastest(ir.from_proto(original), runs=3, warmup=0)
    fused = _saved(model, tmp_path / "fused.onnx")

    _assert_same_outputs(original, fused, variant.dtype)
    _check_common(original, fused, variant)
    assert [t.form for t in report.timings] == list(fastest_module.CANDIDATES)
    assert report.timings[0].ratio == 1.0 and all(t.median_ms > 0 for t in report.timings)
    assert report.written in fastest_module.CANDIDATES and report.provider == "cpu"
    assert json.loads(json.dumps(report.to_dict()))["timings"][0]["form"] == "original"


@pytest.mark.parametrize(
    ("ratios", "written"),
    [
        ({"canonical": 0.99, "conv": 1.2}, "original"),  # within noise: keep the original
        ({"canonical": 1.1, "conv": 1.05}, "original"),
        ({"canonical": 0.9, "conv": 0.95}, "canonical"),
        ({"canonical": 0.97, "conv": 0.8}, "conv"),
    ],
)
def test_fastest_keeps_the_original_unless_a_form_clearly_wins(monkeypatch, ratios, written):
    def measured(models, **_):
        assert set(models) == set(fastest_module.CANDIDATES)
        return [FormTiming("original", 1.0, 1.0)] + [FormTiming(form, ratio, ratio) for form, ratio in ratios.items()]

    monkeypatch.setattr(fastest_module, "measure_forms", measured)
    original = ir.from_proto(se_model(Variant()))
    model, report = fuse_fastest(original)
    assert report.written == written
    ops = _ops(ir.to_proto(model))
    if written == "original":
        assert ops == _ops(ir.to_proto(original))
    else:
        assert ops["Gemm" if written == "canonical" else "GlobalAveragePool"] >= 1


def test_conv_layout_candidate_keeps_outputs(tmp_path):
    """The conv candidate from a Gemm/MatMul model with a PRelu and a one-layer block."""
    for variant in (
        Variant(layer="matmul", squeeze="reducemean", activation="prelu"),
        Variant(layer="gemm", squeeze="reducemean", activation="none", spatial=(10,)),
    ):
        original = se_model(variant)
        model = fuse_se(ir.from_proto(original), "conv")[0]
        fused = _saved(model, tmp_path / "conv.onnx")
        _assert_same_outputs(original, fused, variant.dtype)
        assert _ops(fused)["Gemm"] == _ops(fused)["MatMul"] == 0


def test_fuse_does_not_modify_its_input():
    model = ir.from_proto(se_model(Variant(bias="add")))
    before = ir.to_proto(model).SerializeToString()
    fuse_se(model, "canonical")
    fuse_se(model, "function")
    assert ir.to_proto(model).SerializeToString() == before


def test_fuse_says_why_a_model_without_se_blocks_is_left_and_refuses_an_unknown_form():
    _, report = fuse_se(ir.from_proto(negative_model("classifier_head")), "canonical")
    assert re.search("no SE block", report.nothing_to_do)
    _, report = fuse_se(ir.from_proto(se_model(Variant(first_kernel=3))), "function")
    assert re.search("1 near-misses.*not 1×1", report.nothing_to_do)
    with pytest.raises(SeOnnxError, match="form must be"):
        fuse_se(ir.from_proto(se_model()), "smallest")
    _, report = unfuse_se(ir.from_proto(se_model()))
    assert re.search("SqueezeExcitation", report.nothing_to_do)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "se_onnx", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_fuse_and_unfuse(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(se_model(Variant(blocks=2, gate="clip_div")), source)
    fused, unfused = tmp_path / "fused.onnx", tmp_path / "unfused.onnx"

    result = _cli("fuse", str(source), "-o", str(fused), "--form", "function", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written"] == "function" and len(report["blocks"]) == 2
    result = _cli("unfuse", str(fused), "-o", str(unfused))
    assert result.returncode == 0, result.stderr
    assert "2 SqueezeExcitation" in result.stdout
    _assert_same_outputs(onnx.load(source), unfused, "float32")

    result = _cli("fuse", str(source), "-o", str(fused), "--form", "fastest", "--runs", "2", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    assert "original" in result.stdout and "written" in result.stdout


@pytest.mark.parametrize("command", ["fuse", "unfuse"])
def test_cli_without_se_blocks_is_a_one_line_error_and_writes_nothing(command, tmp_path):
    source, output = tmp_path / "head.onnx", tmp_path / "out.onnx"
    onnx.save(negative_model("classifier_head"), source)
    result = _cli(command, str(source), "-o", str(output))
    assert result.returncode == 2
    assert result.stderr.startswith("se-onnx: error: ") and result.stderr.count("\n") == 1
    assert not output.exists()


def test_cli_refuses_to_overwrite_its_input(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(se_model(), source)
    before = source.read_bytes()
    result = _cli("fuse", str(source), "-o", str(source))
    assert result.returncode == 2 and "--in-place" in result.stderr
    assert source.read_bytes() == before
    assert load_model(source) is not None


@pytest.mark.parametrize(("opset", "dtype"), [(11, "float32"), (13, "float16"), (18, "float32")])
def test_sample_mobilenet_through_every_form(opset, dtype, tmp_path):
    from models import build_samples

    original = build_samples.mobilenet_se_like(opset=opset, dtype=dtype)
    variant = Variant(opset=opset, dtype=dtype)
    for form in ("canonical", "function"):
        model, report = fuse_se(ir.from_proto(original), form)
        fused = _saved(model, tmp_path / f"{form}.onnx")
        assert len(report.blocks) == 2
        _assert_same_outputs(original, fused, dtype)
        _check_common(original, fused, variant)
    unfused, _ = unfuse_se(ir.from_proto(fused))
    _assert_same_outputs(original, _saved(unfused, tmp_path / "unfused.onnx"), dtype)


def test_canonical_form_is_what_insert_writes():
    from models import build_samples
    from se_onnx import InsertOptions, insert_se

    inserted, _ = insert_se(ir.from_proto(build_samples.vgg_like(opset=18)), InsertOptions(where="conv", init="random"))
    fused, report = fuse_se(inserted, "canonical")
    assert len(report.blocks) == len(find_se(inserted)) > 0
    assert [n.op_type for n in fused.graph] == [n.op_type for n in inserted.graph]


def test_fastest_on_a_model_with_external_data_keeps_it_external(tmp_path):
    from models import build_samples

    original = build_samples.mobilenet_se_like(opset=17)
    build_samples.save_with_external_data(original, tmp_path / "model.onnx")
    model, report = fuse_fastest(load_model(tmp_path / "model.onnx"), runs=2, warmup=0)
    save_model(model, tmp_path / "fused.onnx")
    assert (tmp_path / "fused.onnx.data").is_file() and len(report.timings) == 3
    _assert_same_outputs(original, tmp_path / "fused.onnx", "float32")
