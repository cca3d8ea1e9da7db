"""System shared memory in-process: Triton's register / status / unregister routes and their errors,
inputs read from and outputs written to regions, bounds, objects shrunk or regions unregistered
under a request, the API key guard, and CUDA shared memory refused."""

from __future__ import annotations

import asyncio
import os
import uuid

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from service_helpers import (
    free_port,
    identity_model,
    relu_neg_model,
    serve,
    serve_async,
    server_log,
    slow_model,
    start_server,
    stop_server,
    write_repo,
)
from tritonclient.utils import serialize_byte_tensor

from service.runtime.shm import SHM_ROOT

pytestmark = pytest.mark.skipif(not SHM_ROOT.is_dir(), reason="needs POSIX shared memory under /dev/shm")


@pytest.fixture
def regions():
    """Make shm objects as tritonclient does: `make(size)` → (handle, key); all destroyed after."""
    made = []

    def make(size: int):
        key = f"/se-onnx-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.strip("/"), key, size)
        made.append(handle)
        return handle, key

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_repo(
        tmp_path_factory.mktemp("repo"),
        {
            "relu": relu_neg_model(),
            "text": identity_model(["BYTES"]),
            "pair": identity_model(["FP32", "INT64"]),
            "slow": slow_model(size=1024, matmuls=2),
        },
    )


@pytest.fixture(scope="module")
def client(repo):
    with serve(repo) as client:
        yield client


@pytest.fixture(autouse=True)
def _no_leftover_regions(request):
    yield
    if "client" in request.fixturenames:
        request.getfixturevalue("client").post("/v2/systemsharedmemory/unregister")


def _register(client, name: str, key: str, byte_size: int, offset: int = 0, **kwargs):
    return client.post(
        f"/v2/systemsharedmemory/region/{name}/register",
        json={"key": key, "offset": offset, "byte_size": byte_size},
        **kwargs,
    )


def _shm_params(region: str, byte_size: int, offset: int = 0) -> dict:
    return {"shared_memory_region": region, "shared_memory_byte_size": byte_size, "shared_memory_offset": offset}


def _error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"], response.json()["error"]


def test_register_status_unregister(client, regions):
    _, key = regions(64)
    assert _register(client, "a", key, 32, offset=16).status_code == 200
    assert _register(client, "b", key, 64).status_code == 200
    everything = client.get("/v2/systemsharedmemory/status").json()
    assert sorted(everything, key=lambda r: r["name"]) == [
        {"name": "a", "key": key, "offset": 16, "byte_size": 32},
        {"name": "b", "key": key, "offset": 0, "byte_size": 64},
    ]
    assert client.get("/v2/systemsharedmemory/region/a/status").json() == [everything[0]]
    assert client.post("/v2/systemsharedmemory/region/a/unregister").status_code == 200
    _error(client.get("/v2/systemsharedmemory/region/a/status"), 400, "no shared memory region 'a'")
    assert client.post("/v2/systemsharedmemory/region/a/unregister").status_code == 200  # again: no error, as Triton
    assert client.post("/v2/systemsharedmemory/unregister").status_code == 200
    assert client.get("/v2/systemsharedmemory/status").json() == []


def test_register_mistakes_are_400(client, regions, tmp_path):
    _, key = regions(64)
    assert _register(client, "taken", key, 8).status_code == 200
    _error(_register(client, "taken", key, 8), 400, "already registered")
    _error(_register(client, "missing", "/se-onnx-no-such-object", 8), 400, "cannot open")
    _error(_register(client, "large", key, 60, offset=8), 400, "runs past the end")
    for bad in ("../etc/passwd", "/a/b", "/..", ""):
        _error(_register(client, "bad", bad, 8), 400, "not a POSIX shm name")
    _error(
        client.post("/v2/systemsharedmemory/region/x/register", json={"key": key, "byte_size": -1}), 400, "byte_size"
    )
    _error(
        client.post("/v2/systemsharedmemory/region/x/register", json={"key": key, "byte_size": "8"}), 400, "byte_size"
    )
    _error(client.post("/v2/systemsharedmemory/region/x/register", content=b"{"), 400, "")
    # A link planted in /dev/shm does not lead the server to other files.
    target = tmp_path / "secret"
    target.write_bytes(b"s" * 64)
    link = SHM_ROOT / f"se-onnx-test-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(target)
    try:
        _error(_register(client, "link", f"/{link.name}", 8), 400, "cannot open")
    finally:
        link.unlink()


def test_inputs_and_outputs_in_shared_memory(client, regions):
    x = np.array([[1, -2, 3, -4], [-5, 6, -7, 8]], np.float32)
    handle, key = regions(x.nbytes * 2)
    shm.set_shared_memory_region(handle, [x])
    assert _register(client, "io", key, x.nbytes * 2).status_code == 200
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": _shm_params("io", x.nbytes)}],
        "outputs": [{"name": "relu", "parameters": _shm_params("io", x.nbytes, offset=x.nbytes)}, {"name": "neg"}],
    }
    response = client.post("/v2/models/relu/infer", json=body)
    assert response.status_code == 200, response.text
    relu, neg = response.json()["outputs"]
    assert relu == {"name": "relu", "datatype": "FP32", "shape": [2, 4]}  # no data: it is in the region
    assert neg["data"] == (-x).reshape(-1).tolist()
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=x.nbytes), np.maximum(x, 0)
    )


def test_bytes_in_and_out_of_shared_memory(client, regions):
    text = np.array([["é", "bb", ""], ["dddd", "e", "ff"]], dtype=object)
    raw = serialize_byte_tensor(text)
    handle, key = regions(256)
    shm.set_shared_memory_region(handle, [raw])
    assert _register(client, "text", key, 256).status_code == 200
    size = len(raw.item())
    body = {
        "inputs": [{"name": "in_BYTES", "shape": [2, 3], "datatype": "BYTES", "parameters": _shm_params("text", size)}],
        "outputs": [{"name": "out_BYTES", "parameters": _shm_params("text", 256 - 128, offset=128)}],
    }
    response = client.post("/v2/models/text/infer", json=body)
    assert response.status_code == 200, response.text
    got = shm.get_contents_as_numpy(handle, np.object_, [2, 3], offset=128)
    assert [item.decode() for item in got.reshape(-1)] == list(text.reshape(-1))


@pytest.mark.parametrize(
    "input_parameters, output_parameters, fragment",
    [
        (_shm_params("r", 32, offset=40), None, "runs past the end of shared memory region 'r'"),
        (_shm_params("r", 16), None, "16 bytes of data, expected 32"),
        (_shm_params("nope", 32), None, "no shared memory region 'nope'"),
        ({"shared_memory_region": "r"}, None, "go together"),
        ({"shared_memory_byte_size": 32}, None, "go together"),
        ({**_shm_params("r", 32), "shared_memory_offset": -1}, None, "non-negative"),
        ({**_shm_params("r", 32), "binary_data_size": 32}, None, "neither data nor binary_data_size"),
        (_shm_params("r", 32), _shm_params("r", 16), "do not fit the 16 bytes"),
        (_shm_params("r", 32), _shm_params("r", 32, offset=48), "runs past the end"),
        (_shm_params("r", 32), _shm_params("nope", 32), "output 'relu': no shared memory region 'nope'"),
    ],
)
def test_shared_memory_mistakes_are_400(client, regions, input_parameters, output_parameters, fragment):
    _, key = regions(64)
    assert _register(client, "r", key, 64).status_code == 200
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": input_parameters}]}
    if output_parameters is not None:
        body["outputs"] = [{"name": "relu", "parameters": output_parameters}]
    _error(client.post("/v2/models/relu/infer", json=body), 400, fragment)


def test_object_shrunk_after_registration_is_400_not_a_crash(client, regions):
    handle, key = regions(64)
    shm.set_shared_memory_region(handle, [np.ones((2, 4), np.float32)])
    assert _register(client, "shrunk", key, 64).status_code == 200
    os.truncate(SHM_ROOT / key.lstrip("/"), 16)  # the client cuts its object down underneath
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": _shm_params("shrunk", 32)}]}
    _error(client.post("/v2/models/relu/infer", json=body), 400, "smaller than registered")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "relu", "parameters": _shm_params("shrunk", 16, offset=32)}]}  # fmt: skip
    _error(client.post("/v2/models/relu/infer", json=body), 400, "smaller than registered")
    assert client.get("/v2/health/live").status_code == 200


def test_region_unregistered_while_a_request_runs(repo, regions):
    """The request that outlives its output region gets a 400; the server and the next request are fine."""
    handle, key = regions(16)
    shm.set_shared_memory_region(handle, [np.array([[2.0]], np.float32)])
    register = {"key": key, "offset": 0, "byte_size": 16}
    body = {
        "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "parameters": _shm_params("slow", 4)}],
        "outputs": [{"name": "y", "parameters": _shm_params("slow", 4, offset=8)}],
    }

    async def scenario():
        async with serve_async(repo) as (app, client):
            assert (await client.post("/v2/systemsharedmemory/region/slow/register", json=register)).status_code == 200
            model = app.state.data_plane.model("slow")
            running = asyncio.create_task(client.post("/v2/models/slow/infer", json=body))
            while not model.inflight:  # decoded (its input read) and running
                await asyncio.sleep(0.001)
            assert (await client.post("/v2/systemsharedmemory/region/slow/unregister")).status_code == 200
            _error(await running, 400, "no shared memory region 'slow'")
            assert (await client.post("/v2/systemsharedmemory/region/slow/register", json=register)).status_code == 200
            assert (await client.post("/v2/models/slow/infer", json=body)).status_code == 200

    asyncio.run(scenario())
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 1], offset=8), [[2.0]])


def test_api_key_guards_registration_when_set(repo, regions):
    _, key = regions(8)
    with serve(repo, api_key="k3y") as client:
        _error(_register(client, "r", key, 8), 401, "API key")
        _error(client.get("/v2/systemsharedmemory/status"), 401, "API key")
        assert _register(client, "r", key, 8, headers={"X-API-Key": "k3y"}).status_code == 200
        assert (
            client.get("/v2/systemsharedmemory/status", headers={"Authorization": "Bearer k3y"}).json()[0]["name"]
            == "r"
        )


def test_cuda_shared_memory_is_not_supported(client):
    extensions = client.get("/v2").json()["extensions"]
    assert "system_shared_memory" in extensions and "cuda_shared_memory" not in extensions
    for method, path in (
        ("GET", "status"),
        ("GET", "region/r/status"),
        ("POST", "region/r/register"),
        ("POST", "unregister"),
    ):
        _error(client.request(method, f"/v2/cudasharedmemory/{path}"), 501, "CUDA shared memory is not supported")


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v2/systemsharedmemory/region/{region_name}/register" in paths
    assert "/v2/systemsharedmemory/status" in paths


def test_tritonclient_grpc_system_shared_memory(repo, regions):
    """tritonclient.grpc unchanged against a real server: register (with the key), status, an input
    in a region beside one in raw contents' place, outputs in a region and inline, unregister."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    handle, key = regions(2 * x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    grpc_port = free_port()
    process, _ = start_server(repo, env={"SE_ONNX_API_KEY": "k3y"}, grpc_port=grpc_port)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert "system_shared_memory" in client.get_server_metadata().extensions
        with pytest.raises(InferenceServerException) as error:
            client.register_system_shared_memory("io", key, 2 * x.nbytes)
        assert error.value.status() == "StatusCode.UNAUTHENTICATED"
        auth = {"x-api-key": "k3y"}
        client.register_system_shared_memory("io", key, 2 * x.nbytes, headers=auth)
        region = client.get_system_shared_memory_status(headers=auth).regions["io"]
        assert (region.name, region.key, region.offset, region.byte_size) == ("io", key, 0, 2 * x.nbytes)
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")
        tensor.set_shared_memory("io", x.nbytes)
        relu = grpcclient.InferRequestedOutput("relu")
        relu.set_shared_memory("io", x.nbytes, offset=x.nbytes)
        result = client.infer("relu", [tensor], outputs=[relu, grpcclient.InferRequestedOutput("neg")])
        np.testing.assert_array_equal(result.as_numpy("neg"), -x)
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=x.nbytes), np.maximum(x, 0)
        )
        # One input from the region, the other in raw_input_contents: the raw entries are the inline inputs'.
        pair = [grpcclient.InferInput("in_FP32", [1, 3], "FP32"), grpcclient.InferInput("in_INT64", [1, 3], "INT64")]
        pair[0].set_shared_memory("io", 12)
        pair[1].set_data_from_numpy(np.array([[7, 8, 9]], np.int64))
        result = client.infer("pair", pair)
        np.testing.assert_array_equal(result.as_numpy("out_FP32"), x.reshape(-1)[:3].reshape(1, 3))
        np.testing.assert_array_equal(result.as_numpy("out_INT64"), [[7, 8, 9]])
        tensor.set_shared_memory("io", x.nbytes, offset=x.nbytes + 4)  # runs past the region's end
        with pytest.raises(InferenceServerException, match="runs past the end") as error:
            client.infer("relu", [tensor])
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        client.unregister_system_shared_memory(headers=auth)
        assert not client.get_system_shared_memory_status(headers=auth).regions
        with pytest.raises(InferenceServerException) as error:
            client.get_cuda_shared_memory_status()
        assert error.value.status() == "StatusCode.UNIMPLEMENTED"
    finally:
        assert stop_server(process) == 0


def test_huge_or_negative_sizes_and_offsets_are_400_before_any_allocation(repo, regions):
    """Sizes and offsets no region can hold are refused before a buffer is made, over HTTP (JSON
    numbers) and gRPC (uint64_param and int64_param alike): 400 / INVALID_ARGUMENT, one line, and
    no traceback in the server's log."""
    import grpc
    import httpx
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    _, key = regions(64)
    grpc_port = free_port()
    process, url = start_server(repo, grpc_port=grpc_port)
    try:
        with httpx.Client(base_url=f"http://{url}") as client:
            assert _register(client, "r", key, 64).status_code == 200
            cases = [
                ([2, 4], _shm_params("r", 2**62)),  # the shape does not take 2**62 bytes
                ([2**59, 4], _shm_params("r", 2**62)),  # it does, but the region does not hold them
                ([2, 4], _shm_params("r", 32, offset=2**63 - 1)),
                ([2, 4], _shm_params("r", 32, offset=-1)),
                ([2, 4], _shm_params("r", -32)),
            ]
            for shape, parameters in cases:
                body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "parameters": parameters}]}
                response = client.post("/v2/models/relu/infer", json=body)
                assert response.status_code == 400, response.text
                assert "\n" not in response.json()["error"]
            text = {"inputs": [{"name": "in_BYTES", "shape": [1, 3], "datatype": "BYTES",
                                "parameters": _shm_params("r", 2**62)}]}  # fmt: skip
            _error(client.post("/v2/models/text/infer", json=text), 400, "larger than the server's limit")

        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        huge = 2**64 - 1
        for shape, size, offset, kind in [
            ([2, 4], huge, 0, "uint64_param"),
            ([2**59, 4], 2**62, 0, "uint64_param"),
            ([2, 4], 32, huge, "uint64_param"),
            ([2, 4], 32, -1, "int64_param"),
            ([2, 4], -32, 0, "int64_param"),
        ]:
            tensor = service_pb2.ModelInferRequest().InferInputTensor(name="x", datatype="FP32", shape=shape)
            tensor.parameters["shared_memory_region"].string_param = "r"
            setattr(tensor.parameters["shared_memory_byte_size"], kind, size)
            setattr(tensor.parameters["shared_memory_offset"], kind, offset)
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(service_pb2.ModelInferRequest(model_name="relu", inputs=[tensor]))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
            assert "\n" not in error.value.details()
    finally:
        assert stop_server(process) == 0
    log = server_log(process)
    assert "Traceback" not in log and "MemoryError" not in log, log[-2000:]
