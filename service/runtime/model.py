"""One served model version: its ONNX Runtime session, thread pool, optional batcher and metadata."""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from se_onnx.errors import SeOnnxError
from se_onnx.runtime.sessions import make_session, random_inputs, resolve_provider
from service.config import BACKEND, PLATFORM, TRITON_DATATYPES, ModelConfig, ServerSettings, TensorConfig, WarmupSample
from service.errors import ServiceError, bad_request
from service.runtime.batcher import DynamicBatcher, Feeds
from service.runtime.classification import read_labels
from service.runtime.recorder import ModelRecorder
from service.runtime.tensors import DATATYPES, TensorSpec, datatype_of_ort
from service.tracing import Phases

log = logging.getLogger("service.model")


# ORT's messages name the source file and C++ function that raised them; a client needs neither.
_SOURCE_LOCATION = re.compile(r"\S*/[\w./-]+\.\w+:\d+ (?:[\w:~<>]+\([^()]*\)(?: const)? )?")
_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+([\w.-]+)")


def ort_message(error: Exception) -> str:
    """ONNX Runtime's message on one line, without the server's source locations and paths."""
    message = _SOURCE_LOCATION.sub("", " ".join(str(error).split()))
    return _PATH.sub(r"\1", message)


class LoadCancelled(SeOnnxError):
    """A load stopped between two steps because an unload, the server's shutdown or its time budget asked."""


def _specs(metas, name: str, kind: str) -> dict[str, TensorSpec]:
    specs = {}
    for meta in metas:
        datatype = datatype_of_ort(meta.type)
        if datatype is None:
            raise SeOnnxError(f"{name}: {kind} {meta.name!r} has type {meta.type}, which the protocol cannot carry")
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in meta.shape)
        specs[meta.name] = TensorSpec(meta.name, datatype, shape)
    return specs


def _configured(
    specs: dict[str, TensorSpec], tensors: list[TensorConfig], batched: bool, name: str, kind: str
) -> tuple[dict[str, TensorSpec], dict[str, tuple[int, ...]]]:
    """The specs as the config declares them (its dims may narrow the model's dynamic ones) and the
    shape the model takes instead of each reshaped tensor's (batch dimension excluded); SeOnnxError
    where the config contradicts the model."""
    served, reshapes = dict(specs), {}
    for tensor in tensors:
        spec = specs.get(tensor.name)
        if spec is None:
            raise SeOnnxError(
                f"{name}: the config contradicts the model: it has no {kind} {tensor.name!r} (its {kind}s: "
                f"{', '.join(specs)})"
            )
        if TRITON_DATATYPES[tensor.data_type] != spec.datatype:
            raise SeOnnxError(
                f"{name}: the config contradicts the model: {kind} {tensor.name!r} is {tensor.data_type} in the "
                f"config, {spec.datatype} in the model"
            )
        model_dims = spec.shape[1:] if batched else spec.shape
        taken = tensor.reshape.shape if tensor.reshape is not None else tensor.dims
        if len(taken) != len(model_dims) or any(want not in (-1, got) for want, got in zip(model_dims, taken)):
            given = f"reshape {tensor.reshape.shape}" if tensor.reshape is not None else f"dims {tensor.dims}"
            batch = ", batch dimension excluded" if batched else ""
            raise SeOnnxError(
                f"{name}: the config contradicts the model: {kind} {tensor.name!r} has {given} in the config, "
                f"{list(model_dims)} in the model{batch}"
            )
        served[tensor.name] = TensorSpec(tensor.name, spec.datatype, ((-1,) if batched else ()) + tuple(tensor.dims))
        if tensor.reshape is not None:
            reshapes[tensor.name] = tuple(tensor.reshape.shape)
    return served, reshapes


def _reshaped(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], batched: bool) -> dict:
    """`arrays` with those named in `shapes` reshaped to it, each keeping its batch dimension."""
    if not shapes:
        return arrays
    return {
        name: array.reshape(array.shape[:1] + shapes[name] if batched else shapes[name]) if name in shapes else array
        for name, array in arrays.items()
    }


class ServedModel:
    """Built off the event loop (the constructor opens the session and warms it up); `start`
    then attaches the batcher on the loop. By default `instances` threads share one session
    (ONNX Runtime's `run` is thread-safe), so the weights are in memory once;
    `session_per_instance` gives each thread its own session (benchmarks/bench_service.py
    compares the two)."""

    def __init__(
        self,
        name: str,
        version: str,
        path: Path,
        config: ModelConfig,
        server: ServerSettings,
        recorder: ModelRecorder,
        cancelled: threading.Event | None = None,
    ):
        # Checked between sessions and warm-up runs, so that a load nobody waits for any more ends soon.
        self._cancelled = cancelled or threading.Event()
        self.name, self.version, self.path, self.config = name, version, path, config
        self.labels = read_labels(path)  # for the classification extension
        requested = config.provider or server.provider
        self.device_id = device_id = server.device_id if config.device_id is None else config.device_id
        provider = resolve_provider(requested, allow_cpu_fallback=server.allow_cpu_fallback, device_id=device_id)
        if requested not in ("auto", provider):
            log.warning("provider fell back", extra={"model": name, "requested": requested, "provider": provider})
        self.instances = config.instance_count or server.workers_per_model
        sessions = []
        for _ in range(self.instances if config.session_per_instance else 1):
            self._check_cancelled()
            sessions.append(
                make_session(
                    path,
                    provider,
                    intra_op_threads=server.intra_op_threads,
                    inter_op_threads=server.inter_op_threads,
                    device_id=device_id,
                    gpu_mem_limit=config.gpu_mem_limit,
                )
            )
        self.session = sessions[0]
        # With a session per instance, each run borrows one; there are as many as threads, so it never waits.
        self._pool: queue.SimpleQueue | None = None
        if config.session_per_instance:
            self._pool = queue.SimpleQueue()
            for session in sessions:
                self._pool.put(session)
        self.providers = self.session.get_providers()
        self.inputs = _specs(self.session.get_inputs(), name, "input")
        self.outputs = _specs(self.session.get_outputs(), name, "output")
        self.recorder = recorder
        if config.max_batch_size:
            unbatched = [
                s.name for s in (*self.inputs.values(), *self.outputs.values()) if not s.shape or s.shape[0] != -1
            ]
            if unbatched:
                raise SeOnnxError(
                    f"{name}: max_batch_size needs a dynamic first dimension on every input and output; "
                    f"{unbatched[0]!r} has none"
                )
        batched = config.max_batch_size > 0
        # The config's view of the tensors: what requests send and get; the reshapes turn it into the model's and back.
        self.inputs, self._input_reshapes = _configured(self.inputs, config.input, batched, name, "input")
        self.outputs, self._output_reshapes = _configured(self.outputs, config.output, batched, name, "output")
        # Outputs go back from the model's shape to the config's dims, batch dimension excluded.
        self._output_dims = {name: tuple(self.outputs[name].shape[batched:]) for name in self._output_reshapes}
        for session in sessions:
            self._warm_up(session)
        self.executor = ThreadPoolExecutor(self.instances, thread_name_prefix=f"ort-{name}")
        self.batcher: DynamicBatcher | None = None
        self.inflight = 0
        self._idle = asyncio.Event()  # set while no request is in flight; binds to the loop on first use
        self._idle.set()
        log.info(
            "loaded model",
            extra={"model": name, "version": version, "path": str(path), "providers": self.providers,
                   "instances": self.instances, "dynamic_batching": config.dynamic_batching is not None},
        )  # fmt: skip

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            log.info("load stopped", extra={"model": self.name, "version": self.version})
            raise LoadCancelled(f"{self.name}: the load of version {self.version} was stopped")

    def _warm_up(self, session) -> None:
        try:
            for feeds in self._warm_up_feeds(session):
                self._check_cancelled()
                session.run(None, feeds)
        except LoadCancelled:
            raise
        except Exception as error:  # the inputs may be invalid for the model; warm-up is best effort
            log.warning("warm-up run failed", extra={"model": self.name, "error": " ".join(str(error).split())})

    def _warm_up_feeds(self, session) -> Iterator[dict[str, np.ndarray]]:
        """The inputs of each warm-up run: the config's samples, else `warmup` seeded runs."""
        if not self.config.model_warmup:
            for _ in range(self.config.warmup):
                yield random_inputs(session, batch=1)
            return
        for sample in self.config.model_warmup:
            feeds = _reshaped(self._sample(sample), self._input_reshapes, self.config.max_batch_size > 0)
            for _ in range(sample.count):
                yield feeds

    def _sample(self, sample: WarmupSample) -> dict[str, np.ndarray]:
        """A warm-up sample's inputs as a request would send them: zeros, or seeded random data."""
        rng = np.random.default_rng(0)
        rows = (sample.batch_size,) if self.config.max_batch_size else ()
        feeds = {}
        for name, data in sample.inputs.items():
            shape = rows + tuple(data.dims)
            dtype = np.dtype(DATATYPES[TRITON_DATATYPES[data.data_type]])
            if dtype == np.object_:
                feeds[name] = np.full(shape, b"" if data.zero_data else b"0", dtype=object)
            elif data.zero_data:
                feeds[name] = np.zeros(shape, dtype)
            elif dtype.kind == "f":
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[name] = rng.integers(0, 2 if dtype == np.bool_ else 10, shape).astype(dtype)
        return feeds

    def start(self) -> None:
        """Attach the event-loop parts; called on the loop once `__init__` has finished in a thread."""
        batching = self.config.dynamic_batching
        if self.config.max_batch_size and batching is not None:
            self.batcher = DynamicBatcher(
                self._run_all,
                self.executor,
                max_batch_size=self.config.max_batch_size,
                max_queue_delay_us=batching.max_queue_delay_us,
                max_queue_size=batching.max_queue_size,
                preferred_batch_size=batching.preferred_batch_size,
                instances=self.instances,
                observe_queue=self.recorder.queued,
            )

    def metadata(self, versions: list[str]) -> dict:
        def tensors(specs):
            return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs.values()]

        batching = self.config.dynamic_batching
        return {
            "name": self.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
            "parameters": {
                "providers": self.providers,
                "instance_count": self.instances,
                "session_per_instance": self.config.session_per_instance,
                "max_batch_size": self.config.max_batch_size,
                "dynamic_batching": batching.model_dump() if batching and self.config.max_batch_size else None,
            },
        }

    def triton_config(self) -> dict:
        """The model's configuration in Triton's JSON form (GET …/config), for clients that ask for it."""
        batched = self.config.max_batch_size > 0

        def tensors(specs, reshapes):
            return [
                {"name": s.name, "data_type": f"TYPE_{'STRING' if s.datatype == 'BYTES' else s.datatype}",
                 "dims": list(s.shape[1:] if batched else s.shape),
                 **({"reshape": {"shape": list(reshapes[s.name])}} if s.name in reshapes else {})}
                for s in specs.values()
            ]  # fmt: skip

        gpu = any(provider != "CPUExecutionProvider" for provider in self.providers)
        group = {
            "count": self.instances,
            "kind": "KIND_GPU" if gpu else "KIND_CPU",
            **({"gpus": [self.device_id]} if gpu else {}),
        }
        config = {
            "name": self.name,
            "platform": PLATFORM,
            "backend": BACKEND,
            "version_policy": self.config.version_policy.model_dump(exclude_none=True),
            "max_batch_size": self.config.max_batch_size,
            "input": tensors(self.inputs, self._input_reshapes),
            "output": tensors(self.outputs, self._output_reshapes),
            "instance_group": [group],
        }
        if self.config.default_model_filename:
            config["default_model_filename"] = self.config.default_model_filename
        if self.batcher is not None and (batching := self.config.dynamic_batching) is not None:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": batching.max_queue_delay_us,
                "preferred_batch_size": batching.preferred_batch_size,
                "default_queue_policy": {"max_queue_size": batching.max_queue_size},
            }
        if "TensorrtExecutionProvider" in self.providers:
            config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt"}]}}
        if self.config.model_warmup:
            config["model_warmup"] = [
                {"name": sample.name, "batch_size": sample.batch_size, "count": sample.count,
                 "inputs": {name: {"data_type": data.data_type, "dims": data.dims,
                                   "zero_data" if data.zero_data else "random_data": True}
                            for name, data in sample.inputs.items()}}
                for sample in self.config.model_warmup
            ]  # fmt: skip
        if self.config.parameters:
            config["parameters"] = {key: {"string_value": value} for key, value in self.config.parameters.items()}
        return config

    def _run(
        self, feeds: Feeds, names: list[str] | None, enqueued: float | None = None, phases: Phases | None = None
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        if enqueued is not None:
            self.recorder.queued(started - enqueued)
        if phases is not None:
            phases.started = time.time_ns()
        session = self._pool.get() if self._pool is not None else self.session
        batched = self.config.max_batch_size > 0
        try:
            arrays = session.run(names, _reshaped(dict(feeds), self._input_reshapes, batched))
        except (InvalidArgument, Fail) as error:
            # A kernel refusing the request's data (a shape the metadata allows but a Reshape
            # cannot take) is the client's to fix; ORT raises Fail or InvalidArgument for it.
            raise bad_request(f"the model cannot run on this input: {ort_message(error)}") from None
        except Exception as error:  # ORT's own failure types; the message is what the caller needs
            raise ServiceError(500, f"inference failed: {ort_message(error)}") from None
        finally:
            if self._pool is not None:
                self._pool.put(session)
            if phases is not None:
                phases.ended = time.time_ns()
        seconds = time.perf_counter() - started
        first = next(iter(feeds.values()), None)
        rows = first.shape[0] if first is not None and first.ndim else 1
        if phases is not None:
            phases.rows = rows
        self.recorder.executed(rows, seconds)
        return _reshaped(dict(zip(names or self.outputs, arrays)), self._output_dims, batched)

    def _run_all(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return self._run(feeds, None)

    def infer(
        self, feeds: Feeds, names: list[str], phases: Phases | None = None
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """A future of the outputs named (or, batched, of every output), computed off the event
        loop. A future, not a coroutine, so that awaiting it with a timeout costs no extra task.
        `phases`, when tracing, gets the times the request started and stopped running."""
        if self.batcher is not None:
            return self.batcher.submit(feeds, phases)
        if self.config.max_batch_size:
            rows = next(iter(feeds.values())).shape[0]
            if rows > self.config.max_batch_size:
                raise bad_request(
                    f"batch of {rows} rows is larger than the model's max_batch_size {self.config.max_batch_size}"
                )
        return asyncio.get_running_loop().run_in_executor(
            self.executor, self._run, feeds, names, time.perf_counter(), phases
        )

    def __enter__(self) -> ServedModel:
        self.inflight += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._idle.set()

    async def close(self) -> None:
        """Wait for in-flight requests, then stop the batcher and the threads."""
        await self._idle.wait()
        if self.batcher is not None:
            await self.batcher.stop()
        await asyncio.to_thread(self.executor.shutdown, True)
        log.info("unloaded model", extra={"model": self.name, "version": self.version})
