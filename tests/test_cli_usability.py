"""What a new user runs into first: --version, a subcommand's own usage on a bad flag, a closed pipe,
missing optional dependencies refused before any work, verify on dynamic dims and outputs near zero,
one parameter count for insert and evaluate, image normalisation options, and SE-only training of
an untrained model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from se_onnx.cli import main

ROOT = Path(__file__).resolve().parents[1]
RESNET = str(ROOT / "models" / "resnet_tiny.onnx")


def _one_line_error(captured) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("se-onnx: error: "), captured.err
    return lines[0]


def _save(nodes, inputs, outputs, initializers, path: Path) -> str:
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)
    return str(path)


def _pool_classifier(path: Path, channels: int = 1, classes: int = 2) -> str:
    """N × channels × 8 × 8 → GlobalAveragePool → Flatten → Gemm → N × classes."""
    weight = numpy_helper.from_array(np.ones((classes, channels), np.float32), "w")
    return _save(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["scores"], transB=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        [weight],
        path,
    )


def test_version_is_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"se-onnx {version('se-onnx')}"


def test_a_bad_flag_shows_the_subcommands_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["insert", RESNET, "-o", str(tmp_path / "out.onnx"), "--bogus"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: se-onnx insert ")
    assert "se-onnx insert: error: unrecognized arguments: --bogus" in err
    assert not (tmp_path / "out.onnx").exists()


def test_a_closed_pipe_ends_the_command_quietly():
    # The reader is gone before the first byte, as `se-onnx inspect --json | head -0` leaves it.
    read, write = os.pipe()
    os.close(read)
    try:
        process = subprocess.run(
            [sys.executable, "-m", "se_onnx", "inspect", "--json", str(ROOT / "models" / "mobilenet_se_tiny.onnx")],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert process.returncode == 141  # 128 + SIGPIPE, as for a tool the signal ended
    assert process.stderr == b""


@pytest.fixture
def npz(tmp_path) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 8))
    return str(path)


@pytest.mark.parametrize("command", ["bench", "evaluate", "train"])
def test_plot_without_matplotlib_is_refused_before_any_work(command, npz, tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    output, plot = tmp_path / "out.onnx", tmp_path / "p.png"
    args = {
        "bench": ["bench", RESNET, "--runs", "1000000"],
        "evaluate": ["evaluate", RESNET, "--compare", RESNET, "--data", npz, "--runs", "1000000"],
        "train": ["train", RESNET, "--data", npz, "--train", "all", "-o", str(output)],
    }[command]
    assert main([*args, "--plot", str(plot)]) == 2
    captured = capfd.readouterr()
    assert _one_line_error(captured) == (
        "se-onnx: error: --plot needs matplotlib, which is not installed: pip install 'se-onnx[plot]'"
    )
    assert captured.out == "" and not output.exists() and not plot.exists()


def test_train_without_torch_and_folders_without_pillow_are_refused(npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["train", RESNET, "--data", npz, "-o", str(tmp_path / "out.onnx")]) == 2
    assert _one_line_error(capsys.readouterr()).endswith(
        "se-onnx train needs PyTorch, which is not installed: pip install 'se-onnx[train]'"
    )
    monkeypatch.setitem(sys.modules, "PIL", None)
    (tmp_path / "images" / "a").mkdir(parents=True)
    assert main(["evaluate", RESNET, "--data", str(tmp_path / "images")]) == 2
    assert "reading image folders needs Pillow, which is not installed: pip install 'se-onnx[train]'" in (
        _one_line_error(capsys.readouterr())
    )


def _dynamic_sequence_model(path: Path) -> str:
    """A Conv1d over an input N × 4 × seq without padding: a sequence of 1 is too short for it."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4, 3)).astype(np.float32), "w")
    return _save(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, None])],
        [weight],
        path,
    )


def test_verify_names_the_dynamic_dim_and_takes_its_size(tmp_path, capfd):
    model = _dynamic_sequence_model(tmp_path / "seq.onnx")
    assert main(["verify", model, model]) == 2
    error = _one_line_error(capfd.readouterr())  # ONNX Runtime's own coloured log line is not printed
    assert "input 'x' has a dynamic dim seq (axis 2), which the random inputs set to 1" in error
    assert "--dim seq=SIZE" in error
    assert main(["verify", model, model, "--dim", "seq=16"]) == 0
    assert "8×14" in capfd.readouterr().out
    assert main(["verify", model, model, "--dim", "len=16"]) == 2
    assert "--dim len: no input has a dim of that name (named dims: N, seq)" in _one_line_error(capfd.readouterr())


def test_verify_judges_outputs_near_zero_by_the_absolute_tolerance(tmp_path, capsys):
    def scaled(path: Path, offset: float) -> str:
        constants = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("o", offset), ("s", 1e-9))]
        return _save(
            [helper.make_node("Add", ["x", "o"], ["t"]), helper.make_node("Mul", ["t", "s"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
            constants,
            path,
        )

    a, b = scaled(tmp_path / "a.onnx", 0.0), scaled(tmp_path / "b.onnx", 0.5)  # |A| ~ 1e-9, relative error large
    assert main(["verify", a, b]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^y\s+1×4\s+\S+\s+-\s+ok$", out, re.MULTILINE), out
    assert "relative error is not meaningful" in out and "judged by the absolute tolerance alone" in out
    assert main(["verify", a, b, "--json"]) == 0
    [output] = json.loads(capsys.readouterr().out)["outputs"]
    assert output["max_rel"] is None and output["judged_by"] == "atol"
    # An output of ordinary size keeps its relative error.
    assert main(["verify", RESNET, RESNET, "--json"]) == 0
    [output] = json.loads(capsys.readouterr().out)["outputs"]
    assert output["max_rel"] == 0 and output["judged_by"] == "atol + rtol"


def test_insert_and_evaluate_count_the_same_parameters(npz, tmp_path, capsys):
    with_se = tmp_path / "se.onnx"
    assert main(["insert", RESNET, "-o", str(with_se), "--where", "conv", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)["parameters_added"]
    assert added == sum(2 * c * s + c + s for c, s in ((16, 4), (16, 4), (16, 4), (32, 8), (32, 8), (32, 8)))
    assert main(["evaluate", RESNET, "--compare", str(with_se), "--data", npz, "--runs", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["difference"]["parameters"] == added  # the gates' fixed gains are no parameters
    assert main(["insert", RESNET, "-o", str(with_se), "--where", "conv"]) == 0
    assert f"+{added:,} parameters" in capsys.readouterr().out


def test_mean_and_std_are_checked_together(tmp_path, capsys):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.new("L", (8, 8), 128).save(tmp_path / "images" / name / "0.png")
    grey = _pool_classifier(tmp_path / "grey.onnx")
    assert main(["evaluate", grey, "--data", str(tmp_path / "images"), "--runs", "1"]) == 2
    error = _one_line_error(capsys.readouterr())
    assert "--mean has 3 values; --std has 3 values" in error and "--mean 0.5 --std 0.5" in error
    args = ["evaluate", grey, "--data", str(tmp_path / "images"), "--runs", "1", "--json"]
    assert main([*args, "--mean", "0.5", "--std", "0.25"]) == 0
    capsys.readouterr()
    # On an .npz they would be ignored: refused instead.
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([0, 1]))
    assert main(["evaluate", grey, "--data", str(tmp_path / "d.npz"), "--mean", "0.5", "--std", "0.25"]) == 2
    assert "--mean, --std apply to image folders only" in _one_line_error(capsys.readouterr())


def test_se_training_of_an_untrained_model_says_why_nothing_changes(tmp_path, capsys):
    pytest.importorskip("torch")
    with_se, data = tmp_path / "se.onnx", tmp_path / "d.npz"
    assert main(["insert", RESNET, "-o", str(with_se)]) == 0
    # The untrained sample gives every input one class; the labels here are all another one.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    import onnxruntime as ort

    constant = int(ort.InferenceSession(RESNET).run(None, {"input": x})[0].argmax(1)[0])
    np.savez(data, x=x, y=np.full(16, (constant + 1) % 10))
    capsys.readouterr()
    args = ["train", str(with_se), "--data", str(data), "--epochs", "1", "--no-progress"]
    args += ["-o", str(tmp_path / "t.onnx")]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("se-onnx: warning:")]
    assert len(warnings) == 1
    assert f"scores 0.0000 on the training data (chance 0.1000) and predicts class {constant} for 100%" in warnings[0]
    assert "pass --train all, or start from a trained model" in warnings[0]
    assert main([*args, "--train", "all"]) == 0
    assert "se-onnx: warning:" not in capsys.readouterr().err
