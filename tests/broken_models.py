"""A corpus of malicious and broken models, built on disk: random bytes, a truncated file, external
data escaping the model's folder (relative path, absolute path, symlink), a tensor declared a
terabyte large, and a model whose warm-up run fails. Shared by the CLI and the service tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

# name → the phrase of the CLI's one-line error (None: the file loads; it fails only when run).
CLI_ERRORS = {
    "random_bytes": "not a valid ONNX model",
    "truncated": "not a valid ONNX model",
    "escape_relative": "escapes the model's folder",
    "escape_absolute": "escapes the model's folder",
    "escape_symlink": "escapes the model's folder",
    "terabyte_tensor": "where the tensor needs",
    "warmup_fails": None,
}


def _add_model(weight: TensorProto, dims: list[int]) -> onnx.ModelProto:
    """y = x + w, with `w` as given (external data or not)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _external(location: str, dims: list[int]) -> onnx.ModelProto:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return _add_model(weight, dims)


def _reshape_to_impossible() -> onnx.ModelProto:
    """x [N, 4] reshaped to [3, 5]: valid to load, fails on every input."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, 5])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "warmup_fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_corpus(root: Path) -> dict[str, Path]:
    """Each model as root/<name>/1/model.onnx (a repository in Triton's layout); a file they
    must never read lies outside root. Returns name → model file."""
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    paths = {name: root / name / "1" / "model.onnx" for name in CLI_ERRORS}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths["random_bytes"].write_bytes(np.random.default_rng(0).bytes(4096))
    valid = _add_model(helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0] * 4), [4]).SerializeToString()
    paths["truncated"].write_bytes(valid[: len(valid) // 2])
    # From root/<name>/1/: up three levels is root's parent, where the outside folder is.
    onnx.save(_external(f"../../../{outside.name}/secret.bin", [4]), paths["escape_relative"])
    onnx.save(_external(str(secret), [4]), paths["escape_absolute"])
    os.symlink(secret, paths["escape_symlink"].parent / "weights.bin")
    onnx.save(_external("weights.bin", [4]), paths["escape_symlink"])
    (paths["terabyte_tensor"].parent / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    onnx.save(_external("weights.bin", [1 << 38]), paths["terabyte_tensor"])  # 2^38 floats: 1 TiB
    onnx.save(_reshape_to_impossible(), paths["warmup_fails"])
    return paths
