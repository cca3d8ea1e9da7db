"""Every CLI error is one line and exit status 2: broken and malicious models, unreadable files, a
full disk while writing (the target untouched); and counts read as English ("1 SE block")."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import onnx
import pytest
from broken_models import CLI_ERRORS, write_corpus
from onnx import TensorProto, helper, numpy_helper

from models import build_samples
from se_onnx.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "repo")


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("se-onnx: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("name", [name for name, phrase in CLI_ERRORS.items() if phrase])
@pytest.mark.parametrize("command", ["inspect", "insert", "strip"])
def test_broken_models_are_one_line_errors(corpus, name, command, tmp_path, capsys):
    output = tmp_path / "out.onnx"
    args = [command, str(corpus[name])] + (["-o", str(output)] if command != "inspect" else [])
    assert main(args) == 2
    assert CLI_ERRORS[name] in _one_line_error(capsys)
    assert not output.exists()


def test_an_unreadable_model_is_one_line(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(build_samples.resnet_like(opset=13), model)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Path, "open", refuse)
    assert main(["inspect", str(model)]) == 2
    assert _one_line_error(capsys).endswith("cannot read the model (Permission denied)")


def test_a_full_disk_while_writing_leaves_the_target_untouched(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(build_samples.resnet_like(opset=13), model)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"the previous output")

    def full_disk(self, data):
        with open(self, "wb") as file:
            file.write(bytes(data)[:100])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert main(["insert", str(model), "-o", str(target)]) == 2
    assert "No space left on device); nothing was written" in _one_line_error(capsys)
    assert target.read_bytes() == b"the previous output"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]  # no staging left


def test_a_missing_output_folder_permission_is_one_line(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(build_samples.resnet_like(opset=13), model)

    def no_permission(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(Path, "mkdir", no_permission)
    assert main(["insert", str(model), "-o", str(tmp_path / "ro" / "out.onnx")]) == 2
    assert "cannot write (Permission denied); nothing was written" in _one_line_error(capsys)


def _one_conv_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_counts_in_singular(tmp_path, capsys):
    model = tmp_path / "one.onnx"
    onnx.save(_one_conv_model(), model)
    assert main(["insert", str(model), "-o", str(tmp_path / "se.onnx")]) == 0
    assert "\n1 SE block (conv placement" in capsys.readouterr().out
    assert main(["inspect", str(model)]) == 0
    assert "0 residual branches (--where residual), 1 conv (--where conv)" in capsys.readouterr().out
    assert main(["strip", str(tmp_path / "se.onnx"), "-o", str(tmp_path / "plain.onnx")]) == 0
    assert "\n1 SE block removed (" in capsys.readouterr().out
