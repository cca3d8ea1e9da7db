"""The gRPC front end: Triton's inference.GRPCInferenceService on grpc.aio, with gRPC health and reflection.

It runs on the event loop that serves HTTP and calls the same data plane, so both front ends
share models, batchers, metrics and statistics. Servicer methods only decode and encode.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from se_onnx.errors import SeOnnxError
from service.config import ServerSettings
from service.dataplane import DataPlane, api_key_from
from service.errors import ServiceError, quoted
from service.grpc.codec import decode_request, encode_response, parameters
from service.runtime.budget import OverBudget
from service.tracing import NoTracing, Tracing

log = logging.getLogger("service.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# The HTTP status of a ServiceError → the gRPC code that says the same.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Longest status message sent, in bytes: grpc-message travels in the trailers, and a client refuses trailers
# past its metadata limit (8 KiB by default), which would turn any code into RESOURCE_EXHAUSTED.
_MESSAGE_LIMIT = 1024


def _status(error: ServiceError) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message of a refusal."""
    if isinstance(error, OverBudget):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        code = _CODES.get(error.status, grpc.StatusCode.INTERNAL)
    return code, _clipped(error.message)


def _clipped(message: str) -> str:
    """`message` cut to _MESSAGE_LIMIT bytes of UTF-8 (grpc-message percent-encodes each byte
    outside ASCII into three characters, so bytes are what count)."""
    encoded = message.encode()
    if len(encoded) <= _MESSAGE_LIMIT:
        return message
    return encoded[: _MESSAGE_LIMIT - 3].decode(errors="ignore") + "…"


def _unary(method):
    """Turn a ServiceError into its status code and message; anything unexpected into INTERNAL, logged."""

    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except ServiceError as error:
            await context.abort(*_status(error))
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            log.exception("unhandled error", extra={"method": method.__name__})
            await context.abort(
                grpc.StatusCode.INTERNAL, _clipped(f"internal server error: {type(error).__name__}: {error}")
            )

    return call


# OpenTelemetry's RPC conventions: the attribute of the status code, and the codes that are the server's fault.
_GRPC_STATUS = "rpc.grpc.status_code"
_SERVER_FAULTS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


def _span(tracing: Tracing | NoTracing, rpc: str, context: grpc.aio.ServicerContext):
    """The server span of one inference request of RPC `rpc`, continuing the trace of the call's
    `traceparent` metadata."""
    metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()} if tracing.enabled else {}
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": rpc}
    return tracing.server(f"{SERVICE_NAME}/{rpc}", metadata, attributes)


def _failed(span, error: Exception) -> str:
    """End `span` with the gRPC code of `error`; the message a client gets for it."""
    if isinstance(error, ServiceError):
        code, message = _status(error)
    else:
        code, message = grpc.StatusCode.INTERNAL, _clipped(f"internal server error: {type(error).__name__}: {error}")
    span.outcome(_GRPC_STATUS, code.value[0], code.name, message, fault=code in _SERVER_FAULTS)
    return message


def _traced(method):
    """Under --trace, a unary inference RPC inside its server span, ended with the call's code."""

    @functools.wraps(method)
    async def call(self, request, context):
        tracing = self._plane.tracing
        if not tracing.enabled:
            return await method(self, request, context)
        with _span(tracing, method.__name__, context) as span:
            try:
                response = await method(self, request, context)
            except Exception as error:
                _failed(span, error)
                raise
            span.outcome(_GRPC_STATUS, grpc.StatusCode.OK.value[0])
            return response

    return call


def _not_offered(message: str):
    async def refuse(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return refuse


# The RPCs that take the data plane's key checks, as their HTTP routes do; the others (liveness,
# readiness, gRPC health, reflection, the RPCs not offered) take no key.
_SCOPED = (
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "ModelInfer",
    "ModelStreamInfer",
)
_REPOSITORY = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
_SHARED_MEMORY = ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister")


class Authorization(grpc.aio.ServerInterceptor):
    """The API key check of every RPC that needs one, before its handler runs, as HTTP's
    dependencies do it: the key comes from `x-api-key` or `authorization: Bearer <key>` metadata.
    A refused call ends UNAUTHENTICATED (missing or wrong key) or PERMISSION_DENIED (no key
    configured, so the repository API is off)."""

    def __init__(self, plane: DataPlane):
        checks = {
            _SCOPED: plane.authorize_scoped,
            _REPOSITORY: plane.authorize,
            _SHARED_MEMORY: plane.authorize_shared_memory,
        }
        self._checks = {f"/{SERVICE_NAME}/{rpc}": check for rpcs, check in checks.items() for rpc in rpcs}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        check = self._checks.get(details.method)
        if check is None or handler is None:
            return handler
        try:
            check(api_key_from({key.lower(): value for key, value in details.invocation_metadata or ()}))
        except ServiceError as error:
            return _refusal(handler, _CODES[error.status], error.message)
        return handler


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with `code` and `message`
    instead of running the RPC."""

    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    return kind[handler.request_streaming, handler.response_streaming](refuse)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self._plane = plane

    @_unary
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_unary
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._plane.ready)

    @_unary
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version or None))

    @_unary
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self._plane.server_metadata())

    @_unary
    async def ModelMetadata(self, request, context):
        metadata = self._plane.model_metadata(request.name, request.version or None)
        metadata.pop("parameters")  # se-onnx's own fields; Triton's message has no place for them
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    @_unary
    async def ModelConfig(self, request, context):
        config = self._plane.model_config(request.name, request.version or None)
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    @_unary
    async def ModelStatistics(self, request, context):
        stats = self._plane.statistics(request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_unary
    @_traced
    async def ModelInfer(self, request, context):
        # The message is held until it is answered: its bytes count against --max-inflight-bytes.
        held = request.ByteSize()
        self._plane.request_bytes.take(held)
        try:
            decode = functools.partial(decode_request, request, self._plane.shared_memory)
            return await self._plane.infer(request.model_name, request.model_version or None, decode, encode_response)
        finally:
            self._plane.request_bytes.give(held)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Requests are answered as they finish, each reply carrying its request's id; a failed
        request is its reply's error_message and the stream goes on. When the server stops,
        no further request is read and those already read are answered. With
        --grpc-stream-inflight requests unanswered, no further one is read until one is: the
        client's next messages wait in its HTTP/2 window, and flow control holds it back."""
        limit = self._plane.config.grpc_stream_inflight
        writing = asyncio.Lock()
        answering: set[asyncio.Task] = set()
        stopping = asyncio.ensure_future(self._plane.stopping.wait())
        read: asyncio.Future | None = None
        try:
            while True:
                if len(answering) >= limit:
                    await asyncio.wait((*answering, stopping), return_when=asyncio.FIRST_COMPLETED)
                    if stopping.done():
                        break
                    continue
                read = asyncio.ensure_future(context.read())
                await asyncio.wait((read, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # stopping: no further request is read
                    read.cancel()
                    break
                request = read.result()
                if request is grpc.aio.EOF:
                    break
                task = asyncio.ensure_future(self._answer(request, context, writing))
                answering.add(task)
                task.add_done_callback(answering.discard)
            await asyncio.gather(*answering)
        finally:
            # A cancelled stream (the client went away) lands here too: its queued requests
            # are cancelled rather than computed for nobody.
            pending = [*answering, stopping] + ([read] if read is not None else [])
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _answer(self, request: pb.ModelInferRequest, context, writing: asyncio.Lock) -> None:
        # The request is held until its reply is written (a client that reads no replies keeps
        # it), so its bytes count against --max-inflight-bytes until then.
        held = 0
        try:
            with _span(self._plane.tracing, "ModelStreamInfer", context) as span:
                try:
                    self._plane.request_bytes.take(size := request.ByteSize())
                    held = size
                    decode = functools.partial(decode_request, request, self._plane.shared_memory)
                    response = await self._plane.infer(
                        request.model_name, request.model_version or None, decode, encode_response
                    )
                    reply = pb.ModelStreamInferResponse(infer_response=response)
                    span.outcome(_GRPC_STATUS, grpc.StatusCode.OK.value[0])
                except Exception as error:
                    if not isinstance(error, ServiceError):
                        log.exception("unhandled error", extra={"method": "ModelStreamInfer"})
                    message = _failed(span, error)  # the stream goes on: the code is the span's alone
                    echo = pb.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id
                    )
                    reply = pb.ModelStreamInferResponse(error_message=message, infer_response=echo)
            try:
                async with writing:  # one message at a time on the stream
                    await context.write(reply)
            except Exception as error:  # the stream ended under us: nobody is left to tell
                log.info(
                    "stream reply not delivered",
                    extra={"id": quoted(request.id), "error": f"{type(error).__name__}: {error}"},
                )
        finally:
            self._plane.request_bytes.give(held)

    @_unary
    async def RepositoryIndex(self, request, context):
        rows = self._plane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @_unary
    async def RepositoryModelLoad(self, request, context):
        await self._plane.load(request.model_name, parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request, context):
        await self._plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_unary
    async def SystemSharedMemoryStatus(self, request, context):
        regions = self._plane.shared_memory.status(request.name or None)
        return pb.SystemSharedMemoryStatusResponse(
            regions={region["name"]: pb.SystemSharedMemoryStatusResponse.RegionStatus(**region) for region in regions}
        )

    @_unary
    async def SystemSharedMemoryRegister(self, request, context):
        self._plane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_unary
    async def SystemSharedMemoryUnregister(self, request, context):
        self._plane.shared_memory.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    _CUDA_SHM = "CUDA shared memory is not supported; send tensors in raw_input_contents"
    CudaSharedMemoryStatus = _not_offered(_CUDA_SHM)
    CudaSharedMemoryRegister = _not_offered(_CUDA_SHM)
    CudaSharedMemoryUnregister = _not_offered(_CUDA_SHM)
    TraceSetting = _not_offered(
        "trace settings cannot be changed at run time; start the server with --trace and OpenTelemetry's "
        "OTEL_* environment variables"
    )
    LogSettings = _not_offered("log settings cannot be changed at run time; start the server with --log-level")


def _tls_credentials(config: ServerSettings) -> grpc.ServerCredentials | None:
    """The HTTP front end's certificate and key (and client-certificate CA) for gRPC too; None without TLS."""
    if config.ssl_certfile is None:
        return None
    chain = config.ssl_certfile.read_bytes()
    key = config.ssl_keyfile.read_bytes() if config.ssl_keyfile else chain  # a PEM may hold both
    authority = config.ssl_ca_certs.read_bytes() if config.ssl_ca_certs else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=authority, require_client_auth=authority is not None
    )


class GrpcServer:
    """The gRPC server of one DataPlane: `start` binds and serves; it drains on its own once the
    plane stops accepting (SIGTERM), and `stop` waits for that."""

    def __init__(self, plane: DataPlane, config: ServerSettings):
        self._plane = plane
        self._config = config
        self._health = health_aio.HealthServicer()
        self._watching: asyncio.Task | None = None

    @property
    def address(self) -> str:
        host = self._config.host
        return f"[{host}]:{self._config.grpc_port}" if ":" in host else f"{host}:{self._config.grpc_port}"

    async def start(self) -> None:
        # The HTTP size limit applies to each message; past it gRPC answers RESOURCE_EXHAUSTED.
        # No SO_REUSEPORT (grpcio's default): a second server on a taken port must fail, not share it.
        options = [
            ("grpc.max_receive_message_length", self._config.max_request_size),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", self._config.grpc_max_concurrent_streams),
        ]
        server = grpc.aio.server(
            options=options,
            interceptors=[Authorization(self._plane)],
            maximum_concurrent_rpcs=self._config.grpc_max_concurrent_rpcs,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self._plane), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            credentials = _tls_credentials(self._config)
            if credentials is None:
                server.add_insecure_port(self.address)
            else:
                server.add_secure_port(self.address, credentials)
        except RuntimeError as error:
            raise SeOnnxError(f"cannot listen for gRPC on {self.address}: {error}") from None
        await server.start()
        self._watching = asyncio.get_running_loop().create_task(self._follow_plane(server))
        log.info("grpc listening", extra={"address": self.address})

    async def _follow_plane(self, server: grpc.aio.Server) -> None:
        # A SIGTERM during start-up loading drains at once rather than after the last model loads.
        loaded = asyncio.ensure_future(self._plane.loading_done.wait())
        stopping = asyncio.ensure_future(self._plane.stopping.wait())
        await asyncio.wait((loaded, stopping), return_when=asyncio.FIRST_COMPLETED)
        loaded.cancel()
        if self._plane.ready and not self._plane.stopping.is_set():
            for service in ("", SERVICE_NAME):
                await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await stopping
        await self._health.enter_graceful_shutdown()
        # No new calls from here; calls in flight and open streams get until the request timeout.
        # (--request-timeout 0 means no limit: a day stands for it.)
        await server.stop(self._config.request_timeout or 24 * 3600.0)
        log.info("grpc stopped")

    async def stop(self) -> None:
        """Stop taking calls and wait for those in flight (the plane stops accepting too)."""
        if self._watching is None:
            return
        self._plane.stop_accepting()
        await asyncio.gather(self._watching, return_exceptions=True)
