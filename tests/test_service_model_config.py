"""config.json within Triton's ranges: each field in range is accepted and answerable over HTTP and
gRPC ModelConfig; out of range it is refused with a message naming the field, as a 400 on the
repository API and as that model's UNAVAILABLE reason at start-up."""

from __future__ import annotations

import json

import pytest
from service_helpers import free_port, relu_neg_model, serve, write_repo

KEY = {"X-API-Key": "s3cret"}
BATCHED = {"max_batch_size": 8}


def _batching(**fields) -> dict:
    return {**BATCHED, "dynamic_batching": fields}


ACCEPTED = [
    {"max_batch_size": 65536},
    {"instance_count": 256},
    {"warmup": 1000},
    {"warmup": 0},
    {"device_id": 0},
    {"gpu_mem_limit": 2**63 - 1},
    _batching(max_queue_delay_us=60_000_000),
    _batching(max_queue_size=65536),
    _batching(preferred_batch_size=[1, 4, 8]),
    {"version_policy": {"latest": {"num_versions": 2**32 - 1}}},
    {"version_policy": {"specific": {"versions": [1, 2**63 - 1]}}},
    {"version_policy": {"all": {}}},
    {"name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "parameters": {"team": "vision"}},
    {**BATCHED, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 2], "reshape": {"shape": [4]}}]},
    {**BATCHED, "model_warmup": [{"count": 2, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [4]}}}]},
]

# (config, the field the message names)
REFUSED = [
    ({"max_batch_size": 65537}, "max_batch_size"),
    ({"max_batch_size": 2**31}, "max_batch_size"),
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"instance_count": 257}, "instance_count"),
    ({"instance_count": 2**31}, "instance_count"),
    ({"instance_count": 0}, "instance_count"),
    ({"warmup": 1001}, "warmup"),
    ({"warmup": 1_000_000_000}, "warmup"),
    ({"warmup": -1}, "warmup"),
    ({"device_id": 2**31}, "device_id"),
    ({"gpu_mem_limit": 2**63}, "gpu_mem_limit"),
    (_batching(max_queue_delay_us=2**64), "max_queue_delay_us"),
    (_batching(max_queue_delay_us=60_000_001), "max_queue_delay_us"),
    (_batching(max_queue_size=65537), "max_queue_size"),
    (_batching(max_queue_size=0), "max_queue_size"),
    (_batching(preferred_batch_size=[-5, 0]), "preferred_batch_size"),
    (_batching(preferred_batch_size=[2, 2]), "preferred_batch_size"),
    (_batching(preferred_batch_size=[16]), "preferred_batch_size"),
    ({"version_policy": {"latest": {"num_versions": 2**32}}}, "num_versions"),
    ({"version_policy": {"specific": {"versions": [2**63]}}}, "versions"),
    ({"version_policy": {"specific": {"versions": [-1]}}}, "versions"),
    ({"version_policy": {"all": {"newest": 1}}}, "all"),
    ({"name": "other"}, "names the model 'other'"),
    ({"platform": "tensorrt_plan"}, "platform"),
    ({"default_model_filename": "../1/model.onnx"}, "default_model_filename"),
    ({"output": [{"name": "relu", "data_type": "TYPE_INT64", "dims": [-1, 4]}]}, "TYPE_INT64"),
    ({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4], "reshape": {"shape": [3]}}]}, "reshape"),
    ({"model_warmup": [{"count": 1001, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [4]}}}]}, "count"),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_repo(tmp_path_factory.mktemp("repo"), {"m": (relu_neg_model(), None, [1])})


@pytest.fixture(scope="module")
def servers(repo):
    """An in-process server with the repository API and gRPC; (HTTP client, gRPC client)."""
    import tritonclient.grpc as grpcclient

    grpc_port = free_port()
    with serve(repo, api_key="s3cret", grpc_port=grpc_port, request_timeout=60.0) as client:
        yield client, grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")


@pytest.mark.parametrize("config", ACCEPTED, ids=json.dumps)
def test_in_range_configs_load_and_answer_model_config(servers, config):
    client, grpc_client = servers
    response = client.post(
        "/v2/repository/models/m/load", json={"parameters": {"config": json.dumps(config)}}, headers=KEY
    )
    assert response.status_code == 200, response.text
    http_config = client.get("/v2/models/m/config")
    assert http_config.status_code == 200, http_config.text
    answered = grpc_client.get_model_config("m", as_json=True)["config"]
    assert answered["name"] == "m"
    assert int(answered.get("max_batch_size", 0)) == config.get("max_batch_size", 0)


@pytest.mark.parametrize(
    "config, field", REFUSED, ids=lambda value: json.dumps(value) if isinstance(value, dict) else ""
)
def test_out_of_range_configs_are_a_400_naming_the_field(servers, config, field):
    client, _ = servers
    response = client.post(
        "/v2/repository/models/m/load", json={"parameters": {"config": json.dumps(config)}}, headers=KEY
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert field in message and "\n" not in message, message


def test_queue_delay_longer_than_the_request_timeout_is_refused(repo):
    config = json.dumps(_batching(max_queue_delay_us=30_000_000))
    with serve(repo, api_key="s3cret", request_timeout=10.0) as client:
        response = client.post("/v2/repository/models/m/load", json={"parameters": {"config": config}}, headers=KEY)
        assert response.status_code == 400 and "--request-timeout" in response.json()["error"], response.text
        assert client.get("/v2/models/m/ready").status_code == 200  # the loaded version keeps serving


def test_out_of_range_configs_fail_their_model_only_at_start_up(tmp_path):
    models = {"good": (relu_neg_model(), None, [1])}
    models.update({f"bad{i}": (relu_neg_model(), config, [1]) for i, (config, _) in enumerate(REFUSED)})
    models["slow_queue"] = (relu_neg_model(), _batching(max_queue_delay_us=30_000_000), [1])
    root = write_repo(tmp_path / "repo", models)
    with serve(root, api_key="s3cret", request_timeout=10.0) as client:
        rows = {row["name"]: row for row in client.post("/v2/repository/index", headers=KEY).json()}
        assert rows["good"]["state"] == "READY"
        for i, (_, field) in enumerate(REFUSED):
            row = rows[f"bad{i}"]
            assert row["state"] == "UNAVAILABLE" and field in row["reason"], row
        assert "--request-timeout" in rows["slow_queue"]["reason"]
        error = client.get("/v2/models/bad0/ready")
        assert error.status_code == 503
        assert client.get("/v2/models/good/config").status_code == 200
