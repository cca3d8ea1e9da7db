"""The data plane that HTTP and gRPC share: models, readiness, inference with its timeout and accounting,
statistics, repository.

Front ends only decode and encode: they hand `DataPlane.infer` a function that turns their
request into an `InferenceRequest` against the model it found, and one that turns the
`InferenceResult` into their response. Everything between (lookup, readiness, in-flight
accounting, the timeout, the batcher, metrics and statistics) happens here, once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service import SERVER_NAME, __version__
from service.config import ServerSettings
from service.errors import ServiceError, bad_request, quoted
from service.runtime.budget import ByteBudget
from service.runtime.classification import classify, requested_classes
from service.runtime.metrics import TritonCollector
from service.runtime.model import ServedModel
from service.runtime.recorder import Recorder
from service.runtime.repository import ModelRepository
from service.runtime.shm import RegionSlice, SharedMemoryRegistry, region_slice
from service.runtime.tensors import tensor_bytes
from service.tracing import NoTracing, Tracing

log = logging.getLogger("service.dataplane")

T = TypeVar("T")
Parameters = dict[str, Any]

# Triton's extensions that this server offers, as server metadata lists them.
# CUDA shared memory is not among them: no GPU check exists for it.
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics", "system_shared_memory"]


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The key in `x-api-key` or `authorization: Bearer <key>`; `headers` looks names up in lower case
    (HTTP headers, gRPC metadata)."""
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given


@dataclass
class InferenceRequest:
    """One inference request as a front end decoded it, its inputs already checked against the model."""

    inputs: dict[str, np.ndarray]
    # Requested outputs and each one's parameters, in the order asked; None: every output.
    outputs: dict[str, Parameters] | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass
class InferenceResult:
    """What a front end encodes: the model that ran, the request, and its outputs in the order requested."""

    model: ServedModel
    request: InferenceRequest
    outputs: dict[str, np.ndarray]
    # Outputs already written to shared memory, as their parameters asked: their responses carry no data.
    in_shared_memory: dict[str, RegionSlice] = field(default_factory=dict)


class DataPlane:
    """One per server. `start` loads the repository in the background (the server is live at
    once, ready when loading ends); `stop_accepting` turns readiness off and tells streaming
    front ends to finish; `close` unloads every model once its requests are done."""

    def __init__(self, config: ServerSettings):
        self.config = config
        self.recorder = Recorder()
        self.repository = ModelRepository(config, self.recorder)
        self.recorder.registry.register(TritonCollector(self._triton_series))
        self.shared_memory = SharedMemoryRegistry(config.max_request_size)
        # Bytes of requests held by both front ends together (--max-inflight-bytes).
        self.request_bytes = ByteBudget(config.max_inflight_bytes)
        self.ready = False
        # Set when start-up loading has ended, whether or not it worked (`ready` says which).
        self.loading_done = asyncio.Event()
        # Set once the server stops taking requests (SIGTERM); streams end after their current requests.
        self.stopping = asyncio.Event()
        self._loading: asyncio.Task | None = None
        # --trace: spans of inference requests; off, a stand-in that does nothing and imports nothing.
        self.tracing: Tracing | NoTracing = Tracing.start(__version__) if config.trace else NoTracing()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the repository in the background; call on the event loop."""

        async def load() -> None:
            try:
                await self.repository.load_all()
            except Exception:  # an unreadable repository: stay live but never ready, and say why
                log.exception("cannot load the model repository", extra={"path": str(self.config.model_repository)})
                return
            finally:
                self.loading_done.set()
            if not self.stopping.is_set():
                self.ready = True
                log.info("server ready", extra={"models": self.repository.index()})

        self._loading = asyncio.get_running_loop().create_task(load())

    def stop_accepting(self) -> None:
        """Report not ready at once, so load balancers stop sending, and let streams wind down."""
        self.ready = False
        self.stopping.set()
        self.repository.stop_loads()  # a model warming up must not hold the shutdown up

    async def close(self) -> None:
        self.stop_accepting()
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        await self.repository.close()
        self.shared_memory.unregister()
        log.info("server stopped")

    def _triton_series(self) -> list[tuple[dict, int]]:
        """Each loaded version's statistics and requests in flight, for Triton's nv_* series."""
        return [
            (model.recorder.stats.to_dict(model.name, model.version), model.inflight)
            for model in self.repository.loaded()
        ]

    # -- health and metadata ------------------------------------------------------------------

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The ready model version (the newest when `version` is None): 404 unknown, 503 not ready."""
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.repository.get(name, version)
        except ServiceError:
            return False
        return True

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        return self.model(name, version).metadata(self.repository.versions(name))

    def model_config(self, name: str, version: str | None = None) -> dict:
        return self.model(name, version).triton_config()

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict]:
        """Triton's statistics of one version, of every loaded version of `name`, or of every model."""
        if name is None:
            models = self.repository.loaded()
        elif version is not None:
            models = [self.model(name, version)]
        else:
            self.model(name)  # 404 / 503 as for any other request
            models = [self.model(name, v) for v in self.repository.versions(name)]
        return [model.recorder.stats.to_dict(model.name, model.version) for model in models]

    # -- inference ----------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[ServedModel], InferenceRequest],
        encode: Callable[[InferenceResult], T],
        decode_in_thread: bool = False,
    ) -> T:
        """Run one request on model `name` (`version`, or the newest): `decode(model)` gives the
        request, `encode(result)` the front end's response, which this returns. Raises
        ServiceError (the front end maps its status); every outcome is recorded.

        `decode_in_thread`: decode in a worker thread, for requests whose decoding takes long
        enough (a large JSON body) that the event loop would stall on it."""
        started = time.perf_counter()
        model = self.model(name, version)
        tracing = self.tracing
        try:
            with model:  # in flight: an unload waits for it
                tracing.model(model.name, model.version)
                with tracing.span("decode"):
                    request = await asyncio.to_thread(decode, model) if decode_in_thread else decode(model)
                if tracing.enabled:
                    tracing.rows(_rows(model, request))
                names = _requested_outputs(model, request)
                regions = self._output_regions(request)
                timeout = _timeout(self.config.request_timeout, request.parameters.get("timeout"))
                phases = tracing.phases()
                try:
                    computed = await asyncio.wait_for(model.infer(request.inputs, names, phases), timeout)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    raise ServiceError(503, f"request timed out after {timeout:g} s") from None
                finally:
                    tracing.record(phases)
                outputs = _classified(model, request, {name: computed[name] for name in names})
                for name, where in regions.items():
                    array = outputs[name]
                    self.shared_memory.write(where, tensor_bytes(array), f"output {quoted(name)}")
            with tracing.span("encode"):
                response = encode(InferenceResult(model, request, outputs, regions))
        except asyncio.CancelledError:
            # The client went away (its front end cancelled the call): a request still queued
            # for a batch or an instance is never computed (the batcher and the executor skip
            # cancelled work). It counts as failed, and as gone.
            model.recorder.request(False, time.perf_counter() - started)
            model.recorder.client_gone()
            raise
        except BaseException:
            model.recorder.request(False, time.perf_counter() - started)
            raise
        model.recorder.request(True, time.perf_counter() - started)
        return response

    def _output_regions(self, request: InferenceRequest) -> dict[str, RegionSlice]:
        """The outputs to write to shared memory and where, checked before the model runs."""
        regions = {}
        for name, parameters in (request.outputs or {}).items():
            where = region_slice(parameters, f"output {quoted(name)}")
            if where is not None:
                self.shared_memory.check(where, f"output {quoted(name)}")
                regions[name] = where
        return regions

    # -- repository ---------------------------------------------------------------------------

    def authorize(self, key: str | None) -> None:
        """403 while no key is configured (the repository API is off); 401 for a missing or wrong key."""
        expected = self.config.api_key
        if not expected:
            raise ServiceError(
                403,
                "the repository API is disabled; start the server with an API key "
                "(SE_ONNX_API_KEY, --api-key-file or --api-key) to enable it",
            )
        if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
            raise ServiceError(401, "missing or wrong API key (send it as X-API-Key or Authorization: Bearer)")

    def authorize_scoped(self, key: str | None) -> None:
        """Under --api-key-scope all, inference, metadata, statistics and metrics need the key
        too; health checks never do, so that probes need no secret."""
        if self.config.api_key and self.config.api_key_scope == "all":
            self.authorize(key)

    def authorize_shared_memory(self, key: str | None) -> None:
        """Registering shared memory opens files on the server: with an API key set, it takes the key."""
        if self.config.api_key:
            self.authorize(key)

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.repository.index(ready_only)

    async def load(self, name: str, parameters: Parameters | None = None) -> None:
        """Load or reload `name` from the repository; the `config` parameter (config.json text)
        replaces its config for this load. Model files sent with the request (`file:` parameters)
        are refused: models come from the repository only."""
        given = parameters or {}
        if any(key.startswith("file:") for key in given):
            raise bad_request(
                "model files sent with the load request (file: parameters) are not supported; "
                "put the model in the repository"
            )
        override = given.get("config")
        if override is not None and not isinstance(override, str):
            raise bad_request("parameter 'config' must be a string holding the model's JSON config")
        await self.repository.load(name, override)

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)


def _requested_outputs(model: ServedModel, request: InferenceRequest) -> list[str]:
    if request.outputs is None:
        return list(model.outputs)
    for output, parameters in request.outputs.items():
        if output not in model.outputs:
            raise bad_request(f"unknown output {quoted(output)}; the model gives {', '.join(model.outputs)}")
        requested_classes(output, parameters)
    return list(request.outputs)


def _rows(model: ServedModel, request: InferenceRequest) -> int | None:
    """The rows of a request to a batching model (its inputs' first dimension); None for other models."""
    first = next(iter(request.inputs.values()), None)
    return first.shape[0] if model.config.max_batch_size and first is not None and first.ndim else None


def _classified(model: ServedModel, request: InferenceRequest, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs with those asked for as classifications replaced by their top k classes."""
    for name, parameters in (request.outputs or {}).items():
        k = requested_classes(name, parameters)
        if k is not None:
            outputs[name] = classify(name, outputs[name], k, model.labels)
    return outputs


def _timeout(server_seconds: float, request_microseconds: object) -> float | None:
    """The server's --request-timeout (0: none), shortened by the request's own `timeout` (µs)."""
    limits = [server_seconds] if server_seconds > 0 else []
    if (
        isinstance(request_microseconds, int)
        and not isinstance(request_microseconds, bool)
        and request_microseconds > 0
    ):
        limits.append(request_microseconds / 1e6)
    return min(limits) if limits else None
