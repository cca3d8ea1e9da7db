"""Tensors in HTTP bodies: JSON `data` and Triton's binary tensor data extension, to and from numpy."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import orjson
from pydantic import ValidationError

from service.errors import bad_request, first_error, quoted
from service.rest.schemas import InferRequest, RequestInput
from service.runtime.shm import SharedMemoryRegistry, region_slice
from service.runtime.tensors import (
    DATATYPES,
    TensorSpec,
    array_from_bytes,
    check_complete,
    check_input,
    datatype_of_array,
    deserialize_bytes,
    tensor_bytes,
)

HEADER_LENGTH = "Inference-Header-Content-Length"


def parse_request(
    body: bytes, header_length: str | None, inputs: Mapping[str, TensorSpec], shared_memory: SharedMemoryRegistry
) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request and its input arrays, checked against the model's inputs (400 on any mistake).

    `header_length` is the Inference-Header-Content-Length header: absent means the body is JSON
    only, 0 means the body is the raw bytes of the model's single input (Triton's raw request).
    Inputs whose parameters name a shared memory region are read from `shared_memory`.
    """
    if header_length is None:
        json_size = len(body)
    else:
        try:
            json_size = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} must be an integer, got {quoted(header_length)}") from None
        if not 0 <= json_size <= len(body):
            raise bad_request(f"{HEADER_LENGTH} {json_size} is outside the body of {len(body)} bytes")
        if json_size == 0:
            return _raw_request(body, inputs)
    try:
        # orjson refuses nesting deeper than 1024 levels itself, so no input reaches a recursion limit.
        document = orjson.loads(body[:json_size])
    except orjson.JSONDecodeError as error:
        raise bad_request(f"malformed JSON in the request: {error}") from None
    try:
        request = InferRequest.model_validate(document)
    except ValidationError as error:
        raise bad_request(f"invalid inference request: {first_error(error)}") from None
    return request, _decode_inputs(request, memoryview(body)[json_size:], inputs, shared_memory)


def _raw_request(body: bytes, inputs: Mapping[str, TensorSpec]) -> tuple[InferRequest, dict[str, np.ndarray]]:
    if len(inputs) != 1:
        raise bad_request(f"a raw binary request needs a model with one input; this one has {len(inputs)}")
    (spec,) = inputs.values()
    if spec.datatype == "BYTES":
        array = deserialize_bytes(memoryview(body), spec.name)
        count = array.size
    else:
        itemsize = np.dtype(DATATYPES[spec.datatype]).itemsize
        if len(body) % itemsize:
            raise bad_request(f"input {spec.name!r}: {len(body)} bytes is not a whole number of {spec.datatype}")
        array = np.frombuffer(body, DATATYPES[spec.datatype])
        count = array.size
    shape = _raw_shape(spec, count)
    request = InferRequest(
        inputs=[RequestInput(name=spec.name, shape=shape, datatype=spec.datatype)],
        parameters={"binary_data_output": True},
    )
    return request, {spec.name: array.reshape(shape)}


def _raw_shape(spec: TensorSpec, count: int) -> list[int]:
    """The model's shape with its one dynamic dimension (if any) taken from the element count."""
    dynamic = [axis for axis, dim in enumerate(spec.shape) if dim < 0]
    known = math.prod(dim for dim in spec.shape if dim >= 0)
    if len(dynamic) > 1:
        raise bad_request(f"input {spec.name!r} has several dynamic dimensions; a raw request cannot give its shape")
    if dynamic:
        if known == 0 or count % known:
            raise bad_request(f"input {spec.name!r}: {count} elements do not fit shape {list(spec.shape)}")
        return [count // known if dim < 0 else dim for dim in spec.shape]
    if count != known:
        raise bad_request(f"input {spec.name!r}: expected {known} elements of shape {list(spec.shape)}, got {count}")
    return list(spec.shape)


def _decode_inputs(
    request: InferRequest, binary: memoryview, inputs: Mapping[str, TensorSpec], shared_memory: SharedMemoryRegistry
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        check_input(inputs, arrays, tensor.name, tensor.datatype, tensor.shape)
        size = tensor.parameters.get("binary_data_size")
        what = f"input {quoted(tensor.name)}"
        where = region_slice(tensor.parameters, what)
        if where is not None:
            if size is not None or tensor.data is not None:
                raise bad_request(f"{what}: data in shared memory takes neither data nor binary_data_size")
            arrays[tensor.name] = shared_memory.read_input(where, tensor.name, tensor.datatype, tensor.shape)
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad_request(f"input {quoted(tensor.name)}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise bad_request(f"input {quoted(tensor.name)}: binary_data_size {size} runs past the end of the body")
            arrays[tensor.name] = array_from_bytes(
                tensor.name, tensor.datatype, tensor.shape, binary[offset : offset + size]
            )
            offset += size
        else:
            arrays[tensor.name] = _from_json(tensor)
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes after the JSON header belong to no input")
    check_complete(inputs, arrays)
    return arrays


def _from_json(tensor: RequestInput) -> np.ndarray:
    """JSON `data` (flat or nested) as an array, converted by numpy in one pass: each element's
    JSON type must fit the datatype (booleans for BOOL only, integers for integer types, no null)."""
    if tensor.data is None:
        raise bad_request(f"input {quoted(tensor.name)} has neither data nor binary_data_size")
    count = math.prod(tensor.shape)
    if tensor.datatype == "BYTES":
        array = _json_array(tensor, object)
        if not all(isinstance(item, str) for item in array.reshape(-1)):
            raise bad_request(f"input {quoted(tensor.name)}: BYTES data must be strings")
    else:
        array = _json_numbers(tensor, np.dtype(DATATYPES[tensor.datatype]))
    if array.size != count:
        raise bad_request(
            f"input {quoted(tensor.name)}: {array.size} elements, expected {count} for shape {quoted(tensor.shape)}"
        )
    return array.reshape(tensor.shape)


def _json_array(tensor: RequestInput, dtype: type | None = None) -> np.ndarray:
    try:
        return np.array(tensor.data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as error:  # ragged rows, or deeper than numpy's 64 dimensions
        raise bad_request(f"input {quoted(tensor.name)}: data is not {tensor.datatype}: {error}") from None


_FOUND = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "non-integer numbers",
    "U": "strings",
    "O": "null, lists mixed with numbers, objects or integers past 64 bits",
}


def _json_numbers(tensor: RequestInput, dtype: np.dtype) -> np.ndarray:
    # numpy infers the elements' common type first: bool for JSON booleans only, int64/uint64 for
    # integers, float64 once any element is a float, and object for null, strings, objects or
    # integers past 64 bits; a list mixing booleans and numbers comes out numeric, hence `_hides_bool`.
    array = _json_array(tensor)
    if not array.size:
        return array.astype(dtype)
    kind = array.dtype.kind
    if kind == "f" and dtype.kind in "iu":
        # numpy also infers float for integers that fit no int64 (2**63 as UINT64, or past
        # 64 bits, which orjson reads as floats): look at the elements before refusing.
        return _json_integers(tensor, dtype)
    wanted = "b" if dtype.kind == "b" else "iu" if dtype.kind in "iu" else "iuf"
    if kind not in wanted:
        raise bad_request(
            f"input {quoted(tensor.name)}: data is not {tensor.datatype}: it holds {_FOUND.get(kind, _FOUND['O'])}"
        )
    if kind != "b" and _hides_bool(tensor.data, array):
        raise bad_request(f"input {quoted(tensor.name)}: data is not {tensor.datatype}: it holds booleans")
    if kind in "iu" and dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise _outside(tensor, limits)
    if dtype.kind == "f" and dtype.itemsize < 8:
        with np.errstate(over="ignore"):
            converted = array.astype(dtype)
        if not np.isfinite(converted).all():  # JSON has no infinities: only an overflow makes one
            largest = float(np.finfo(dtype).max)
            raise bad_request(
                f"input {quoted(tensor.name)}: a value is out of range for {tensor.datatype} "
                f"(largest magnitude {largest:g})"
            )
        return converted
    return array.astype(dtype, copy=False)


def _outside(tensor: RequestInput, limits: np.iinfo) -> Exception:
    return bad_request(
        f"input {quoted(tensor.name)}: data is not {tensor.datatype}: values outside [{limits.min}, {limits.max}]"
    )


def _json_integers(tensor: RequestInput, dtype: np.dtype) -> np.ndarray:
    """Integer data that numpy read as floats: exact when every element is a JSON integer within
    the type's range; otherwise the 400 that names what is wrong."""
    elements = np.array(tensor.data, dtype=object).reshape(-1)
    limits = np.iinfo(dtype)
    if any(not limits.min <= element <= limits.max for element in elements):
        raise _outside(tensor, limits)
    if any(not isinstance(element, int) for element in elements):
        raise bad_request(f"input {quoted(tensor.name)}: data is not {tensor.datatype}: it holds {_FOUND['f']}")
    if _has_bool(tensor.data):
        raise bad_request(f"input {quoted(tensor.name)}: data is not {tensor.datatype}: it holds booleans")
    return np.array(tensor.data, dtype=dtype)


def _hides_bool(data: object, array: np.ndarray) -> bool:
    """Whether numpy's numeric `array` of `data` stands for JSON booleans somewhere. Booleans
    become 0 and 1, so only those elements need a look: one by one, through their indexes into the
    nested lists, while they are few (zeros in an image); in one pass over `data` when they are many."""
    zero_or_one = (array == 0) | (array == 1)
    count = int(np.count_nonzero(zero_or_one))
    if not count:
        return False
    if array.ndim == 0 or count * _FEW_PLACES > array.size:
        return _has_bool(data)
    places = np.flatnonzero(zero_or_one)
    for index in zip(*(axis.tolist() for axis in np.unravel_index(places, array.shape))):
        item = data
        for position in index:
            item = item[position]  # type: ignore[index]  # rectangular lists: numpy has checked
        if isinstance(item, bool):
            return True
    return False


# Looking at one element by its index costs about as much as 15–30 elements of a full pass.
_FEW_PLACES = 32


def _has_bool(data: object) -> bool:
    """Whether a rectangular list (at most 64 levels, numpy has checked) holds a JSON boolean."""
    if not isinstance(data, list):
        return isinstance(data, bool)
    if data and isinstance(data[0], list):
        return any(_has_bool(row) for row in data)
    return bool in set(map(type, data))


def binary_outputs(request: InferRequest, names: Sequence[str]) -> dict[str, bool]:
    """The outputs to return (those requested, else all of the model's `names`) and whether each
    goes as binary data; the data plane checks the requested names against the model."""
    default = bool(request.parameters.get("binary_data_output", False))
    if request.outputs is None:
        return {name: default for name in names}
    return {output.name: bool(output.parameters.get("binary_data", default)) for output in request.outputs}


def encode_response(
    header: dict, outputs: Mapping[str, np.ndarray], binary: Mapping[str, bool], in_shared_memory: Collection[str] = ()
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header. Outputs
    `in_shared_memory` are described without data, as Triton does."""
    described, chunks = [], []
    for name, as_binary in binary.items():
        array = outputs[name]
        datatype = datatype_of_array(array)
        entry: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in in_shared_memory:
            described.append(entry)
            continue
        if as_binary:
            raw = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [
                item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)
            ]
        else:
            # Serialised by orjson straight from the buffer (NaN and infinities become null).
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        described.append(entry)
    text = orjson.dumps({**header, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)
