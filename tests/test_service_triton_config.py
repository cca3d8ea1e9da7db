"""Triton repositories with config.pbtxt, served unchanged: configs written after the examples of
Triton's model configuration guide (docs/user_guide/model_configuration.md) are read with Triton's
ModelConfig message, honoured (batching, instances, versions, reshape, warm-up), answered over HTTP
and gRPC ModelConfig, and refused per model with the reason when invalid or contradicting the model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from service_helpers import (
    free_port,
    infer_json,
    relu_neg_model,
    serve,
    server_log,
    start_server,
    stop_server,
    write_repo,
)

KEY = {"X-API-Key": "s3cret"}

# Triton's "minimal model configuration" with max_batch_size, for relu_neg_model (x [N, 4] → relu, neg),
# dynamic batching with preferred sizes and a queue delay, two CPU instances, parameters, and
# fields se-onnx does not act on.
BATCHED = """
name: "batched"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "relu"
    data_type: TYPE_FP32
    dims: [ 4 ]
  },
  {
    name: "neg"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 }
  preserve_ordering: true
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
parameters { key: "team" value: { string_value: "vision" } }
response_cache { enable: true }
"""

MINIMAL = """
backend: "onnxruntime"
"""

# Triton's reshape example ("dims: [ 1 ] reshape: { shape: [ ] }") in the form this model takes:
# clients send [N, 2, 2], the model sees [N, 4].
RESHAPED = """
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]
output [ { name: "relu" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]
"""

WARMED = """
max_batch_size: 2
model_warmup [
  {
    name: "zero_value_warmup"
    batch_size: 2
    count: 3
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
  },
  {
    name: "from_file"
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "raw_x" } }
  }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
optimization { execution_accelerators {
  gpu_execution_accelerator : [ { name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ]
  cpu_execution_accelerator : [ { name : "openvino" } ]
}}
"""

# Warm-up samples replace the seeded runs: one the model cannot take is logged, as any failed warm-up.
BAD_WARMUP = """
model_warmup [ { name: "five" inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 1, 5 ] random_data: true } } } ]
"""

VERSION_POLICIES = {
    "all_versions": ("version_policy: { all { } }", ["1", "2", "3"]),
    "latest_two": ("version_policy: { latest { num_versions: 2 } }", ["2", "3"]),
    "specific": ("version_policy: { specific { versions: [ 1, 3 ] } }", ["1", "3"]),
}

# (config.pbtxt, what the UNAVAILABLE reason says)
REFUSED = {
    "tensorrt": ('platform: "tensorrt_plan"\nmax_batch_size: 8', "platform 'tensorrt_plan' is not served"),
    "pytorch": ('backend: "pytorch"', "backend 'pytorch' is not served"),
    "syntax": ("max_batch_size: 8\ninput [ { name: x }", "invalid model config"),
    "unknown_field": ("max_batch_sizes: 8", "max_batch_sizes"),
    "renamed": ('name: "resnet50"', "names the model 'resnet50'"),
    "no_such_input": ('input [ { name: "input0" data_type: TYPE_FP32 dims: [ 4 ] } ]', "no input 'input0'"),
    "wrong_type": ('input [ { name: "x" data_type: TYPE_INT32 dims: [ 4 ] } ]', "TYPE_INT32 in the config"),
    "wrong_dims": (
        'max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]',
        "dims [16] in the config, [4] in the model",
    ),
    "batch_in_dims": ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]', "dims [4] in the config"),
    "too_large": ("max_batch_size: 100000", "max_batch_size"),
    "mixed_kinds": (
        "instance_group [ { count: 1 kind: KIND_CPU }, { count: 1 kind: KIND_GPU } ]",
        "mixes KIND_GPU and KIND_CPU",
    ),
    "bad_reshape": (
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ 3 ] } } ]',
        "reshape needs fixed dims",
    ),
}


def _repo(root, pbtxts: dict[str, str], versions: dict[str, list[int]] | None = None):
    versions = versions or {}
    write_repo(root, {name: (relu_neg_model(), None, versions.get(name, [1])) for name in pbtxts})
    for name, text in pbtxts.items():
        (root / name / "config.pbtxt").write_text(text)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    pbtxts = {"batched": BATCHED, "minimal": MINIMAL, "reshaped": RESHAPED, "warmed": WARMED, "bad_warmup": BAD_WARMUP}
    pbtxts.update({name: text for name, (text, _) in VERSION_POLICIES.items()})
    pbtxts.update({name: text for name, (text, _) in REFUSED.items()})
    root = _repo(tmp_path_factory.mktemp("repo"), pbtxts, {name: [1, 2, 3] for name in VERSION_POLICIES})
    (root / "both" / "1").mkdir(parents=True)
    (root / "both" / "1" / "model.onnx").write_bytes((root / "minimal" / "1" / "model.onnx").read_bytes())
    (root / "both" / "config.json").write_text(json.dumps({"max_batch_size": 4}))
    (root / "both" / "config.pbtxt").write_text("max_batch_size: 4")
    return root


@pytest.fixture(scope="module")
def served(repo):
    """The repository on an in-process server with gRPC, and the log of its start-up; (client, gRPC client, log)."""
    import tritonclient.grpc as grpcclient

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger("service.repository"), logging.getLogger("service.model")]
    for logger in loggers:
        logger.addHandler(handler)
    grpc_port = free_port()
    try:
        with serve(repo, api_key="s3cret", grpc_port=grpc_port) as client:
            yield client, grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"), records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _index(client) -> dict[str, dict]:
    rows = client.post("/v2/repository/index", headers=KEY).json()
    return {row["name"]: row for row in rows}


def test_batching_instances_and_parameters_follow_the_config(served):
    client, grpc_client, _ = served
    config = client.get("/v2/models/batched/config").json()
    assert config["name"] == "batched" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert [tensor["name"] for tensor in config["output"]] == ["relu", "neg"]
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 100,
        "preferred_batch_size": [4, 8],
        "default_queue_policy": {"max_queue_size": 32},
    }
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["parameters"] == {"team": {"string_value": "vision"}}
    metadata = client.get("/v2/models/batched").json()
    assert metadata["parameters"]["max_batch_size"] == 8 and metadata["parameters"]["instance_count"] == 2
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    # The served model runs what the config says: a batcher, two threads.
    model = client.app.state.data_plane.repository.get("batched")
    assert model.batcher is not None and model.batcher.max_batch_size == 8
    assert model.executor._max_workers == 2
    # gRPC ModelConfig carries the same fields in Triton's ModelConfig message.
    answered = grpc_client.get_model_config("batched").config
    assert answered.max_batch_size == 8 and list(answered.dynamic_batching.preferred_batch_size) == [4, 8]
    assert answered.dynamic_batching.max_queue_delay_microseconds == 100
    assert answered.instance_group[0].count == 2 and answered.parameters["team"].string_value == "vision"
    response = client.post("/v2/models/batched/infer", json=infer_json("x", np.ones((9, 4), np.float32)))
    assert response.status_code == 400 and "max_batch_size 8" in response.json()["error"]


def test_a_minimal_config_gets_the_defaults(served):
    client, _, _ = served
    config = client.get("/v2/models/minimal/config").json()
    assert config["max_batch_size"] == 0 and config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert "dynamic_batching" not in config


@pytest.mark.parametrize("name", VERSION_POLICIES)
def test_version_policies(served, name):
    client, grpc_client, _ = served
    assert client.get(f"/v2/models/{name}").json()["versions"] == VERSION_POLICIES[name][1]
    answered = {
        "all_versions": {"all": {}},
        "latest_two": {"latest": {"num_versions": 2}},
        "specific": {"specific": {"versions": [1, 3]}},
    }
    assert client.get(f"/v2/models/{name}/config").json()["version_policy"] == answered[name]
    policy = grpc_client.get_model_config(name).config.version_policy
    assert policy.WhichOneof("policy_choice") == next(iter(answered[name]))


def test_reshape_serves_the_configs_dims(served):
    client, grpc_client, _ = served
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 2, 2)
    assert client.get("/v2/models/reshaped").json()["inputs"][0]["shape"] == [-1, 2, 2]
    response = client.post("/v2/models/reshaped/infer", json=infer_json("x", x))
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["relu"]["shape"] == [2, 2, 2] and outputs["relu"]["data"] == np.maximum(x, 0).ravel().tolist()
    assert outputs["neg"]["shape"] == [2, 4]  # not in the config: the model's own shape
    config = client.get("/v2/models/reshaped/config").json()
    assert config["input"][0]["reshape"] == {"shape": [4]}
    assert list(grpc_client.get_model_config("reshaped").config.output[0].reshape.shape) == [4]
    wrong = client.post("/v2/models/reshaped/infer", json=infer_json("x", np.ones((1, 4), np.float32)))
    assert wrong.status_code == 400


def test_warm_up_and_what_cannot_be_honoured_is_logged_once(served):
    client, grpc_client, records = served
    config = client.get("/v2/models/warmed/config").json()
    assert [sample["count"] for sample in config["model_warmup"]] == [3, 1]
    assert config["model_warmup"][0]["inputs"]["x"] == {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]  # the CPU group: no TensorRT
    assert grpc_client.get_model_config("warmed").config.model_warmup[0].name == "zero_value_warmup"
    by_model = [(r.getMessage(), getattr(r, "model", None), r) for r in records if r.levelno == logging.WARNING]
    accelerators = [r for message, model, r in by_model if model == "warmed" and "accelerators" in message]
    assert len(accelerators) == 1, by_model
    assert "tensorrt" in str(accelerators[0].ignored) and "openvino" in str(accelerators[0].ignored)
    files = [r for message, model, r in by_model if model == "warmed" and "warm-up" in message]
    assert len(files) == 1 and files[0].inputs == ["from_file.x"]
    ignored = [r for message, model, r in by_model if model == "batched" and "ignored" in message]
    assert len(ignored) == 1 and ignored[0].fields == ["dynamic_batching.preserve_ordering", "response_cache"]
    failed = {model for message, model, _ in by_model if message == "warm-up run failed"}
    assert "bad_warmup" in failed and "warmed" not in failed
    assert _index(client)["bad_warmup"]["state"] == "READY"  # warm-up is best effort


@pytest.mark.parametrize("name", [*REFUSED, "both"])
def test_invalid_or_contradicting_configs_fail_their_model_only(served, name):
    client, _, _ = served
    expected = REFUSED[name][1] if name in REFUSED else "both config.json and config.pbtxt; keep"
    row = _index(client)[name]
    assert row["state"] == "UNAVAILABLE" and expected in row["reason"], row
    assert "\n" not in row["reason"]
    assert client.get(f"/v2/models/{name}/ready").status_code == 503
    response = client.post(f"/v2/repository/models/{name}/load", headers=KEY)
    assert response.status_code == 400 and expected in response.json()["error"], response.text
    assert client.get("/v2/models/batched/ready").status_code == 200  # the others keep serving


def test_a_real_server_answers_tritonclients_model_config(tmp_path):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    root = _repo(tmp_path / "repo", {"batched": BATCHED})
    grpc_port = free_port()
    process, url = start_server(root, grpc_port=grpc_port)
    try:
        http_config = httpclient.InferenceServerClient(url).get_model_config("batched")
        grpc_config = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").get_model_config(
            "batched", as_json=True
        )["config"]
        for config in (http_config, grpc_config):
            assert int(config["max_batch_size"]) == 8
            assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
            assert config["instance_group"][0]["count"] == 2
            assert config["parameters"]["team"]["string_value"] == "vision"
        assert server_log(process).count("config.pbtxt fields ignored") == 1
    finally:
        stop_server(process)
