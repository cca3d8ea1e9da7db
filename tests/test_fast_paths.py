"""Tests of the shortcuts a command takes for speed: imports put off or skipped, models read from
mapped pages, the check and the write at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import onnx
import onnx_ir as ir
import pytest

from models import build_samples
from se_onnx import SeOnnxError, load_model, save_model


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_insert_command_imports_neither_sympy_nor_other_commands(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(build_samples.resnet_like(opset=13), source)
    loaded = _run_python(
        f"""
        import sys
        from se_onnx.cli import main
        sys.argv = ["se-onnx", "insert", {str(source)!r}, "-o", {str(tmp_path / "se.onnx")!r}, "--json"]
        assert main() == 0
        print(sorted(name for name in ("sympy.core", "onnxruntime", "se_onnx.passes.fuse", "se_onnx.runtime.bench", "fastapi") if name in sys.modules))
        """
    )
    assert loaded.splitlines()[-1] == "[]"
    onnx.checker.check_model(str(tmp_path / "se.onnx"), full_check=True)


def test_sympy_put_off_still_loads_when_used():
    out = _run_python(
        """
        import sys
        from se_onnx.cli._deferred_imports import defer_unused_imports
        defer_unused_imports()
        import onnx_ir as ir
        before = "sympy.core" in sys.modules
        dim = ir.SymbolicDim("N") * 2 + 1
        import sympy
        print(before, dim, "sympy.core" in sys.modules, isinstance(sympy.Symbol("N") * 2, sympy.Expr))
        """
    )
    assert out == "False 2*N + 1 True True"


def test_help_still_lists_every_command(capsys):
    from se_onnx.cli import COMMAND_MODULES, main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for module in COMMAND_MODULES:
        assert module.replace("_", "-") in out


@pytest.mark.parametrize("suffix", [".onnx", ".json"])
def test_load_model_reads_what_ir_load_reads(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    onnx.save(build_samples.resnet_like(opset=13), path)  # onnx picks the format by the suffix
    assert ir.to_proto(load_model(path)) == ir.to_proto(ir.load(path))


def test_an_empty_file_is_not_a_model(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(SeOnnxError, match="not a valid ONNX model"):
        load_model(tmp_path / "empty.onnx")


def test_a_model_failing_the_check_while_it_is_written_keeps_the_old_output(tmp_path):
    # The bytes are written while they are checked; a failed check must leave the old file alone.
    model = ir.serde.deserialize_model(build_samples.resnet_like(opset=13))
    relu = next(node for node in model.graph if node.op_type == "Relu")
    relu.outputs[0].name = model.graph.inputs[0].name  # two producers of one name: invalid SSA
    output = tmp_path / "out.onnx"
    output.write_bytes(b"the previous model")
    with pytest.raises(SeOnnxError, match="fails onnx.checker, nothing was written"):
        save_model(model, output)
    assert output.read_bytes() == b"the previous model" and [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
