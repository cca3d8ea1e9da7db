"""Triton's classification extension: top k per row as "score:index[:label]" BYTES, over JSON,
binary tensor data and gRPC."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper
from service_helpers import (
    binary_body,
    free_port,
    serve,
    split_binary,
    start_server,
    stop_server,
    write_repo,
)

SCORES = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], np.float32)


def _scores_model():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["scores"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = write_repo(
        tmp_path_factory.mktemp("repo"), {"labelled": (_scores_model(), None, [1]), "plain": _scores_model()}
    )
    (root / "labelled" / "labels.txt").write_text("cat\ndog\nbird\n")
    return root


def _request(k, **parameters):
    return {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": SCORES.tolist()}],
        "outputs": [{"name": "scores", "parameters": {"classification": k, **parameters}}],
    }


def test_top_k_with_and_without_labels_over_json(repo):
    with serve(repo) as client:
        assert "classification" in client.get("/v2").json()["extensions"]
        (output,) = client.post("/v2/models/labelled/infer", json=_request(2)).json()["outputs"]
        assert output == {
            "name": "scores",
            "datatype": "BYTES",
            "shape": [2, 2],
            "data": ["0.700000:1:dog", "0.200000:2:bird", "0.500000:0:cat", "0.400000:2:bird"],
        }
        (output,) = client.post("/v2/models/plain/infer", json=_request(5)).json()["outputs"]
        assert output["shape"] == [2, 3] and output["data"][:3] == ["0.700000:1", "0.200000:2", "0.100000:0"]


def test_top_k_as_binary_data(repo):
    with serve(repo) as client:
        header = _request(1, binary_data=True)
        header["inputs"][0].pop("data")
        header["inputs"][0]["parameters"] = {"binary_data_size": SCORES.nbytes}
        body, headers = binary_body(header, [SCORES.tobytes()])
        described, raw = split_binary(client.post("/v2/models/labelled/infer", content=body, headers=headers))
        assert described["outputs"][0]["datatype"] == "BYTES" and described["outputs"][0]["shape"] == [2, 1]
        first = b"0.700000:1:dog"
        assert raw.startswith(len(first).to_bytes(4, "little") + first)


@pytest.mark.parametrize("k", [0, -1, True, "2", 1.5])
def test_a_bad_k_is_a_400(repo, k):
    with serve(repo) as client:
        response = client.post("/v2/models/plain/infer", json=_request(k))
        assert response.status_code == 400 and "classification must be a positive integer" in response.json()["error"]


def test_over_grpc(repo):
    grpc_port = free_port()
    process, _ = start_server(repo, grpc_port=grpc_port)
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = triton_grpc.InferInput("x", [2, 3], "FP32")
        x.set_data_from_numpy(SCORES)
        result = client.infer("labelled", [x], outputs=[triton_grpc.InferRequestedOutput("scores", class_count=2)])
        assert result.as_numpy("scores").tolist() == [
            [b"0.700000:1:dog", b"0.200000:2:bird"],
            [b"0.500000:0:cat", b"0.400000:2:bird"],
        ]
    finally:
        assert stop_server(process) == 0
