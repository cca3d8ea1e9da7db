"""Tensors as the protocol names them: datatypes, a model's input and output specs, checks of what a
request declares, and the raw byte layouts (Triton's BYTES included) that HTTP, gRPC and shared memory share."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from se_onnx.runtime.sessions import numpy_dtype
from service.errors import bad_request, quoted

DATATYPES: dict[str, type] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_BY_DTYPE = {np.dtype(dtype): name for name, dtype in DATATYPES.items()}


def datatype_of_ort(ort_type: str) -> str | None:
    """'tensor(float)' → 'FP32'; None for types the protocol has no name for (bfloat16, maps…)."""
    dtype = numpy_dtype(ort_type)
    return None if dtype is None else _BY_DTYPE[np.dtype(dtype)]


def datatype_of_array(array: np.ndarray) -> str:
    return "BYTES" if array.dtype.kind in "OSU" else _BY_DTYPE[array.dtype]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol shows it: -1 for each dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(want in (-1, got) for want, got in zip(self.shape, shape))


def check_input(
    inputs: Mapping[str, TensorSpec], given: Mapping[str, object], name: str, datatype: str, shape: Sequence[int]
) -> TensorSpec:
    """The model's spec for input `name` as a request declares it (400 when unknown, repeated,
    or of another datatype or shape); `given` holds the inputs decoded so far."""
    spec = inputs.get(name)
    if spec is None:
        raise bad_request(f"unknown input {quoted(name)}; the model takes {', '.join(inputs)}")
    if name in given:
        raise bad_request(f"input {quoted(name)} is given twice")
    if datatype != spec.datatype:
        raise bad_request(f"input {quoted(name)}: datatype {datatype}, expected {spec.datatype}")
    _check_dims(name, shape)
    if not spec.accepts(shape):
        raise bad_request(f"input {quoted(name)}: shape {quoted(list(shape))} does not match {list(spec.shape)}")
    return spec


def _check_dims(name: str, shape: Sequence[int]) -> None:
    """A request gives each dimension's actual size: never -1 (the metadata's "dynamic"), nor more
    elements than an array can index."""
    for dim in shape:
        if dim < 0:
            raise bad_request(
                f"input {quoted(name)}: shape {quoted(list(shape))} has the negative dimension {dim}; "
                "a request gives each dimension's actual size"
            )
    if math.prod(dim for dim in shape if dim) > _MAX_ELEMENTS:
        raise bad_request(f"input {quoted(name)}: shape {quoted(list(shape))} is too large for any array")


# numpy indexes arrays with int64; a shape past this cannot even describe an empty array.
_MAX_ELEMENTS = np.iinfo(np.int64).max


def check_complete(inputs: Mapping[str, TensorSpec], given: Mapping[str, object]) -> None:
    missing = [name for name in inputs if name not in given]
    if missing:
        raise bad_request(f"missing input {', '.join(map(repr, missing))}")


def fixed_byte_size(datatype: str, shape: Sequence[int]) -> int | None:
    """The bytes a tensor of `datatype` and `shape` takes; None for BYTES, whose elements vary in length."""
    if datatype == "BYTES":
        return None
    return math.prod(shape) * np.dtype(DATATYPES[datatype]).itemsize


def array_from_bytes(name: str, datatype: str, shape: Sequence[int], chunk) -> np.ndarray:
    """An input's array over `chunk` (bytes or a memoryview, not copied): raw little-endian
    elements, or Triton's length-prefixed layout for BYTES."""
    count = math.prod(shape)
    if datatype == "BYTES":
        array = deserialize_bytes(memoryview(chunk), name)
    else:
        expected = fixed_byte_size(datatype, shape)
        if len(chunk) != expected:
            raise bad_request(
                f"input {quoted(name)}: {len(chunk)} bytes of data, expected {expected} "
                f"for shape {quoted(list(shape))} of {datatype}"
            )
        array = np.frombuffer(chunk, DATATYPES[datatype])
    if array.size != count:
        raise bad_request(
            f"input {quoted(name)}: {array.size} elements, expected {count} for shape {quoted(list(shape))}"
        )
    return array.reshape(shape)


def deserialize_bytes(chunk: memoryview, name: str) -> np.ndarray:
    """Triton's BYTES layout: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise bad_request(f"input {quoted(name)}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise bad_request(f"input {quoted(name)}: BYTES element runs past its data")
        items.append(bytes(chunk[offset : offset + length]).decode("utf-8", "surrogateescape"))
        offset += length
    return np.array(items, dtype=object)


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogateescape")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def tensor_bytes(array: np.ndarray) -> memoryview:
    """An output's wire bytes: Triton's BYTES layout for strings, else the elements in C order
    (over the array itself when it is contiguous already: no copy)."""
    if array.dtype.kind in "OSU":
        return memoryview(serialize_bytes(array))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
