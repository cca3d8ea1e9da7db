"""The passes as onnx-ir passes: their results carry reports, they chain in a PassManager with
onnx-ir's own passes, and the functions wrap them without changing their input."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import (
    CheckerPass,
    RemoveUnusedNodesPass,
    ShapeInferencePass,
    TopologicalSortPass,
)

import se_onnx
from se_onnx import (
    FindSE,
    FuseSE,
    InsertOptions,
    InsertSE,
    SeOnnxError,
    StripSE,
    UnfuseSE,
)
from se_onnx.passes.find import FindResult
from se_onnx.passes.fuse import FuseResult
from se_onnx.passes.insert import InsertResult
from se_onnx.passes.strip import StripResult
from se_onnx.passes.unfuse import UnfuseResult
from tests import exporter_styles as styles
from tests.se_variants import ort_outputs

PASS_MODULES = ("find", "insert", "fuse", "unfuse", "strip")


def test_a_chain_of_our_passes_and_onnx_irs_round_trips_the_model():
    proto = styles.paddle_model(se=False)
    insert, find, fuse, unfuse, strip = InsertSE(InsertOptions(where="conv")), FindSE(), FuseSE("function"), UnfuseSE(), StripSE()
    manager = ir.passes.PassManager(
        [
            ShapeInferencePass(),
            insert,
            find,
            fuse,
            CheckerPass(full_check=True),
            unfuse,
            strip,
            RemoveUnusedNodesPass(),
            TopologicalSortPass(),
            CheckerPass(full_check=True),
        ]
    )
    model = ir.from_proto(proto)
    result = manager(model)

    assert result.modified and result.model is model  # every pass is in place
    assert [block.name for block in insert.report.blocks] == ["conv0", "conv1", "head"]
    assert len(find.report.blocks) == 3
    assert (fuse.report.written, len(fuse.report.blocks)) == ("function", 3)
    assert unfuse.report.blocks_inlined == 3
    assert len(strip.report.blocks) == 3
    assert se_onnx.find_se(result.model) == []
    feeds = styles.feeds(proto)
    np.testing.assert_allclose(ort_outputs(ir.to_proto(result.model), feeds)[0], ort_outputs(proto, feeds)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "result_type"),
    [
        (lambda: InsertSE(InsertOptions(where="conv")), InsertResult),
        (FindSE, FindResult),
        (lambda: FuseSE("canonical"), FuseResult),
        (StripSE, StripResult),
    ],
)
def test_a_pass_returns_its_own_result_with_the_report(make, result_type):
    model = ir.from_proto(styles.paddle_model())
    pass_ = make()
    result = pass_(model)
    assert type(result) is result_type and result.model is model
    assert result.report is pass_.report is not None
    assert result.modified is not isinstance(pass_, FindSE)


def test_unfuse_returns_its_result():
    fused, _ = se_onnx.fuse_se(ir.from_proto(styles.paddle_model()), "function")
    result = UnfuseSE()(fused)
    assert type(result) is UnfuseResult and result.report.blocks_inlined == 2


def test_the_analysis_pass_changes_nothing():
    model = ir.from_proto(styles.paddle_model())
    before = ir.to_proto(model).SerializeToString()
    result = FindSE()(model)
    assert not result.modified and len(result.report.blocks) == 2
    assert ir.to_proto(model).SerializeToString() == before


def test_the_functions_leave_their_input_as_it_was():
    model = ir.from_proto(styles.paddle_model())
    before = ir.to_proto(model).SerializeToString()
    for rewrite in (se_onnx.strip_se, lambda m: se_onnx.fuse_se(m, "function"), lambda m: se_onnx.insert_se(m, InsertOptions(where="conv", nodes=("head",)))):
        rewritten, _ = rewrite(model)
        assert rewritten is not model
    assert ir.to_proto(model).SerializeToString() == before


def test_a_refusing_pass_raises_its_error_and_changes_nothing():
    model = ir.from_proto(styles.paddle_model(se=False))
    before = ir.to_proto(model).SerializeToString()
    with pytest.raises(SeOnnxError, match="no SE block"):
        StripSE()(model)
    with pytest.raises(SeOnnxError, match="no residual block"):
        InsertSE(InsertOptions(where="residual"))(model)
    assert ir.to_proto(model).SerializeToString() == before
    with pytest.raises(SeOnnxError, match="--form"):
        FuseSE("fused")


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
