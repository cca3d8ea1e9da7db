"""Open Inference Protocol conformance in-process: health, metadata, JSON and binary tensors of every
datatype, the raw single-input request, and every client error with its status and {"error"} body."""

from __future__ import annotations

import gzip
import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
from service_helpers import (
    DATATYPES,
    binary_body,
    identity_model,
    infer_json,
    relu_neg_model,
    serve,
    split_binary,
    write_repo,
)

from service.runtime.tensors import tensor_bytes

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}  # fmt: skip


def _sample(datatype: str, rows: int = 2) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[f"r{r}c{c}é" for c in range(3)] for r in range(rows)], dtype=object)
    if datatype == "BOOL":
        return np.arange(rows * 3).reshape(rows, 3) % 2 == 0
    values = np.arange(rows * 3).reshape(rows, 3) + 1
    if datatype.startswith("FP"):
        return (values * 0.5).astype(NUMPY[datatype])
    if datatype.startswith("INT"):
        values = -values
    return values.astype(NUMPY[datatype])


def _serialize_bytes(array: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in array.reshape(-1))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = write_repo(
        tmp_path_factory.mktemp("repo"),
        {
            "identity": identity_model(),
            "relu": relu_neg_model(),
            "single": identity_model(["FP32"], shape=("N", 2)),
            "fixed": relu_neg_model(batch=2),
            "versioned": (relu_neg_model(), None, [1, 3]),
        },
    )
    (root / "build_samples.py").write_text("print('not a model')\n")
    (root / "notes.txt").write_text("ignored\n")
    with serve(root, max_request_size=4096) as client:
        yield client


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    metadata = client.get("/v2").json()
    assert metadata["name"] == "se-onnx"
    assert "binary_tensor_data" in metadata["extensions"] and "model_repository" in metadata["extensions"]
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v2/models/{model_name}/infer" in spec["paths"]
    # Bodies read by the handlers themselves are documented too, with no dangling references.
    referenced = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(spec)))
    assert {"InferRequest", "RequestInput", "LoadRequest"} <= referenced <= set(spec["components"]["schemas"])


def test_model_metadata_standard_fields_and_providers(client):
    metadata = client.get("/v2/models/relu").json()
    assert metadata["name"] == "relu" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["relu", "neg"]
    assert metadata["parameters"]["providers"] == ["CPUExecutionProvider"]
    assert client.get("/v2/models/fixed").json()["inputs"][0]["shape"] == [2, 4]
    assert client.get("/v2/models/relu/versions/1").json()["name"] == "relu"
    assert client.get("/v2/models/relu/ready").status_code == 200
    assert client.get("/v2/models/relu/versions/1/ready").status_code == 200


def test_version_policy_latest_serves_only_the_newest(client):
    assert client.get("/v2/models/versioned").json()["versions"] == ["3"]
    assert client.get("/v2/models/versioned/versions/3/ready").status_code == 200
    assert client.get("/v2/models/versioned/versions/1/ready").status_code == 404
    response = client.post("/v2/models/versioned/versions/3/infer", json=infer_json("x", np.ones((1, 4), np.float32)))
    assert response.json()["model_version"] == "3"


@pytest.mark.parametrize("nested", [True, False])
def test_json_infer_nested_or_flat_data_echoes_id(client, nested):
    x = np.array([[1, -2, 3, -4], [-5, 6, -7, 8]], np.float32)
    body = infer_json("x", x, id="req-7")
    if not nested:
        body["inputs"][0]["data"] = x.reshape(-1).tolist()
    response = client.post("/v2/models/relu/infer", content=json.dumps(body))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "req-7" and result["model_name"] == "relu" and result["model_version"] == "1"
    outputs = {o["name"]: o for o in result["outputs"]}
    assert set(outputs) == {"relu", "neg"}
    assert outputs["relu"]["datatype"] == "FP32" and outputs["relu"]["shape"] == [2, 4]
    np.testing.assert_array_equal(np.array(outputs["relu"]["data"]).reshape(2, 4), np.maximum(x, 0))
    np.testing.assert_array_equal(np.array(outputs["neg"]["data"]).reshape(2, 4), -x)


def test_requested_outputs_only(client):
    body = infer_json("x", np.ones((1, 4), np.float32), outputs=[{"name": "neg"}])
    result = client.post("/v2/models/relu/infer", json=body).json()
    assert [o["name"] for o in result["outputs"]] == ["neg"]
    assert "id" not in result


def test_content_type_is_ignored(client):
    body = json.dumps(infer_json("x", np.ones((1, 4), np.float32)))
    response = client.post("/v2/models/relu/infer", content=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 200


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_json(client, datatype):
    array = _sample(datatype)
    body = infer_json(f"in_{datatype}", array, datatype, outputs=[{"name": f"out_{datatype}"}])
    # The identity model takes every datatype at once; the other inputs get a row of their own.
    for other in DATATYPES:
        if other != datatype:
            body["inputs"].append(
                {"name": f"in_{other}", "shape": [2, 3], "datatype": other, "data": _sample(other).tolist()}
            )
    response = client.post("/v2/models/identity/infer", json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["datatype"] == datatype and output["shape"] == [2, 3]
    got = np.array(output["data"], dtype=NUMPY[datatype]).reshape(2, 3)
    np.testing.assert_array_equal(got, array)


def test_every_datatype_binary_in_and_out(client):
    arrays = {t: _sample(t) for t in DATATYPES}
    inputs, chunks = [], []
    for datatype, array in arrays.items():
        raw = _serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
        inputs.append(
            {
                "name": f"in_{datatype}",
                "shape": [2, 3],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    body, headers = binary_body({"inputs": inputs, "parameters": {"binary_data_output": True}}, chunks)
    response = client.post("/v2/models/identity/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, tail = split_binary(response)
    offset = 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw, offset = tail[offset : offset + size], offset + size
        datatype = output["datatype"]
        assert output["name"] == f"out_{datatype}" and "data" not in output
        expected = arrays[datatype]
        if datatype == "BYTES":
            assert raw == _serialize_bytes(expected)
        else:
            np.testing.assert_array_equal(np.frombuffer(raw, NUMPY[datatype]).reshape(2, 3), expected)
    assert offset == len(tail)


def test_per_output_binary_flag_mixes_json_and_binary(client):
    x = np.array([[1, -1, 2, -2]], np.float32)
    body, headers = binary_body(
        {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
            "outputs": [
                {"name": "relu", "parameters": {"binary_data": True}},
                {"name": "neg", "parameters": {"binary_data": False}},
            ],
        },
        [x.tobytes()],
    )
    response = client.post("/v2/models/relu/infer", content=body, headers=headers)
    header, tail = split_binary(response)
    relu, neg = header["outputs"]
    assert relu["parameters"]["binary_data_size"] == 16
    np.testing.assert_array_equal(np.frombuffer(tail, np.float32), np.maximum(x, 0).reshape(-1))
    assert neg["data"] == [-1.0, 1.0, -2.0, 2.0]


def test_json_only_response_has_no_header_length(client):
    response = client.post("/v2/models/relu/infer", json=infer_json("x", np.ones((1, 4), np.float32)))
    assert "Inference-Header-Content-Length" not in response.headers


def test_raw_single_input_request(client):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    response = client.post(
        "/v2/models/single/infer", content=x.tobytes(), headers={"Inference-Header-Content-Length": "0"}
    )
    assert response.status_code == 200, response.text
    header, tail = split_binary(response)
    (output,) = header["outputs"]
    assert output["shape"] == [3, 2]
    np.testing.assert_array_equal(np.frombuffer(tail, np.float32).reshape(3, 2), x)


def _error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert fragment in message, message


def _header_only(inputs) -> str:
    return json.dumps({"inputs": inputs})


@pytest.mark.parametrize(
    "body, fragment",
    [
        (
            _header_only([{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]),
            "unknown input 'nope'",
        ),
        (_header_only([]), "missing input 'x'"),
        (_header_only([{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]), "shape [1, 5]"),
        (_header_only([{"name": "x", "shape": [4], "datatype": "FP32", "data": [0] * 4}]), "shape [4]"),
        (_header_only([{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [0] * 4}]), "datatype INT64"),
        (_header_only([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 3}]), "3 elements"),
        (_header_only([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]), "not FP32"),
        (_header_only([{"name": "x", "shape": [1, 4], "datatype": "FP32"}]), "neither data nor binary_data_size"),
        (_header_only([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}] * 2), "given twice"),
        ('{"inputs": [', "malformed JSON"),
        ("[1, 2]", "invalid inference request"),
        ('{"inputs": [{"name": "x"}]}', "invalid inference request"),
        (
            json.dumps(
                {
                    **json.loads(_header_only([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}])),
                    "outputs": [{"name": "zzz"}],
                }
            ),
            "unknown output 'zzz'",
        ),
    ],
)
def test_client_mistakes_are_400(client, body, fragment):
    _error(client.post("/v2/models/relu/infer", content=body), 400, fragment)


def _json_input(datatype: str, data, shape=(1, 3)) -> str:
    return _header_only([{"name": f"in_{datatype}", "shape": list(shape), "datatype": datatype, "data": data}])


@pytest.mark.parametrize(
    "datatype, data, fragment",
    [
        ("FP32", [1.0, None, 2.0], "null"),
        ("FP32", [[1.0, 2.0], [3.0]], "inhomogeneous"),
        ("FP32", [True, False, True], "booleans"),
        ("FP32", [1.5, True, 2.5], "booleans"),
        ("INT64", [[1, 2, 3], [False, 4, 5]], "booleans"),
        ("INT32", [1, 2.5, 3], "non-integer"),
        ("INT8", [1, 2, 300], "values outside [-128, 127]"),
        ("UINT8", [1, -1, 3], "values outside [0, 255]"),
        ("UINT64", [1, 2**64, 3], "values outside [0, 18446744073709551615]"),
        ("INT64", [1, 2**63, 3], "values outside [-9223372036854775808, 9223372036854775807]"),
        ("INT64", [2**63, 2.5, 3], "values outside"),
        ("UINT64", [2**63, 2.5, 3], "non-integer"),
        ("UINT64", [2**63, True, 3], "booleans"),
        ("FP16", [1.0, 1e10, 2.0], "out of range for FP16"),
        ("FP16", [1, 70000, 2], "out of range for FP16"),
        ("FP32", [1.0, -1e300, 2.0], "out of range for FP32"),
        ("BOOL", [1, 0, 1], "integers"),
        ("BOOL", ["true", "false", "true"], "strings"),
        ("BYTES", ["a", 1, "b"], "must be strings"),
        ("BYTES", [["a", "b"], ["c"]], "must be strings"),
        ("FP32", {"a": 1}, "objects"),
    ],
)
def test_json_data_of_the_wrong_kind_is_400(client, datatype, data, fragment):
    _error(client.post("/v2/models/identity/infer", content=_json_input(datatype, data)), 400, fragment)


@pytest.mark.parametrize("hidden", [None, True, False])
def test_json_booleans_among_a_few_zeros_and_ones_are_found(client, hidden):
    """Few 0s and 1s among the numbers: only they are looked at, by their indexes into nested lists."""
    data = [[2.5, 3.5] for _ in range(40)]
    data[17][1], data[3][0] = 0.0, 1
    if hidden is not None:
        data[30][0] = hidden
    response = client.post("/v2/models/single/infer", content=_json_input("FP32", data, shape=(40, 2)))
    if hidden is None:
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]["data"]
        assert output[17 * 2 + 1] == 0.0 and output[3 * 2] == 1.0
    else:
        _error(response, 400, "it holds booleans")


def test_json_large_body_is_decoded_with_the_same_checks(tmp_path):
    """Bodies past 256 KiB are decoded in a thread: the same result, the same 400s."""
    root = write_repo(tmp_path, {"wide": identity_model(["FP32", "INT32"], shape=("N", 20_000))})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 20_000)).astype(np.float32)
    ints = rng.integers(-1000, 1000, (2, 20_000), dtype=np.int32)

    def body(fp32: list | None = None, int32: list | None = None) -> str:
        inputs = [
            {"name": "in_FP32", "shape": [2, 20_000], "datatype": "FP32", "data": fp32 or x.tolist()},
            {"name": "in_INT32", "shape": [2, 20_000], "datatype": "INT32", "data": int32 or ints.tolist()},
        ]
        text = json.dumps({"inputs": inputs})
        assert len(text) > 256 * 1024
        return text

    with serve(root) as client:
        response = client.post("/v2/models/wide/infer", content=body())
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        np.testing.assert_array_equal(np.array(outputs["out_FP32"]["data"], np.float32).reshape(2, -1), x)
        np.testing.assert_array_equal(np.array(outputs["out_INT32"]["data"]).reshape(2, -1), ints)
        fp32 = x.tolist()
        fp32[1][5] = None
        _error(client.post("/v2/models/wide/infer", content=body(fp32=fp32)), 400, "null")
        int32 = ints.tolist()
        int32[0][19_999] = False
        _error(client.post("/v2/models/wide/infer", content=body(int32=int32)), 400, "it holds booleans")
        int32[0][19_999] = 2.5
        _error(client.post("/v2/models/wide/infer", content=body(int32=int32)), 400, "non-integer")


def test_json_64_bit_integers_past_int64_are_exact(client):
    """numpy reads [1, 2**63] as floats; UINT64 takes it exactly."""
    data = [1, 2**63, 2**64 - 1]
    body = {
        "inputs": [{"name": "in_UINT64", "shape": [1, 3], "datatype": "UINT64", "data": data}],
        "outputs": [{"name": "out_UINT64"}],
    }
    for other in DATATYPES:
        if other != "UINT64":
            body["inputs"].append(
                {"name": f"in_{other}", "shape": [1, 3], "datatype": other, "data": _sample(other, 1).tolist()}
            )
    response = client.post("/v2/models/identity/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == data


@pytest.mark.parametrize("depth", [70, 1100])
def test_deeply_nested_json_is_400(client, depth):
    """Past numpy's 64 dimensions and past orjson's 1024 levels: a 400, never a recursion error."""
    nested = "[" * depth + "1" + "]" * depth
    for datatype in ("FP32", "BYTES"):
        body = _json_input(datatype, "DATA").replace('"DATA"', nested)
        _error(client.post("/v2/models/identity/infer", content=body), 400, "" if depth < 1024 else "malformed JSON")
    for field in ("shape", "parameters"):
        body = _header_only([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4, field: "DEEP"}])
        _error(client.post("/v2/models/relu/infer", content=body.replace('"DEEP"', nested)), 400, "")


def test_json_output_of_special_floats_is_null(client):
    x = np.array([[np.nan, np.inf, -1.0, 0.5]], np.float32)
    body = infer_json("x", np.zeros((1, 4), np.float32))
    body["inputs"][0]["data"] = [None, None, -1.0, 0.5]  # null is refused on input ...
    assert client.post("/v2/models/relu/infer", json=body).status_code == 400
    raw, headers = binary_body(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
         "outputs": [{"name": "neg"}]},
        [x.tobytes()],
    )  # fmt: skip
    response = client.post("/v2/models/relu/infer", content=raw, headers=headers)
    assert response.json()["outputs"][0]["data"] == [None, None, 1.0, -0.5]  # ... and how NaN and infinity leave


def test_fixed_batch_dimension_is_enforced(client):
    _error(
        client.post("/v2/models/fixed/infer", json=infer_json("x", np.ones((3, 4), np.float32))), 400, "shape [3, 4]"
    )


@pytest.mark.parametrize(
    "header_length, fragment",
    [("abc", "must be an integer"), ("-1", "outside the body"), ("100000", "outside the body")],
)
def test_bad_header_length_is_400(client, header_length, fragment):
    body = json.dumps(infer_json("x", np.ones((1, 4), np.float32)))
    _error(
        client.post("/v2/models/relu/infer", content=body, headers={"Inference-Header-Content-Length": header_length}),
        400,
        fragment,
    )


def test_binary_size_mismatches_are_400(client):
    entry = {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}
    body, headers = binary_body({"inputs": [entry]}, [b"\0" * 12])
    _error(client.post("/v2/models/relu/infer", content=body, headers=headers), 400, "12 bytes of data, expected 16")
    entry["parameters"]["binary_data_size"] = 16
    body, headers = binary_body({"inputs": [entry]}, [b"\0" * 8])
    _error(client.post("/v2/models/relu/infer", content=body, headers=headers), 400, "runs past the end")
    body, headers = binary_body({"inputs": [entry]}, [b"\0" * 20])
    _error(client.post("/v2/models/relu/infer", content=body, headers=headers), 400, "belong to no input")
    _error(
        client.post("/v2/models/single/infer", content=b"\0" * 6, headers={"Inference-Header-Content-Length": "0"}),
        400,
        "whole number",
    )
    _error(
        client.post("/v2/models/identity/infer", content=b"\0" * 16, headers={"Inference-Header-Content-Length": "0"}),
        400,
        "one input",
    )


def test_unknown_model_version_and_route_are_404(client):
    body = infer_json("x", np.ones((1, 4), np.float32))
    _error(client.post("/v2/models/missing/infer", json=body), 404, "unknown model 'missing'")
    _error(client.get("/v2/models/missing"), 404, "unknown model")
    _error(client.get("/v2/models/missing/ready"), 404, "unknown model")
    _error(client.post("/v2/models/relu/versions/9/infer", json=body), 404, "unknown version 9")
    _error(client.get("/v2/models/relu/versions/abc"), 404, "unknown version")
    _error(client.get("/v2/nothing-here"), 404, "Not Found")
    _error(client.get("/v2/models/relu/infer"), 405, "Method Not Allowed")


def test_request_larger_than_limit_is_413(client):
    big = json.dumps(infer_json("x", np.ones((300, 4), np.float32)))
    assert len(big) > 4096
    _error(client.post("/v2/models/relu/infer", content=big), 413, "limit of 4096 bytes")

    def chunks():  # no Content-Length: the limit applies while the body streams
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000].encode()

    _error(client.post("/v2/models/relu/infer", content=chunks()), 413, "limit of 4096 bytes")


def test_compressed_bodies(client):
    body = json.dumps(infer_json("x", np.ones((1, 4), np.float32))).encode()
    response = client.post("/v2/models/relu/infer", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    _error(
        client.post("/v2/models/relu/infer", content=body, headers={"Content-Encoding": "gzip"}), 400, "not valid gzip"
    )
    _error(
        client.post("/v2/models/relu/infer", content=body, headers={"Content-Encoding": "br"}),
        400,
        "unsupported Content-Encoding",
    )
    bomb = zlib.compress(b" " * 100_000)  # small on the wire, past the 4096-byte limit inflated
    _error(
        client.post("/v2/models/relu/infer", content=bomb, headers={"Content-Encoding": "deflate"}),
        413,
        "inflates past",
    )


def test_access_log_line_per_request_at_info_only(client, caplog):
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/v2/health/live")
    (record,) = [r for r in caplog.records if r.name == "service.access"]
    assert (record.method, record.path, record.status) == ("GET", "/v2/health/live", 200)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.access"):
        client.get("/v2/health/live")
    assert not [r for r in caplog.records if r.name == "service.access"]


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 3), np.float16),
        np.ones((2, 3), bool)[:, ::2],
        np.array(3.0),
        np.arange(6, dtype=np.int32).reshape(2, 3).T,
    ],
)
def test_tensor_bytes_are_the_elements_in_c_order(array):
    """One helper gives every front end (HTTP binary, gRPC raw, shared memory) an output's bytes."""
    assert tensor_bytes(array).tobytes() == np.ascontiguousarray(array).tobytes()
    assert tensor_bytes(np.array(["a", "bc"], object)).tobytes() == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"
