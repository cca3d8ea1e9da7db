"""Dynamic batching under concurrent requests, queue limits, timeouts, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import re

import numpy as np
from service_helpers import (
    gather_model,
    identity_model,
    infer_json,
    relu_neg_model,
    serve,
    serve_async,
    slow_model,
    write_repo,
)


def _metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$"
    for match in re.finditer(pattern, text, re.MULTILINE):
        if all(part in match["labels"].split(",") for part in wanted.split(",")):
            return float(match["value"])
    raise KeyError(f"{name}{{{wanted}}} not in metrics")


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(tmp_path):
    config = {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_us": 200_000}}
    root = write_repo(tmp_path / "repo", {"batched": (relu_neg_model(), config, [1])})

    async def scenario():
        async with serve_async(root) as (app, client):
            inputs = [np.full((1 + i % 3, 4), i + 1, np.float32) * [1, -1, 2, -2] for i in range(24)]
            responses = await asyncio.gather(
                *(
                    client.post("/v2/models/batched/infer", json=infer_json("x", x, id=str(i)))
                    for i, x in enumerate(inputs)
                )
            )
            for i, (x, response) in enumerate(zip(inputs, responses)):
                assert response.status_code == 200, response.text
                result = response.json()
                assert result["id"] == str(i)
                outputs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in result["outputs"]}
                np.testing.assert_array_equal(outputs["relu"], np.maximum(x, 0))
                np.testing.assert_array_equal(outputs["neg"], -x)
            text = (await client.get("/metrics")).text
            labels = {"model": "batched", "version": "1"}
            runs = _metric(text, "se_onnx_inference_batch_size_count", **labels)
            rows = _metric(text, "se_onnx_inference_batch_size_sum", **labels)
            assert rows == sum(x.shape[0] for x in inputs)  # warm-up runs are not counted
            assert runs < len(inputs) / 2, f"{runs} runs for {len(inputs)} requests: not batched"
            assert _metric(text, "se_onnx_inference_queue_duration_seconds_count", **labels) == len(inputs)

    asyncio.run(scenario())


def test_full_queue_is_503_and_oversized_batch_400(tmp_path):
    config = {
        "max_batch_size": 4,
        "instance_count": 1,
        "dynamic_batching": {"max_queue_delay_us": 0, "max_queue_size": 2},
    }
    root = write_repo(tmp_path / "repo", {"slow": (slow_model(1024, 8), config, [1])})

    async def scenario():
        async with serve_async(root) as (app, client):
            xs = [np.full((4, 1), i, np.float32) for i in range(8)]
            responses = await asyncio.gather(
                *(client.post("/v2/models/slow/infer", json=infer_json("x", x)) for x in xs)
            )
            statuses = [r.status_code for r in responses]
            assert 503 in statuses and 200 in statuses, statuses
            for x, response in zip(xs, responses):
                if response.status_code == 503:
                    assert "queue is full" in response.json()["error"]
                else:
                    assert response.json()["outputs"][0]["data"] == x.reshape(-1).tolist()
            too_big = await client.post("/v2/models/slow/infer", json=infer_json("x", np.ones((5, 1), np.float32)))
            assert too_big.status_code == 400 and "max_batch_size 4" in too_big.json()["error"]

    asyncio.run(scenario())


def test_request_timeout_is_503(tmp_path):
    root = write_repo(tmp_path / "repo", {"slow": slow_model(1024, 8)})
    with serve(root) as client:
        body = infer_json("x", np.ones((1, 1), np.float32), parameters={"timeout": 1000})  # 1 ms, in µs as Triton
        response = client.post("/v2/models/slow/infer", json=body)
        assert response.status_code == 503 and "timed out" in response.json()["error"]
    with serve(root, request_timeout=0.001) as client:
        response = client.post("/v2/models/slow/infer", json=infer_json("x", np.ones((1, 1), np.float32)))
        assert response.status_code == 503 and "timed out after 0.001 s" in response.json()["error"]


def test_metrics_count_successes_failures_and_durations(tmp_path):
    root = write_repo(tmp_path / "repo", {"relu": relu_neg_model()})
    with serve(root) as client:
        for _ in range(3):
            assert (
                client.post("/v2/models/relu/infer", json=infer_json("x", np.ones((2, 4), np.float32))).status_code
                == 200
            )
        assert (
            client.post("/v2/models/relu/infer", json=infer_json("x", np.ones((2, 5), np.float32))).status_code == 400
        )
        response = client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
        labels = {"model": "relu", "version": "1"}
        assert _metric(text, "se_onnx_inference_request_success_total", **labels) == 3
        assert _metric(text, "se_onnx_inference_request_failure_total", **labels) == 1
        assert _metric(text, "se_onnx_inference_request_duration_seconds_count", **labels) == 3
        assert (
            _metric(text, "se_onnx_inference_compute_duration_seconds_count", **labels) == 3
        )  # warm-up runs are not counted
        assert _metric(text, "se_onnx_inference_batch_size_sum", **labels) == 6  # 3 × 2 rows
        assert _metric(text, "se_onnx_inference_request_duration_seconds_sum", **labels) > 0
        # The same counts in Triton's statistics extension.
        (stats,) = client.get("/v2/models/relu/stats").json()["model_stats"]
        assert stats["name"] == "relu" and stats["version"] == "1"
        assert stats["inference_count"] == 6 and stats["execution_count"] == 3
        assert stats["inference_stats"]["success"]["count"] == 3 and stats["inference_stats"]["fail"]["count"] == 1
        assert stats["inference_stats"]["compute_infer"]["ns"] > 0
        assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [(2, 3)]
        assert client.get("/v2/models/stats").json()["model_stats"][0]["inference_count"] == 6
        assert client.get("/v2/models/missing/stats").status_code == 404


def test_session_per_instance_serves_concurrent_requests(tmp_path):
    config = {"instance_count": 3, "session_per_instance": True}
    root = write_repo(tmp_path / "repo", {"relu": (relu_neg_model(), config, [1])})

    async def scenario():
        async with serve_async(root) as (app, client):
            model = app.state.data_plane.repository.get("relu")
            assert model._pool.qsize() == 3
            metadata = (await client.get("/v2/models/relu")).json()["parameters"]
            assert metadata["instance_count"] == 3 and metadata["session_per_instance"] is True
            inputs = [np.full((2, 4), i - 10, np.float32) for i in range(20)]
            responses = await asyncio.gather(
                *(client.post("/v2/models/relu/infer", json=infer_json("x", x)) for x in inputs)
            )
            for x, response in zip(inputs, responses):
                relu = next(o for o in response.json()["outputs"] if o["name"] == "relu")
                assert relu["data"] == np.maximum(x, 0).reshape(-1).tolist()
            assert model._pool.qsize() == 3  # every borrowed session came back

    asyncio.run(scenario())


def test_requests_of_different_shapes_are_never_mixed_in_a_batch(tmp_path):
    config = {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_us": 100_000}}
    root = write_repo(tmp_path / "repo", {"ident": (identity_model(["FP32"], shape=("N", "M")), config, [1])})

    async def scenario():
        async with serve_async(root) as (app, client):
            inputs = [np.full((1 + i % 2, 2 + i % 3), i, np.float32) for i in range(12)]
            responses = await asyncio.gather(
                *(client.post("/v2/models/ident/infer", json=infer_json("in_FP32", x)) for x in inputs)
            )
            for x, response in zip(inputs, responses):
                assert response.status_code == 200, response.text
                (output,) = response.json()["outputs"]
                assert output["shape"] == list(x.shape) and output["data"] == x.reshape(-1).tolist()
            (stats,) = (await client.get("/v2/models/ident/stats")).json()["model_stats"]
            assert 3 <= stats["execution_count"] < len(inputs)  # three widths: at least three batches

    asyncio.run(scenario())


def test_a_request_that_fails_its_batch_does_not_fail_the_others(tmp_path):
    """An index out of range fails Gather for the whole batch: the others still get their answers."""
    config = {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_us": 200_000}, "warmup": 0}
    root = write_repo(tmp_path / "repo", {"gather": (gather_model(), config, [1])})

    async def scenario():
        async with serve_async(root) as (app, client):
            indices = [0, 7, 1, 2]
            responses = await asyncio.gather(
                *(
                    client.post("/v2/models/gather/infer", json=infer_json("x", np.array([[i]]), "INT64"))
                    for i in indices
                )
            )
            assert [r.status_code for r in responses] == [200, 400, 200, 200], [r.text for r in responses]
            assert [r.json()["outputs"][0]["data"] for r in responses if r.status_code == 200] == [
                [10.0],
                [20.0],
                [30.0],
            ]
            assert "idx=7" in responses[1].json()["error"]
            # The failed batch of four is not counted as run; the three good requests then ran alone.
            runs = _metric(
                (await client.get("/metrics")).text, "se_onnx_inference_batch_size_count", model="gather", version="1"
            )
            assert runs == 3

    asyncio.run(scenario())
