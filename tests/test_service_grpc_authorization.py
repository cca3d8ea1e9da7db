"""gRPC authorization, one interceptor for every RPC: which RPCs take the API key under each key
scope, and the status of a refusal (UNAUTHENTICATED, or PERMISSION_DENIED while no key is set),
as the HTTP routes of the same operations answer."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import free_port, relu_neg_model, serve_async, write_repo
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

KEY = "k3y"
OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

INFER = pb.ModelInferRequest(
    model_name="relu",
    inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
    raw_input_contents=[np.ones((1, 4), np.float32).tobytes()],
)
# Each RPC of the inference service that reads no state a test changes, with a valid request.
UNARY = {
    "ServerLive": pb.ServerLiveRequest(),
    "ServerReady": pb.ServerReadyRequest(),
    "ServerMetadata": pb.ServerMetadataRequest(),
    "ModelReady": pb.ModelReadyRequest(name="relu"),
    "ModelMetadata": pb.ModelMetadataRequest(name="relu"),
    "ModelConfig": pb.ModelConfigRequest(name="relu"),
    "ModelStatistics": pb.ModelStatisticsRequest(name="relu"),
    "ModelInfer": INFER,
    "RepositoryIndex": pb.RepositoryIndexRequest(),
    "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest(),
}
SCOPED = {"ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics", "ModelInfer",
          "ModelStreamInfer"}  # fmt: skip


async def _codes(channel: grpc.aio.Channel, metadata: tuple) -> dict[str, grpc.StatusCode]:
    """The status of each RPC of UNARY, of a one-request stream, and of the gRPC health check."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    codes = {}
    for name, request in UNARY.items():
        try:
            await getattr(stub, name)(request, metadata=metadata)
            codes[name] = OK
        except grpc.aio.AioRpcError as error:
            codes[name] = error.code()
    try:
        replies = [reply async for reply in stub.ModelStreamInfer(iter([INFER]), metadata=metadata)]
        assert [reply.error_message for reply in replies] == [""]
        codes["ModelStreamInfer"] = OK
    except grpc.aio.AioRpcError as error:
        codes["ModelStreamInfer"] = error.code()
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=metadata)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    return codes


def _run(tmp_path, options: dict, keys: dict[str, tuple]) -> dict[str, dict[str, grpc.StatusCode]]:
    """Each RPC's status for each set of metadata in `keys`, against one in-process server."""
    root = write_repo(tmp_path / "repo", {"relu": relu_neg_model()})

    async def scenario():
        port = free_port()
        server = serve_async(root, grpc_port=port, **options)
        async with server, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return {label: await _codes(channel, metadata) for label, metadata in keys.items()}

    return asyncio.run(scenario())


def test_without_a_key_the_repository_api_is_off_and_the_rest_open(tmp_path):
    codes = _run(tmp_path, {}, {"none": ()})["none"]
    assert codes == {name: DENIED if name.startswith("Repository") else OK for name in codes}


def test_repository_scope_guards_the_repository_and_shared_memory(tmp_path):
    keys = {"none": (), "wrong": (("x-api-key", "nope"),), "x-api-key": (("x-api-key", KEY),),
            "bearer": (("authorization", f"Bearer {KEY}"),)}  # fmt: skip
    codes = _run(tmp_path, {"api_key": KEY}, keys)
    guarded = {"RepositoryIndex", "SystemSharedMemoryStatus"}
    for label in ("none", "wrong"):
        assert codes[label] == {name: UNAUTHENTICATED if name in guarded else OK for name in codes[label]}, label
    for label in ("x-api-key", "bearer"):
        assert set(codes[label].values()) == {OK}, label


@pytest.mark.parametrize("metadata", [(), (("x-api-key", "nope"),)], ids=["no key", "wrong key"])
def test_scope_all_guards_every_rpc_but_liveness_and_readiness(tmp_path, metadata):
    codes = _run(tmp_path, {"api_key": KEY, "api_key_scope": "all"}, {"given": metadata, "key": (("x-api-key", KEY),)})
    guarded = SCOPED | {"RepositoryIndex", "SystemSharedMemoryStatus"}
    assert codes["given"] == {name: UNAUTHENTICATED if name in guarded else OK for name in codes["given"]}
    assert set(codes["key"].values()) == {OK}
