"""No 5xx and no internals for a client's mistake: 405 with Allow, deep and mistyped bodies, strict
booleans, impossible shapes, empty-bodied answers as documented, broken and malicious models
through the repository API, the key's scope, response compression, and a load/unload soak."""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
import zlib

import numpy as np
import pytest
from broken_models import write_corpus
from service_helpers import (
    binary_body,
    fixed_reshape_model,
    infer_json,
    relu_neg_model,
    serve,
    split_binary,
    write_repo,
)

from service.dataplane import api_key_from

KEY = {"X-API-Key": "s3cret"}
DEEP = "[" * 10_000 + "]" * 10_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening") / "repo"
    write_repo(root, {"relu": relu_neg_model(), "big": relu_neg_model(features=512)})
    return root


@pytest.fixture(scope="module")
def client(repo):
    with serve(repo, api_key="s3cret") as client:
        yield client


def test_405_keeps_its_allow_header(client):
    response = client.delete("/v2/models/relu/infer")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v2/repository/index", DEEP),
        ("/v2/repository/index", '{"ready": ' + DEEP + "}"),
        ("/v2/repository/models/relu/load", '{"parameters": {"deep": ' + DEEP + "}}"),
        ("/v2/repository/models/relu/load", json.dumps({"parameters": {"config": DEEP}})),
        ("/v2/repository/models/relu/unload", '{"parameters": ' + DEEP + "}"),
    ],
)
def test_deep_nesting_is_a_400(client, path, body):
    response = client.post(path, content=body, headers=KEY)
    assert response.status_code == 400, response.text
    assert re.search("nested too deeply|depth limit exceeded", response.json()["error"]), response.text
    assert client.get("/v2/models/relu/ready").status_code == 200


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/v2/repository/index", {"ready": 0}, "ready: Input should be a valid boolean"),
        ("/v2/repository/index", {"ready": "true"}, "ready: Input should be a valid boolean"),
        ("/v2/repository/index", [1], "Input should be a valid dictionary"),
        ("/v2/repository/models/relu/load", {"parameters": {"config": 3}}, "must be a string"),
        (
            "/v2/repository/models/relu/load",
            {"parameters": {"config": '{"warmup": true}'}},
            "warmup: Input should be a valid integer",
        ),
        ("/v2/repository/models/relu/load", {"parameters": {"config": '{"session_per_instance": 0}'}}, "valid boolean"),
        ("/v2/repository/models/relu/load", {"parameters": {"config": '{"max_batch_size": 1e400}'}}, "max_batch_size"),
        ("/v2/repository/models/relu/load", {"parameters": []}, "parameters: Input should be a valid dictionary"),
    ],
)
def test_wrong_types_are_a_400_with_the_reason(client, path, body, message):
    response = client.post(path, json=body, headers=KEY)
    assert response.status_code == 400 and message in response.json()["error"], response.text
    assert client.post("/v2/repository/index", json={"ready": True}, headers=KEY).status_code == 200


@pytest.mark.parametrize(
    "shape, message",
    [
        ([-1, 4], "shape [-1, 4] has the negative dimension -1; a request gives each dimension's actual size"),
        ([0, 2**62, 2**62], "is too large for any array"),
        ([2**70, 4], "inputs.0.shape.0"),  # past int64: the JSON codec refuses it first
    ],
)
def test_impossible_shapes_are_a_400(client, shape, message):
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]}
    response = client.post("/v2/models/relu/infer", json=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/relu/ready"),
        ("POST", "/v2/repository/models/relu/load"),
        ("POST", "/v2/repository/models/relu/unload"),
    ],
)
def test_empty_answers_as_triton_and_as_documented(client, method, path):
    response = client.request(method, path, headers=KEY)
    assert response.status_code == 200 and response.content == b"" and "content-type" not in response.headers
    client.post("/v2/repository/models/relu/load", headers=KEY)  # back after the unload
    operation = client.get("/openapi.json").json()["paths"][path.replace("relu", "{model_name}")][method.lower()]
    assert "content" not in operation["responses"]["200"]


def test_the_document_declares_what_the_server_answers(client):
    document = client.get("/openapi.json").json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert all("422" not in op["responses"] for op in operations)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    stats = document["paths"]["/v2/models/stats"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert stats == {"$ref": "#/components/schemas/StatisticsResponse"}
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]
    assert {"application/json", "application/octet-stream"} <= set(infer["200"]["content"]) and "401" in infer
    assert {"401", "403"} <= set(document["paths"]["/v2/repository/index"]["post"]["responses"])


def test_broken_and_malicious_models_are_clean_errors_and_the_others_keep_serving(tmp_path):
    root = tmp_path / "repo"
    corpus = write_corpus(root)
    write_repo(root, {"relu": relu_neg_model()})
    ones = infer_json("x", np.ones((1, 4), np.float32))
    with serve(root, api_key="s3cret") as client:
        index = {row["name"]: row for row in client.post("/v2/repository/index", headers=KEY).json()}
        for name in corpus:
            if name == "warmup_fails":
                continue
            response = client.post(f"/v2/repository/models/{name}/load", headers=KEY)
            assert response.status_code == 400 and response.json()["error"].startswith(f"failed to load {name!r}")
            assert str(root) in index[name]["reason"]  # the full reason, for the key holder
            refused = client.post(f"/v2/models/{name}/infer", json=ones)
            error = refused.json()["error"]
            assert refused.status_code == 503 and error.startswith(f"model {name!r} is not ready: ")
            assert str(tmp_path) not in error and "ONNXRuntimeError" not in error and ".cc" not in error
            assert client.post("/v2/models/relu/infer", json=ones).json()["outputs"][0]["data"] == [1.0] * 4
        assert (
            client.post("/v2/models/escape_symlink/infer", json=ones)
            .json()["error"]
            .endswith("its external data escapes the model's folder")
        )
        assert (
            client.post("/v2/models/random_bytes/infer", json=ones).json()["error"].endswith("not a valid ONNX model")
        )
        # Warm-up is best effort: the model loads, and each request that fails says so in JSON.
        assert client.post("/v2/repository/models/warmup_fails/load", headers=KEY).status_code == 200
        failed = client.post("/v2/models/warmup_fails/infer", json=ones)
        # Its Reshape refuses every input: ONNX Runtime's kernel failure reads as the request's (400).
        assert failed.status_code == 400 and str(tmp_path) not in failed.text
        assert failed.json()["error"].startswith("the model cannot run on this input: ")
        assert client.post("/v2/models/relu/infer", json=ones).status_code == 200


def test_api_key_scope_all_guards_everything_but_health(repo):
    with serve(repo, api_key="s3cret", api_key_scope="all") as client:
        body = infer_json("x", np.ones((1, 4), np.float32))
        for method, path in [("GET", "/v2"), ("GET", "/v2/models/relu"), ("POST", "/v2/models/relu/infer"),
                             ("GET", "/v2/models/stats"), ("GET", "/metrics")]:  # fmt: skip
            assert client.request(method, path, json=body).status_code == 401, path
            assert (
                client.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            )
        assert client.get("/v2/health/ready").status_code == 200 and client.get("/v2/health/live").status_code == 200
    with serve(repo, api_key="s3cret") as client:  # the default scope: the repository API only
        assert client.post("/v2/models/relu/infer", json=body).status_code == 200


@pytest.mark.parametrize("encoding, decode", [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
def test_responses_are_compressed_when_asked(client, encoding, decode):
    x = np.arange(8 * 512, dtype=np.float32).reshape(8, 512)
    plain = client.post("/v2/models/big/infer", json=infer_json("x", x)).content
    # The test client decompresses by itself; read the raw stream to see what was sent.
    with client.stream(
        "POST", "/v2/models/big/infer", json=infer_json("x", x), headers={"Accept-Encoding": encoding}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == encoding and int(response.headers["content-length"]) == len(raw)
    assert decode(raw) == plain and len(raw) < len(plain) / 2
    # Binary outputs: the header length still counts the uncompressed JSON header, as Triton's.
    header = {
        "inputs": [{"name": "x", "shape": [8, 512], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_body(header, [x.tobytes()])
    with client.stream(
        "POST", "/v2/models/big/infer", content=body, headers={**headers, "Accept-Encoding": encoding}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == encoding

    class Decoded:
        headers = response.headers
        content = decode(raw)

    described, tensors = split_binary(Decoded)
    assert [o["name"] for o in described["outputs"]] == ["relu", "neg"]
    assert np.array_equal(np.frombuffer(tensors[: x.nbytes], np.float32).reshape(8, 512), x)


@pytest.mark.parametrize("accept", ["gzip;q=0", "br", "identity"])
def test_no_compression_unless_accepted(client, accept):
    x = np.ones((8, 512), np.float32)
    with client.stream(
        "POST", "/v2/models/big/infer", json=infer_json("x", x), headers={"Accept-Encoding": accept}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert "content-encoding" not in response.headers and json.loads(raw)["outputs"]


def test_small_responses_are_not_compressed(client):
    with client.stream("GET", "/v2/models/relu", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert "content-encoding" not in response.headers and json.loads(raw)["name"] == "relu"


def _resident_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_soak_load_unload_under_traffic_keeps_memory_and_fds_flat(repo):
    """200 unload/load cycles of a model while another thread sends requests to it."""
    with serve(repo, api_key="s3cret") as client:
        body = infer_json("x", np.ones((2, 4), np.float32))
        stop, statuses = threading.Event(), []

        def traffic():
            while not stop.is_set():
                statuses.append(client.post("/v2/models/relu/infer", json=body).status_code)

        def cycle(count: int) -> None:
            for _ in range(count):
                assert client.post("/v2/repository/models/relu/unload", headers=KEY).status_code == 200
                assert client.post("/v2/repository/models/relu/load", headers=KEY).status_code == 200

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            cycle(20)  # arenas, caches and thread pools reach their steady size first
            memory, fds = _resident_kib(), len(os.listdir("/proc/self/fd"))
            cycle(180)
            memory_after, fds_after = _resident_kib(), len(os.listdir("/proc/self/fd"))
        finally:
            stop.set()
            sender.join()
    assert memory_after < memory * 1.05, (memory, memory_after)
    assert fds_after <= fds * 1.05, (fds, fds_after)
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0, set(statuses)


def test_a_missing_body_with_required_fields_is_a_400(client):
    response = client.post("/v2/systemsharedmemory/region/r/register", headers=KEY)
    assert response.status_code == 400 and "key: Field required" in response.json()["error"]


def test_a_shape_the_kernel_refuses_is_400_without_server_paths(tmp_path):
    """x [N, 4] reshaped to a fixed [2, 2]: N = 3 passes the metadata and fails in Reshape."""
    with serve(write_repo(tmp_path / "repo", {"reshape": fixed_reshape_model()})) as client:
        ok = client.post("/v2/models/reshape/infer", json=infer_json("x", np.ones((1, 4), np.float32)))
        assert ok.status_code == 200, ok.text
        refused = client.post("/v2/models/reshape/infer", json=infer_json("x", np.ones((3, 4), np.float32)))
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]
        assert "requested shape:{2,2}" in message and "onnxruntime_src" not in message and ".h:" not in message, message


@pytest.mark.parametrize(
    "headers, key",
    [({"x-api-key": "k"}, "k"), ({"authorization": "Bearer  k "}, "k"), ({"authorization": "bearer k"}, "k"),
     ({"authorization": "Basic k"}, None), ({}, None), ({"x-api-key": "a", "authorization": "Bearer b"}, "a")],
)  # fmt: skip
def test_one_reading_of_the_api_key_for_http_and_grpc(headers, key):
    assert api_key_from(headers) == key
