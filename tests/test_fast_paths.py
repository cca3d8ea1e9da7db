"""Tests of the shortcuts a command takes for speed: imports put off or skipped, models read from
mapped pages, the check and the write at once."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

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
        unwanted = ("sympy.core", "onnxruntime", "se_onnx.passes.fuse", "se_onnx.runtime.bench", "fastapi")
        print(sorted(name for name in unwanted if name in sys.modules))
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


def test_onnx_ir_still_imports_sympy_when_it_is_imported():
    # The reason for putting sympy off: when an onnx-ir release imports it lazily itself, this
    # fails, and se_onnx/cli/_deferred_imports.py (and this test) can go.
    assert _run_python("import sys, onnx_ir; print('sympy.core' in sys.modules)") == "True"


def _reads_sympy_on_import(tree: ast.Module) -> bool:
    """Whether a module reads a name from sympy as it is imported: `from sympy import …`, or
    `sympy.x` outside function bodies and annotations (which `from __future__ import annotations`
    leaves unevaluated)."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sympy":
            return True
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sympy":
            return True
        annotations = {id(node.annotation)} if isinstance(node, ast.AnnAssign) else set()
        pending += [child for child in ast.iter_child_nodes(node) if id(child) not in annotations]
    return False


def test_the_deferral_stands_in_for_every_onnx_ir_module_that_reads_sympy_on_import():
    # _deferred_imports stands in for sympy and for the onnx-ir modules that read sympy's names
    # as they are imported; a new such module would load sympy at start-up again.
    from se_onnx.cli._deferred_imports import _DEFERRED

    assert all(importlib.util.find_spec(name) is not None for name in _DEFERRED)
    package = Path(importlib.util.find_spec("onnx_ir").origin).parent
    readers = {
        "onnx_ir." + ".".join(path.relative_to(package).with_suffix("").parts)
        for path in package.rglob("*.py")
        if _reads_sympy_on_import(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert readers == set(_DEFERRED) - {"sympy"}


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
