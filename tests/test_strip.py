"""Tests of strip: the model without its SE blocks computes what the same model never given them does."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from se_onnx import find_se, save_model, strip_se
from tests.se_variants import (
    POSITIVES,
    Variant,
    feeds_for,
    negative_model,
    ort_outputs,
    se_model,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variant", POSITIVES, ids=lambda v: v.id)
def test_strip_equals_the_model_built_without_se(variant: Variant, tmp_path):
    original = se_model(variant)
    model, report = strip_se(ir.from_proto(original))
    save_model(model, tmp_path / "stripped.onnx")  # the full checker runs here
    stripped = onnx.load(tmp_path / "stripped.onnx")
    without_se = se_model(dataclasses.replace(variant, blocks=0))

    assert len(report.blocks) == variant.blocks and find_se(model) == []
    assert [n.op_type for n in stripped.graph.node if n.op_type != "Identity"] == [
        n.op_type for n in without_se.graph.node
    ]
    assert {t.name for t in stripped.graph.initializer} == {
        t.name for t in original.graph.initializer if not t.name.startswith("se")
    }
    assert report.nodes_removed == len(original.graph.node) - len(stripped.graph.node)
    assert [v.name for v in stripped.graph.output] == ["y"] and [v.name for v in stripped.graph.input] == ["x"]
    feeds = feeds_for(original)
    for a, b in zip(ort_outputs(without_se, feeds), ort_outputs(stripped, feeds)):
        np.testing.assert_array_equal(a, b)


def test_strip_leaves_a_model_without_se_blocks_and_says_why():
    model, report = strip_se(ir.from_proto(negative_model("silu_feature_map")))
    assert report.blocks == [] and "no SE block" in report.nothing_to_do
    unchanged = ir.to_proto(ir.from_proto(negative_model("silu_feature_map")))
    assert ir.to_proto(model).SerializeToString() == unchanged.SerializeToString()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "se_onnx", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_strip_prints_what_it_removed(tmp_path):
    source, output = tmp_path / "model.onnx", tmp_path / "stripped.onnx"
    onnx.save(se_model(Variant(blocks=2, gate="hardsigmoid_torch")), source)

    result = _cli("strip", str(source), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "2 SE blocks removed" in result.stdout and "HardSigmoid(0.1667, 0.5)" in result.stdout
    assert find_se(ir.load(output)) == []

    result = _cli("strip", str(source), "-o", str(output), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["blocks"]) == 2 and report["initializers_removed"] == 8


def test_cli_strip_without_se_blocks_is_a_one_line_error_and_writes_nothing(tmp_path):
    source, output = tmp_path / "model.onnx", tmp_path / "stripped.onnx"
    onnx.save(negative_model("groupnorm"), source)
    result = _cli("strip", str(source), "-o", str(output))
    assert result.returncode == 2
    assert result.stderr.startswith("se-onnx: error: ") and result.stderr.count("\n") == 1
    assert not output.exists()


def test_inspect_lists_the_detector_fields(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(se_model(Variant(activation="none", gate="clip_mul", layer="gemm", squeeze="reducemean")), source)
    result = _cli("inspect", str(source))
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("SE blocks: 1", 1)[1]
    assert "- (1 layer)" in section and "HardSigmoid(0.1667, 0.5)" in section and "ReduceMean/Gemm" in section


def test_inspect_lists_near_misses_with_reasons(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(se_model(Variant(first_kernel=3)), source)
    result = _cli("inspect", str(source))
    assert result.returncode == 0, result.stderr
    assert "SE blocks: 0" in result.stdout and "SE near-misses: 1" in result.stdout and "not 1×1" in result.stdout
    summary = json.loads(_cli("inspect", str(source), "--json").stdout)
    assert summary["se_near_misses"][0]["stage"] == "activation"
