"""Loading models with clear errors; writing models (checked, external data kept) and other files atomically."""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import onnx_ir as ir

from se_onnx.errors import SeOnnxError
from se_onnx.ir.gc_pause import collector_paused

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
        with collector_paused():
            model = _read_model(path)
    except OSError as error:  # no permission, a read error: not the file's content
        raise SeOnnxError(f"{path}: cannot read the model ({error.strerror or _one_line(error)})") from None
    except Exception as error:  # protobuf raises several unrelated types for a bad file
        raise SeOnnxError(f"{path}: not a valid ONNX model ({_one_line(error)})") from None
    if model.ir_version < 3 or (len(model.graph) == 0 and not model.graph.outputs):
        raise SeOnnxError(f"{path}: not a valid ONNX model (no graph; is the file truncated?)")
    folder = path.resolve().parent
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            _check_external_data(path, folder, name, tensor)
    return model


def _check_external_data(path: Path, folder: Path, name: str, tensor: ir.ExternalTensor) -> None:
    """The external data file exists inside the model's folder (symlinks followed) and holds the tensor."""
    where = f"{path}: initializer {name!r} lives in external data file {tensor.location!r}"
    data = Path(tensor.path)
    if Path(tensor.location).is_absolute() or not data.resolve().is_relative_to(folder):
        raise SeOnnxError(f"{where}, which escapes the model's folder")
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        raise SeOnnxError(f"{where}, which is missing") from None
    except OSError as error:
        raise SeOnnxError(f"{where}, which cannot be read ({error.strerror})") from None
    needed = (tensor.offset or 0) + tensor.nbytes
    if needed > size:
        raise SeOnnxError(f"{where}, which holds {size:,} bytes where the tensor needs {needed:,}")


def _read_model(path: Path) -> ir.Model:
    """`ir.load`, with a binary model parsed straight from the file's pages.

    `onnx.load`, under `ir.load`, first reads the whole file into a new bytes object; at ResNet-50
    size that buffer (100 MB of fresh memory, its page faults and the copy into it) was half the
    load. Protobuf parses a memoryview of the mapped file as it parses bytes, copying what it
    keeps, so nothing refers to the mapping once it is closed. Text formats go to `ir.load`.
    """
    if onnx.serialization.registry.get_format_from_file_extension(path.suffix) not in (None, "protobuf"):
        return ir.load(path)
    proto = onnx.ModelProto()
    with path.open("rb") as file:
        if os.fstat(file.fileno()).st_size:  # an empty file cannot be mapped; it parses as nothing
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as pages, memoryview(pages) as view:
                proto.ParseFromString(view)
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, os.fspath(path.parent))
    return model


def uses_external_data(model: ir.Model) -> bool:
    """Whether any of the model's initializers are stored in an external data file."""
    return any(isinstance(value.const_value, ir.ExternalTensor) for value in model.graph.initializers.values())


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
    with _write_errors(path):
        _save(model, path, external_data, check)


def _save(model: ir.Model, path: Path, external_data: bool | None, check: bool) -> None:
    if external_data is None:
        external_data = uses_external_data(model) or _weights_bytes(model) > _INLINE_WEIGHTS_LIMIT
    if not external_data:
        # Checked as bytes, the very bytes then written: the C++ checker reads a file from a path
        # several times slower than it parses bytes (≈ 90 ms against ≈ 25 ms at ResNet-50 size).
        serialized = b"".join(_encode(model))
        with atomic_output(path) as staging, ThreadPoolExecutor(max_workers=1) as writer:
            # The checker holds the GIL and the write does not, so the bytes are written while they
            # are checked; the file is moved into place only once both have succeeded.
            written = writer.submit(staging.write_bytes, serialized)
            if check:
                _check(serialized)
            written.result()
        return
    # The model and its data file are staged together in a folder beside them.
    data_name = f"{path.name}.data"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".se-onnx-", dir=path.parent))
    try:
        staged_model = staging / path.name
        ir.save(model, staged_model, external_data=data_name)
        if check:
            _check(staged_model)
        os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged_model, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _encode(model: ir.Model) -> list[bytes | memoryview]:
    """The model's protobuf encoding in pieces, with large initializers' bytes taken straight
    from their tensors.

    `ir.to_proto(model).SerializeToString()` copies every weight twice more (into the proto, then
    into the serialized string); at ResNet-50 size that made saving about 1.7× slower than
    onnx.load + onnx.save of the same file. The graph is serialized by onnx-ir with the large initializers swapped for
    header-only stand-ins (as `ir.save` does for external data; the originals are put back), and
    each one's raw_data is appended to its header. The pieces decode to the same ModelProto;
    only the position of fields differs (graph after the other ModelProto fields, initializers
    after the other GraphProto fields), which protobuf allows.

    What it buys, measured with `python benchmarks/bench_save.py ../shared/models/resnet18.onnx
    --runs 10` on a shared 2-core machine (interleaved, medians of the run-by-run ratios, against
    `ir.to_proto(model).SerializeToString()`): encoding 3.4× (ResNet-18, 47 MB of weights) and
    11.7× (ResNet-50-sized, 102 MB) faster; the whole save with its check, 1.33× and 1.71×.
    tests/test_save_encoding.py compares these bytes, field by field, with protobuf's own.
    """
    diverted: dict[str, ir.TensorProtocol] = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        # The stand-in takes (and freezes) an ir.Shape, which every onnx-ir tensor has.
        if (
            tensor is not None
            and tensor.nbytes >= _APPEND_MIN_BYTES
            and isinstance(tensor.shape, ir.Shape)
            and _plain_raw(tensor)
        ):
            diverted[name] = tensor
            value.const_value = ir.ExternalTensor(
                "", None, None, dtype=tensor.dtype, shape=tensor.shape, name=name, doc_string=tensor.doc_string
            )
    try:
        with collector_paused():
            proto = ir.to_proto(model)
    finally:
        for name, tensor in diverted.items():
            model.graph.initializers[name].const_value = tensor

    graph_pieces: list[bytes | memoryview] = []
    for tensor_proto in proto.graph.initializer:
        tensor = diverted.get(tensor_proto.name)
        if tensor is None:
            encoded = tensor_proto.SerializeToString()
            graph_pieces += [_key(_INITIALIZER_FIELD, len(encoded)), encoded]
            continue
        tensor_proto.ClearField("data_location")
        tensor_proto.ClearField("external_data")
        data = memoryview(tensor.tobytes())
        header = tensor_proto.SerializeToString() + _key(_RAW_DATA_FIELD, data.nbytes)
        graph_pieces += [_key(_INITIALIZER_FIELD, len(header) + data.nbytes), header, data]
    del proto.graph.initializer[:]
    graph_pieces.insert(0, proto.graph.SerializeToString())
    graph_size = sum(len(piece) if isinstance(piece, bytes) else piece.nbytes for piece in graph_pieces)
    proto.ClearField("graph")
    return [proto.SerializeToString(), _key(_GRAPH_FIELD, graph_size), *graph_pieces]


# Field numbers of ModelProto.graph, GraphProto.initializer and TensorProto.raw_data, as onnx's
# generated classes declare them.
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
# Initializers smaller than this go through onnx-ir's serializer unchanged.
_APPEND_MIN_BYTES = 4096


def _plain_raw(tensor: ir.TensorProtocol) -> bool:
    """Whether onnx-ir would store the tensor as its tobytes() in raw_data, and nothing else."""
    if tensor.metadata_props or tensor.dtype == ir.DataType.STRING:
        return False
    if isinstance(tensor, ir.TensorProtoTensor):
        return tensor.raw.HasField("raw_data")
    return not isinstance(tensor, (ir.ExternalTensor, ir.StringTensor))


def _key(field: int, length: int) -> bytes:
    """A length-delimited field's tag and length, as protobuf varints."""
    out = bytearray()
    for number in ((field << 3) | 2, length):
        while number >= 0x80:
            out.append((number & 0x7F) | 0x80)
            number >>= 7
        out.append(number)
    return bytes(out)


def _check(model: bytes | Path) -> None:
    try:
        onnx.checker.check_model(model if isinstance(model, bytes) else os.fspath(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SeOnnxError(f"the rewritten model fails onnx.checker, nothing was written: {_one_line(error)}") from None


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An OSError while writing (a full disk, no permission) as one line; the staging files are
    gone by then, and `path` was never touched."""
    try:
        yield
    except OSError as error:
        raise SeOnnxError(f"{path}: cannot write ({error.strerror or _one_line(error)}); nothing was written") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, moved onto `path` only when the `with` block succeeds.

    The temporary file is created with the permissions `open` would give `path` (the umask's),
    not mkstemp's owner-only ones, so the file moved into place reads like any other written there.
    """
    path = Path(path)
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            staging = path.with_name(f".se-onnx-{secrets.token_hex(8)}{path.suffix}")
            try:
                os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
        try:
            yield staging
            os.replace(staging, path)
        finally:
            if os.path.exists(staging):
                os.remove(staging)


def _weights_bytes(model: ir.Model) -> int:
    return sum(value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
