"""Tests of the sample-model builder: every sample is valid, runs, and the committed files are current."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from models import build_samples
from se_onnx.passes.find import find_se
from se_onnx.runtime.sessions import make_session, random_inputs

MODELS_DIR = Path(build_samples.__file__).parent
BUILDERS = [
    build_samples.resnet_like,
    build_samples.vgg_like,
    build_samples.depthwise_separable,
    build_samples.conv1d_model,
    build_samples.conv3d_model,
    build_samples.tiny_conv,
    build_samples.mobilenet_se_like,
]


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda builder: builder.__name__)
def test_every_sample_is_valid_and_runs(builder, dtype, opset):
    model = builder(opset=opset, dtype=dtype)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    session = make_session(model.SerializeToString())
    (output,) = session.run(None, random_inputs(session, batch=2))
    assert output.shape[0] == 2
    assert output.dtype == np.dtype(dtype)
    assert np.isfinite(output.astype(np.float32)).all()


def test_batch_dim_is_symbolic_unless_fixed():
    assert build_samples.resnet_like().graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert build_samples.resnet_like(batch=3).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


def test_only_the_se_sample_has_se_blocks():
    assert len(find_se(ir.from_proto(build_samples.mobilenet_se_like()))) == 2
    for builder in BUILDERS[:-1]:
        assert find_se(ir.from_proto(builder())) == [], builder.__name__


def test_resnet50_sized_has_resnet50s_layout():
    model = build_samples.resnet50_sized()
    ops = [node.op_type for node in model.graph.node]
    parameters = sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer)
    assert ops.count("Conv") == 53 and ops.count("Add") == 16
    assert 25e6 < parameters < 26e6


def test_conv_chain_has_the_requested_size():
    assert [node.op_type for node in build_samples.conv_chain(5).graph.node].count("Conv") == 5


def test_external_data_copy_leaves_the_model_untouched(tmp_path):
    model = build_samples.vgg_like()
    build_samples.save_with_external_data(model, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx.data").is_file()
    assert all(tensor.raw_data for tensor in model.graph.initializer)
    onnx.checker.check_model(tmp_path / "model.onnx", full_check=True)


@pytest.mark.parametrize("name", sorted(build_samples.COMMITTED))
def test_committed_samples_match_the_builder(name):
    committed = onnx.load(MODELS_DIR / f"{name}.onnx")
    assert committed == build_samples.COMMITTED[name](), f"run: python models/build_samples.py ({name}.onnx is stale)"


def test_main_writes_the_samples(tmp_path):
    build_samples.main(["--output-dir", str(tmp_path)])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"{name}.onnx" for name in build_samples.COMMITTED
    )
