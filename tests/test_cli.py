"""The command line end to end: insert, verify, export-weights and inspect, and their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import build_samples
from se_onnx.cli import main


def _write(proto: onnx.ModelProto, path) -> str:
    onnx.save(proto, path)
    return str(path)


@pytest.fixture
def resnet(tmp_path) -> str:
    return _write(build_samples.resnet_like(opset=13), tmp_path / "resnet.onnx")


def _conv_integer_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.uint8), "w")
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w"], ["y"], name="qconv")],
        "quantized",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2, 3, 3])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "no_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_insert_prints_a_table_and_writes_a_valid_model(resnet, tmp_path, capsys):
    output = tmp_path / "out.onnx"
    assert main(["insert", resnet, "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "after conv" in printed and "SE blocks (residual placement" in printed
    onnx.checker.check_model(str(output), full_check=True)
    assert main(["verify", resnet, str(output)]) == 0


def test_insert_json_report(resnet, tmp_path, capsys):
    assert main(["insert", resnet, "-o", str(tmp_path / "o.onnx"), "--where", "conv", "--ratio", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["placement"] == "conv" and report["opset"] == 13
    assert report["blocks"] and {"name", "channels", "squeeze_channels", "nodes"} <= set(report["blocks"][0])
    assert all(b["squeeze_channels"] == max(1, round(b["channels"] * 0.5)) for b in report["blocks"])


def test_verify_fails_past_tolerance_and_reports_json(resnet, tmp_path, capsys):
    changed = tmp_path / "random.onnx"
    main(["insert", resnet, "-o", str(changed), "--init", "random", "--seed", "1"])
    capsys.readouterr()
    assert main(["verify", resnet, str(changed), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] is False and result["outputs"][0]["max_abs"] > 0
    assert main(["verify", resnet, str(changed), "--atol", "1e9"]) == 0


def test_verify_takes_inputs_from_npz(resnet, tmp_path, capsys):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{build_samples.resnet_like(opset=13).graph.input[0].name: np.zeros((2, 3, 32, 32), np.float32)})
    assert main(["verify", resnet, resnet, "--inputs", str(inputs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["shape"][0] == 2
    np.savez(inputs, wrong=np.zeros((1,), np.float32))
    assert main(["verify", resnet, resnet, "--inputs", str(inputs)]) == 2


def test_in_place_needs_the_flag(resnet, capsys):
    before = Path(resnet).read_bytes()
    assert main(["insert", resnet, "-o", resnet]) == 2
    assert "--in-place" in capsys.readouterr().err
    assert Path(resnet).read_bytes() == before
    assert main(["insert", resnet, "-o", resnet, "--in-place"]) == 0
    assert Path(resnet).read_bytes() != before


def test_weights_round_trip_through_export(resnet, tmp_path):
    trained = tmp_path / "trained.onnx"
    weights = tmp_path / "se.npz"
    again = tmp_path / "again.onnx"
    assert main(["insert", resnet, "-o", str(trained), "--init", "random", "--seed", "7", "--ratio", "0.5"]) == 0
    assert main(["export-weights", str(trained), "-o", str(weights)]) == 0
    assert main(["insert", resnet, "-o", str(again), "--weights", str(weights)]) == 0
    assert main(["verify", str(trained), str(again), "--rtol", "1e-6", "--atol", "1e-7"]) == 0


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda p: p.write_bytes(b"this is not a model"), [], "not a valid ONNX model"),
        (
            lambda p: p.write_bytes(build_samples.resnet_like(opset=13).SerializeToString()[:2000]),
            [],
            "not a valid ONNX model",
        ),
        (lambda p: None, [], "no such file"),
        (lambda p: onnx.save(_relu_model(), p), [], "no Conv node"),
        (lambda p: onnx.save(_conv_integer_model(), p), [], "quantized"),
        (lambda p: onnx.save(build_samples.resnet_like(opset=13), p), ["--ratio", "0"], "--ratio"),
        (lambda p: onnx.save(build_samples.resnet_like(opset=13), p), ["--ratio", "1.5"], "--ratio"),
        (lambda p: onnx.save(build_samples.vgg_like(opset=13), p), ["--where", "residual"], "no residual block"),
    ],
)
def test_insert_bad_input_is_one_line_and_writes_nothing(make_input, extra, message, tmp_path, capsys):
    source = tmp_path / "in.onnx"
    make_input(source)
    output = tmp_path / "out.onnx"
    assert main(["insert", str(source), "-o", str(output), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("se-onnx: error:") and message in error
    assert error.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.onnx"] if source.exists() else [])


def test_weights_of_the_wrong_shape_are_refused(resnet, tmp_path, capsys):
    trained = tmp_path / "trained.onnx"
    weights = tmp_path / "se.npz"
    main(["insert", resnet, "-o", str(trained), "--init", "random"])
    main(["export-weights", str(trained), "-o", str(weights)])
    with np.load(weights) as archive:
        arrays = {key: archive[key] for key in archive.files}
    key = next(k for k in arrays if k.endswith("fc1.weight"))
    arrays[key] = arrays[key][:, :-1]
    np.savez(weights, **arrays)
    capsys.readouterr()
    output = tmp_path / "out.onnx"
    assert main(["insert", resnet, "-o", str(output), "--weights", str(weights)]) == 2
    assert "fc1.weight has shape" in capsys.readouterr().err
    assert not output.exists()


def test_inspect_json_lists_convs_sites_and_se_blocks(resnet, tmp_path, capsys):
    assert main(["inspect", resnet, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["convs"] and plain["se_blocks"] == []
    assert plain["insertion_sites"]["residual"] and plain["opsets"][""] == 13
    with_se = tmp_path / "se.onnx"
    main(["insert", resnet, "-o", str(with_se)])
    capsys.readouterr()
    assert main(["inspect", str(with_se), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["se_blocks"]) == len(plain["insertion_sites"]["residual"])
    block = summary["se_blocks"][0]
    assert {"channels", "squeeze_channels", "gate", "nodes"} <= set(block)
    assert block["gate"]["op_type"] == "Sigmoid"
    assert main(["inspect", str(with_se)]) == 0
    assert "SE blocks: " in capsys.readouterr().out


def test_commands_reach_into_if_branches(tmp_path, capsys):
    from tests import exporter_styles

    model = _write(exporter_styles.if_model(), tmp_path / "if.onnx")
    assert main(["inspect", model]) == 0
    table = capsys.readouterr().out
    assert "pick.then_branch/conv " in table and "pick.else_branch/conv " in table
    assert "main/pick.then_branch" in table  # the graph column of the SE blocks' table
    assert main(["inspect", model, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [block["graph"] for block in summary["se_blocks"]] == ["main/pick.then_branch"]
    assert {conv["graph"] for conv in summary["convs"]} == {"main", "main/pick.then_branch", "main/pick.else_branch"}

    weights = tmp_path / "se.npz"
    assert main(["export-weights", model, "-o", str(weights)]) == 0
    stripped = tmp_path / "stripped.onnx"
    assert main(["strip", model, "-o", str(stripped)]) == 0
    inserted = tmp_path / "inserted.onnx"
    argv = [
        "insert",
        str(stripped),
        "-o",
        str(inserted),
        "--nodes",
        "pick.then_branch/conv",
        "--weights",
        str(weights),
        "--json",
    ]
    capsys.readouterr()
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(block["name"], block["graph"]) for block in report["blocks"]] == [
        ("pick.then_branch/conv", "main/pick.then_branch")
    ]
