"""Loading models with clear errors; writing models (checked, external data kept) and other files atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from se_onnx.errors import SeOnnxError

# Protobuf cannot serialize a model of 2 GiB or more; past this many bytes of weights, weights go
# to an external data file even when the source model kept them inline.
_INLINE_WEIGHTS_LIMIT = 1536 * 1024 * 1024


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model, with external data left on disk until it is read.

    Raises SeOnnxError for a missing file, a file that is not an ONNX model (corrupt or truncated),
    or external data files that are missing.
    """
    path = Path(path)
    if not path.is_file():
        raise SeOnnxError(f"{path}: no such file")
    try:
        model = ir.load(path)
    except Exception as error:  # protobuf raises several unrelated types for a bad file
        raise SeOnnxError(f"{path}: not a valid ONNX model ({_one_line(error)})") from None
    if model.ir_version < 3 or (len(model.graph) == 0 and not model.graph.outputs):
        raise SeOnnxError(f"{path}: not a valid ONNX model (no graph; is the file truncated?)")
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not Path(tensor.path).is_file():
            raise SeOnnxError(
                f"{path}: initializer {value.name!r} lives in external data file "
                f"{tensor.location!r}, which is missing"
            )
    return model


def uses_external_data(model: ir.Model) -> bool:
    """Whether any of the model's initializers are stored in an external data file."""
    return any(
        isinstance(value.const_value, ir.ExternalTensor)
        for value in model.graph.initializers.values()
    )


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    check: bool = True,
) -> None:
    """Write `model` to `path` atomically, after it passes `onnx.checker` (full check).

    `external_data=None` keeps weights external when the source model had them external, or when
    they would not fit in one protobuf; the data file is `<name>.data` beside the model. Nothing is
    written at `path` (or its data file) unless the whole model was written and checked first.
    """
    path = Path(path)
    if external_data is None:
        external_data = uses_external_data(model) or _weights_bytes(model) > _INLINE_WEIGHTS_LIMIT
    data_name = f"{path.name}.data" if external_data else None
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".se-onnx-", dir=path.parent))
    try:
        staged_model = staging / path.name
        if data_name is None:
            # Serialize once and check those bytes: checking by path would read the file back.
            serialized = ir.to_proto(model).SerializeToString()
            if check:
                _check(serialized)
            staged_model.write_bytes(serialized)
        else:
            ir.save(model, staged_model, external_data=data_name)
            if check:
                _check(staged_model)
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged_model, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check(model: bytes | Path) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SeOnnxError(f"the rewritten model fails onnx.checker, nothing was written: {_one_line(error)}") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, moved onto `path` only when the `with` block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=".se-onnx-", suffix=path.suffix, dir=path.parent)
    os.close(descriptor)
    try:
        yield Path(staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def _weights_bytes(model: ir.Model) -> int:
    return sum(
        value.const_value.nbytes
        for value in model.graph.initializers.values()
        if value.const_value is not None
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
