"""Tensors over gRPC: Triton's ModelInferRequest to an InferenceRequest, and results to ModelInferResponse."""

from __future__ import annotations

import math

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.dataplane import InferenceRequest, InferenceResult, Parameters
from service.errors import bad_request, quoted
from service.runtime.model import ServedModel
from service.runtime.shm import SharedMemoryRegistry, region_slice
from service.runtime.tensors import (
    DATATYPES,
    array_from_bytes,
    check_complete,
    check_input,
    datatype_of_array,
    tensor_bytes,
)

# The typed field of InferTensorContents that carries each datatype (FP16 has none: raw only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters(entries) -> Parameters:
    """A protobuf map of InferParameter (or ModelRepositoryParameter) as plain Python values."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in entries.items()
        if value.WhichOneof("parameter_choice")
    }


def decode_request(
    request: pb.ModelInferRequest, shared_memory: SharedMemoryRegistry, model: ServedModel
) -> InferenceRequest:
    """The request's inputs as arrays, checked against `model` (400 on any mistake). Raw
    contents become arrays over the message's bytes without a per-element step; inputs whose
    parameters name a shared memory region are read from `shared_memory` and take no raw entry."""
    regions = [region_slice(parameters(tensor.parameters), f"input {quoted(tensor.name)}") for tensor in request.inputs]
    raw = request.raw_input_contents
    inline = sum(where is None for where in regions)
    if raw and len(raw) != inline:
        raise bad_request(
            f"{len(raw)} raw_input_contents for {inline} inputs not in shared memory; give one per input or none"
        )
    if raw:
        both = next((tensor.name for tensor in request.inputs if tensor.HasField("contents")), None)
        if both is not None:
            raise bad_request(
                f"input {quoted(both)} has contents while the request has raw_input_contents; "
                "give every input's data one way"
            )
    arrays: dict[str, np.ndarray] = {}
    next_raw = iter(raw)
    for tensor, where in zip(request.inputs, regions):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        check_input(model.inputs, arrays, name, datatype, shape)
        if where is not None:
            if tensor.HasField("contents"):
                raise bad_request(f"input {quoted(name)}: data in shared memory takes no contents")
            arrays[name] = shared_memory.read_input(where, name, datatype, shape)
        elif raw:
            arrays[name] = array_from_bytes(name, datatype, shape, next(next_raw))
        elif tensor.HasField("contents"):
            arrays[name] = _from_contents(name, datatype, shape, tensor.contents)
        else:
            raise bad_request(f"input {quoted(name)} has neither contents nor raw_input_contents")
    check_complete(model.inputs, arrays)
    outputs = {output.name: parameters(output.parameters) for output in request.outputs} or None
    return InferenceRequest(arrays, outputs, request.id or None, parameters(request.parameters))


def _from_contents(name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents) -> np.ndarray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise bad_request(f"input {quoted(name)}: {datatype} travels in raw_input_contents only")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise bad_request(f"input {quoted(name)}: {len(values)} elements, expected {count} for shape {quoted(shape)}")
    if datatype == "BYTES":
        array = np.array([value.decode("utf-8", "surrogateescape") for value in values], dtype=object)
    else:
        try:  # numbers out of a narrow type's range (300 as UINT8) raise
            array = np.array(values, dtype=DATATYPES[datatype])
        except OverflowError as error:
            raise bad_request(f"input {quoted(name)}: data is not {datatype}: {error}") from None
    return array.reshape(shape)


def encode_response(result: InferenceResult) -> pb.ModelInferResponse:
    """Every output in raw_output_contents, as tritonclient reads them; those written to shared
    memory keep an empty entry there, since clients find an output's contents by its position."""
    tensors, contents = [], []
    for name, array in result.outputs.items():
        datatype = datatype_of_array(array)
        tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape))
        if name in result.in_shared_memory:
            contents.append(b"")
        else:
            contents.append(tensor_bytes(array).tobytes())
    return pb.ModelInferResponse(
        model_name=result.model.name,
        model_version=result.model.version,
        id=result.request.id or "",
        outputs=tensors,
        raw_output_contents=contents,
    )
