"""The passes as onnx-ir passes: their results carry reports, a pass with nothing to do says so
with `modified=False` instead of raising, so onnx-ir's PassManager runs each to convergence,
`requires()` refuses what a pass cannot take, and the functions wrap them without changing their input."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import (
    CheckerPass,
    RemoveUnusedNodesPass,
    ShapeInferencePass,
    TopologicalSortPass,
)

import se_onnx
from models import build_samples
from models.builders import quantize_qdq
from se_onnx import (
    FindSE,
    FuseSE,
    InsertOptions,
    InsertSE,
    SeOnnxError,
    StripSE,
    UnfuseSE,
)
from se_onnx.cli import main
from se_onnx.errors import OptionError
from se_onnx.passes.base import Refused, SEResult
from se_onnx.passes.find import Detection
from se_onnx.passes.fuse import FuseReport
from se_onnx.passes.insert import InsertReport
from se_onnx.passes.strip import StripReport
from se_onnx.passes.unfuse import UnfuseReport
from se_onnx.runtime import fastest as fastest_module
from tests import exporter_styles as styles
from tests.exporter_layouts import tf_resnet
from tests.se_variants import POSITIVES, Variant, negative_model, ort_outputs, se_model

PASS_MODULES = ("base", "find", "find_attention", "insert", "fuse", "unfuse", "strip")
MODELS_DIR = pathlib.Path(build_samples.__file__).parent


def _bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def test_a_chain_of_our_passes_and_onnx_irs_round_trips_the_model():
    proto = styles.paddle_model(se=False)
    passes = [
        ShapeInferencePass(),
        InsertSE(InsertOptions(where="conv")),
        FindSE(),
        FuseSE("function"),
        CheckerPass(full_check=True),
        UnfuseSE(),
        StripSE(),
        RemoveUnusedNodesPass(),
        TopologicalSortPass(),
        CheckerPass(full_check=True),
    ]
    model = ir.from_proto(proto)
    result = ir.passes.PassManager(passes)(model)

    assert result.modified and result.model is model  # every pass is in place
    assert se_onnx.find_se(result.model) == []
    feeds = styles.feeds(proto)
    np.testing.assert_allclose(
        ort_outputs(ir.to_proto(result.model), feeds)[0], ort_outputs(proto, feeds)[0], rtol=1e-5, atol=1e-6
    )

    # PassManager returns a plain PassResult; each pass's own result carries its report.
    model = ir.from_proto(proto)
    results = [pass_(model) for pass_ in passes]
    inserted, found, fused, unfused, stripped = [result.report for result in results if isinstance(result, SEResult)]
    assert [block.name for block in inserted.blocks] == ["conv0", "conv1", "head"]
    assert len(found.blocks) == 3
    assert (fused.written, len(fused.blocks)) == ("function", 3)
    assert unfused.blocks_inlined == 3
    assert len(stripped.blocks) == 3


@pytest.mark.parametrize(
    ("make", "report_type"),
    [
        (lambda: InsertSE(InsertOptions(where="conv")), InsertReport),
        (FindSE, Detection),
        (lambda: FuseSE("canonical"), FuseReport),
        (StripSE, StripReport),
    ],
)
def test_a_pass_returns_its_result_with_the_report_and_keeps_no_state(make, report_type):
    model = ir.from_proto(styles.paddle_model())
    pass_ = make()
    state = dict(vars(pass_))
    result = pass_(model)
    assert isinstance(result, SEResult) and isinstance(result.report, report_type) and result.model is model
    assert result.modified is not isinstance(pass_, FindSE)
    assert vars(pass_) == state  # the report is the result's, never the pass's

    # The same pass object on another model: a report of its own, the first one untouched.
    again = pass_(ir.from_proto(styles.paddle_model()))
    assert again.report is not result.report and again.report.to_dict() == result.report.to_dict()


def test_unfuse_returns_its_result():
    fused, _ = se_onnx.fuse_se(ir.from_proto(styles.paddle_model()), "function")
    result = UnfuseSE()(fused)
    assert isinstance(result.report, UnfuseReport) and result.modified and result.report.blocks_inlined == 2


def test_the_analysis_pass_changes_nothing():
    model = ir.from_proto(styles.paddle_model())
    before = _bytes(model)
    result = FindSE()(model)
    assert not result.modified and len(result.report.blocks) == 2
    assert _bytes(model) == before


def test_the_functions_leave_their_input_as_it_was():
    model = ir.from_proto(styles.paddle_model())
    before = _bytes(model)
    for rewrite in (
        se_onnx.strip_se,
        lambda m: se_onnx.fuse_se(m, "function"),
        lambda m: se_onnx.insert_se(m, InsertOptions(where="conv", nodes=("head",))),
        se_onnx.unfuse_se,  # nothing to do: still a copy
    ):
        rewritten, _ = rewrite(model)
        assert rewritten is not model
    assert _bytes(model) == before


@pytest.mark.parametrize(
    ("make", "proto", "reason"),
    [
        (StripSE, negative_model("silu_feature_map"), "the model has no SE block to strip"),
        (lambda: FuseSE("conv"), negative_model("classifier_head"), "the model has no SE block"),
        (UnfuseSE, se_model(), "no se_onnx.SqueezeExcitation node"),
        (lambda: InsertSE(InsertOptions(where="residual")), styles.paddle_model(se=False), "no residual block"),
        (lambda: InsertSE(InsertOptions(nodes=("no-such-conv",))), styles.paddle_model(se=False), "not selected by"),
    ],
    ids=["strip", "fuse", "unfuse", "insert-residual", "insert-nodes"],
)
def test_a_pass_with_nothing_to_do_says_so_and_changes_nothing(make, proto, reason):
    model = ir.from_proto(proto)
    before = _bytes(model)
    result = make()(model)
    assert result.modified is False and reason in result.report.nothing_to_do
    assert _bytes(model) == before
    assert ir.passes.PassManager([make()], steps=2)(model).modified is False


def _opset_10(proto: onnx.ModelProto) -> onnx.ModelProto:
    proto.opset_import[0].version = 10
    return proto


def _no_conv() -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def _conv_integer() -> onnx.ModelProto:
    proto = build_samples.tiny_conv(opset=13)
    for node in proto.graph.node:
        if node.op_type == "Conv":
            node.op_type = "ConvInteger"
    return proto


@pytest.mark.parametrize(
    ("make", "proto", "message"),
    [
        (InsertSE, _opset_10(build_samples.vgg_like(opset=13)), "opset 10 is older than 11"),
        (FuseSE, _opset_10(se_model()), "opset 10 is older than 11"),
        (InsertSE, _conv_integer(), "insert SE blocks into the float model, then quantize it"),
        (InsertSE, _no_conv(), "no Conv node"),
    ],
    ids=["insert-opset", "fuse-opset", "insert-quantized", "insert-no-conv"],
)
def test_requires_refuses_with_a_precondition_error_that_is_a_one_line_error(make, proto, message):
    model = ir.from_proto(proto)
    before = _bytes(model)
    with pytest.raises(Refused, match=message) as refused:
        make()(model)
    # onnx-ir's precondition error, and the CLI's one error type, with the message as it was.
    assert isinstance(refused.value, ir.passes.PreconditionError) and isinstance(refused.value, SeOnnxError)
    assert _bytes(model) == before

    # A PassManager wraps it in its PassError, as it does every pass's error.
    with pytest.raises(ir.passes.PassError) as wrapped:
        ir.passes.PassManager([make()], steps=2)(model)
    causes = []
    error: BaseException | None = wrapped.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(cause, Refused) and message in str(cause) for cause in causes)


def test_options_are_checked_when_made_and_named_as_the_library_spells_them():
    with pytest.raises(OptionError, match="^form must be one of canonical, conv, function, not 'fused'$") as error:
        FuseSE("fused")
    assert error.value.flag == "--form"
    with pytest.raises(OptionError, match="^where must be one of auto, residual, conv, not 'everywhere'$"):
        InsertOptions(where="everywhere")
    with pytest.raises(OptionError, match="^min_squeeze must be at least 1, not 0$") as error:
        InsertOptions(min_squeeze=0)
    assert error.value.flag == "--min-squeeze"


# --- Convergence: each pass twice on its own output, and under PassManager(steps=2) --------------


def _sample(name: str) -> onnx.ModelProto:
    return onnx.load(MODELS_DIR / name)


MODELS = {
    "mobilenet_se_tiny": lambda: _sample("mobilenet_se_tiny.onnx"),
    "resnet_tiny": lambda: _sample("resnet_tiny.onnx"),
    "paddle": styles.paddle_model,
    "back_to_back": lambda: se_model(Variant(blocks=3, bias="add")),
    "nhwc_resnet": tf_resnet,
    "if_bodies": styles.if_model,
    "yolo_c2f": styles.c2f_model,
    "cs3darknet": styles.csp_model,
    "paddle_identities": lambda: styles.paddle_model(no_op="Identity"),
}
PASSES = {
    "insert-auto": lambda: InsertSE(),
    "insert-conv": lambda: InsertSE(InsertOptions(where="conv")),
    "insert-residual": lambda: InsertSE(InsertOptions(where="residual")),
    "fuse-canonical": lambda: FuseSE("canonical"),
    "fuse-conv": lambda: FuseSE("conv"),
    "fuse-function": lambda: FuseSE("function"),
    "unfuse": UnfuseSE,
    "strip": StripSE,
}
# What keeps the model's outputs: identity-init blocks, every fuse form, and inlining them back.
KEEPS_OUTPUTS = set(PASSES) - {"strip"}


def _model_for(pass_name: str, proto: onnx.ModelProto) -> ir.Model:
    """The model the pass starts from: for unfuse, the model with its blocks as function nodes."""
    model = ir.from_proto(proto)
    if pass_name == "unfuse":
        FuseSE("function")(model)
    return model


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("model_name", MODELS)
def test_a_second_run_on_its_own_output_changes_nothing(model_name, pass_name):
    proto = MODELS[model_name]()
    make = PASSES[pass_name]
    model = _model_for(pass_name, proto)
    first = make()(model)
    once = _bytes(model)

    second = make()(model)
    assert second.modified is False, second.report
    assert _bytes(model) == once

    # onnx-ir's PassManager runs it to convergence: one step changes, the next finds nothing to do.
    converged = ir.passes.PassManager([make()], steps=2)(_model_for(pass_name, proto))
    assert converged.modified is first.modified
    assert _bytes(converged.model) == once

    if first.modified:
        onnx.checker.check_model(ir.to_proto(model), full_check=True)
        feeds = styles.feeds(proto)
        outputs = ort_outputs(ir.to_proto(model), feeds)
        if pass_name in KEEPS_OUTPUTS:
            for expected, actual in zip(ort_outputs(proto, feeds), outputs):
                np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    else:
        assert first.report.nothing_to_do


def test_insertion_into_a_qdq_model_converges_on_its_requantized_blocks():
    proto = quantize_qdq(build_samples.resnet_like(opset=13))
    for where in ("auto", "residual", "conv"):
        model = ir.from_proto(proto)
        first = InsertSE(InsertOptions(where=where))(model)
        second = InsertSE(InsertOptions(where=where))(model)
        assert first.modified and not second.modified, where
        assert {skipped.reason for skipped in second.report.skipped} >= {"already followed by an attention block"}


def test_auto_placement_stays_residual_once_every_branch_has_its_block():
    model = ir.from_proto(build_samples.resnet_like(opset=13))
    first = InsertSE()(model)
    second = InsertSE()(model)
    assert first.report.placement == second.report.placement == "residual"
    assert not second.modified and "try --where conv" not in second.report.nothing_to_do


@pytest.mark.parametrize("where", ["auto", "conv"])
def test_insertion_sees_the_blocks_the_function_form_hides(where):
    model = ir.from_proto(build_samples.resnet_like(opset=13))
    manager = ir.passes.PassManager([InsertSE(InsertOptions(where=where)), FuseSE("function")], steps=3)
    assert manager(model).modified
    before = _bytes(model)
    again = InsertSE(InsertOptions(where=where))(model)
    assert not again.modified and "already followed by an attention block" in again.report.nothing_to_do
    assert _bytes(model) == before


def test_fusing_into_the_form_a_block_has_leaves_it_as_it_is():
    options = InsertOptions(where="conv", init="random")
    inserted, _ = se_onnx.insert_se(ir.from_proto(build_samples.vgg_like(opset=18)), options)
    before = _bytes(inserted)
    result = FuseSE("canonical")(inserted)  # the insertion pass writes the canonical form
    assert not result.modified and result.report.nothing_to_do is None
    assert result.report.written == "canonical" and len(result.report.blocks) == len(se_onnx.find_se(inserted))
    assert _bytes(inserted) == before


@pytest.mark.parametrize("form", ["canonical", "conv"])
@pytest.mark.parametrize("variant", POSITIVES, ids=str)
def test_every_exported_form_fused_twice_converges(variant, form):
    model = ir.from_proto(se_model(variant))
    assert FuseSE(form)(model).modified or form == "conv" and variant.layer == "conv"
    assert not FuseSE(form)(model).modified


def test_fastest_with_nothing_to_do_says_so_without_timing(monkeypatch):
    def never(*_, **__):
        raise AssertionError("a model without SE blocks is not timed")

    monkeypatch.setattr(fastest_module, "measure_forms", never)
    model = ir.from_proto(negative_model("classifier_head"))
    result, report = fastest_module.fuse_fastest(model)
    assert result is not model and "no SE block" in report.nothing_to_do and report.written == "original"


def test_the_report_s_json_keeps_its_shape():
    _, report = se_onnx.strip_se(ir.from_proto(styles.paddle_model()))
    assert set(report.to_dict()) == {field.name for field in dataclasses.fields(report)} - {"nothing_to_do"}


# --- The CLI: nothing to do is its one-line error; an option error names the flag ---------------


def test_cli_insert_into_its_own_output_is_a_one_line_error(tmp_path, capsys):
    source, inserted, again = tmp_path / "m.onnx", tmp_path / "se.onnx", tmp_path / "again.onnx"
    onnx.save(build_samples.resnet_like(opset=13), source)
    assert main(["insert", str(source), "-o", str(inserted)]) == 0
    capsys.readouterr()
    assert main(["insert", str(inserted), "-o", str(again)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("se-onnx: error: no residual block") and "2 already followed by an attention block" in error
    assert error.count("\n") == 1 and not again.exists()


def test_cli_fuse_into_the_form_a_model_has_writes_it(tmp_path, capsys):
    source, fused, again = tmp_path / "m.onnx", tmp_path / "fused.onnx", tmp_path / "again.onnx"
    onnx.save(se_model(), source)
    assert main(["fuse", str(source), "-o", str(fused)]) == 0
    assert main(["fuse", str(fused), "-o", str(again)]) == 0  # already canonical: not an error
    assert "1 SE block, canonical form written" in capsys.readouterr().out


def test_cli_option_errors_name_the_flag(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(build_samples.vgg_like(opset=13), source)
    assert main(["insert", str(source), "-o", str(tmp_path / "o.onnx"), "--min-squeeze", "0"]) == 2
    assert capsys.readouterr().err == "se-onnx: error: --min-squeeze must be at least 1, not 0\n"


@pytest.mark.parametrize("module", PASS_MODULES)
def test_no_pass_imports_another_module_s_private_helpers(module):
    path = pathlib.Path(se_onnx.__file__).parent / "passes" / f"{module}.py"
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("se_onnx")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []
