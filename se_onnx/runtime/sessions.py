"""ONNX Runtime sessions on a named provider, and seeded inputs that fit a model's signature."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from se_onnx.errors import SeOnnxError

if TYPE_CHECKING:
    import onnx_ir as ir
    import onnxruntime as ort

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(string)": np.object_,
}


def resolve_provider(provider: str, *, allow_cpu_fallback: bool = False, device_id: int = 0) -> str:
    """The concrete provider for 'auto', 'cpu', 'cuda' or 'tensorrt', checked by opening a session.

    'auto' takes CUDA where it works, else the CPU. A named GPU provider that is missing or not
    usable (no driver, no device) is an error unless `allow_cpu_fallback`, so a GPU deployment
    never runs on the CPU without someone having asked for it.
    """
    candidates = ["cuda", "cpu"] if provider == "auto" else [provider]
    if allow_cpu_fallback and candidates[-1] != "cpu":
        candidates.append("cpu")
    for index, candidate in enumerate(candidates):
        try:
            if candidate != "cpu":
                make_session(_probe_model(), candidate, device_id=device_id)
            else:
                ort_providers(candidate)
        except SeOnnxError:
            if index == len(candidates) - 1:
                raise
            continue
        return candidate
    raise AssertionError("unreachable: the last candidate either returns or raises")


def _probe_model() -> bytes:
    from onnx import TensorProto, helper  # only needed to probe a GPU provider

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def numpy_dtype(ort_type: str) -> type | None:
    """The numpy type of an ONNX Runtime tensor type ('tensor(float)' → float32); None for the
    types numpy has no plain type for (bfloat16, float8, maps, sequences)."""
    return _ORT_TYPES.get(ort_type)


def ort_providers(
    provider: str, *, device_id: int = 0, gpu_mem_limit: int | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's provider list for 'cpu', 'cuda' or 'tensorrt', refusing an unavailable one.

    A GPU provider is followed by the CPU provider, which runs the ops it lacks; the request
    itself is never silently moved to the CPU. GPU providers get `device_id` (and CUDA
    `gpu_mem_limit` in bytes); TensorRT is followed by CUDA where it is available.
    """
    try:
        name = PROVIDERS[provider]
    except KeyError:
        raise SeOnnxError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}") from None
    import onnxruntime as ort  # imported when first needed: commands that run no model start faster

    available = ort.get_available_providers()
    if name not in available:
        raise SeOnnxError(
            f"the {provider} provider ({name}) is not available in this ONNX Runtime build; "
            f"available: {', '.join(available)}"
        )
    if name == PROVIDERS["cpu"]:
        return [name]
    device = {"device_id": str(device_id)}
    cuda_options = {**device, **({"gpu_mem_limit": str(gpu_mem_limit)} if gpu_mem_limit else {})}
    chain: list[str | tuple[str, dict[str, str]]] = []
    if name == PROVIDERS["tensorrt"]:
        chain.append((name, device))
        if PROVIDERS["cuda"] in available:
            chain.append((PROVIDERS["cuda"], cuda_options))
    else:
        chain.append((name, cuda_options))
    return [*chain, PROVIDERS["cpu"]]


def make_session(
    model: str | os.PathLike | bytes,
    provider: str = "cpu",
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    device_id: int = 0,
    gpu_mem_limit: int | None = None,
    enable_profiling: bool = False,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An InferenceSession on `provider`, with a clear error when ONNX Runtime rejects the model
    or quietly drops the requested GPU provider (a driver or library it needs is missing).

    `spinning=False` stops the intra-op threads from busy-waiting after a run; sessions timed in
    turn need it, or one session's spinning threads slow down the next session's run.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.enable_profiling = enable_profiling
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = os.fspath(model) if not isinstance(model, bytes) else model
    label = "model" if isinstance(model, bytes) else os.fspath(model)
    providers = ort_providers(provider, device_id=device_id, gpu_mem_limit=gpu_mem_limit)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as error:  # ORT raises its own exception types for unloadable models
        message = " ".join(str(error).split())
        raise SeOnnxError(f"{label}: ONNX Runtime cannot load it: {message}") from None
    wanted = PROVIDERS[provider]
    if wanted not in session.get_providers():
        raise SeOnnxError(
            f"{label}: the {provider} provider ({wanted}) is installed but not usable here "
            f"(ONNX Runtime fell back to {', '.join(session.get_providers())}); check the driver and device"
        )
    return session


def random_inputs(
    session: ort.InferenceSession, *, batch: int = 1, seed: int = 0, dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Seeded inputs for every model input: symbolic dims take `dims[name]`, else `batch` for the
    first axis and 1 elsewhere. Floats are standard normal; integers small and non-negative."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds: dict[str, np.ndarray] = {}
    for meta in session.get_inputs():
        shape = [
            dim if isinstance(dim, int) and dim >= 0 else dims.get(dim, batch if axis == 0 else 1)
            for axis, dim in enumerate(meta.shape)
        ]
        dtype = numpy_dtype(meta.type)
        if dtype is None:
            raise SeOnnxError(f"input {meta.name!r} has type {meta.type}, which se-onnx cannot generate")
        if np.issubdtype(dtype, np.floating):
            feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[meta.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif dtype is np.object_:
            feeds[meta.name] = np.array(rng.integers(0, 10, shape).astype(str), dtype=object)
        else:
            feeds[meta.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def model_bytes(model: ir.Model) -> bytes:
    """The serialized model with every weight inline, for a session made from bytes: such a
    session has no directory to find external data files in."""
    import onnx_ir as ir  # here, not at the top: the server imports this module and needs no onnx-ir

    from se_onnx.ir.model_io import uses_external_data

    if uses_external_data(model):
        model = ir.external_data.load_to_model(model.clone())
    return ir.to_proto(model).SerializeToString()
