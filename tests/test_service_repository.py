"""The model repository: layouts, config.json, version policies, failed models, the API-key-guarded
index/load/unload API, and unloading or reloading while requests are in flight."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import (
    infer_json,
    relu_neg_model,
    serve,
    serve_async,
    server_log,
    slow_model,
    start_server,
    stop_server,
    write_repo,
)

from service.app import create_app
from service.config import ServerSettings

KEY = {"X-API-Key": "s3cret"}


@pytest.fixture
def repo(tmp_path):
    root = write_repo(
        tmp_path / "repo",
        {
            "plain": relu_neg_model(),
            "all_versions": (relu_neg_model(), {"version_policy": {"all": {}}}, [1, 2, 5]),
            "specific": (relu_neg_model(), {"version_policy": {"specific": {"versions": [2]}}}, [1, 2, 3]),
        },
    )
    (root / "broken.onnx").write_bytes(b"not an onnx model")
    (root / "bad_config" / "1").mkdir(parents=True)
    (root / "bad_config" / "1" / "model.onnx").write_bytes((root / "plain.onnx").read_bytes())
    (root / "bad_config" / "config.json").write_text(json.dumps({"max_batch_size": -3}))
    return root


def _index(client) -> dict[tuple[str, str], dict]:
    response = client.post("/v2/repository/index", headers=KEY)
    assert response.status_code == 200, response.text
    return {(row["name"], row["version"]): row for row in response.json()}


def test_layouts_policies_and_failed_models(repo):
    with serve(repo, api_key="s3cret") as client:
        index = _index(client)
        assert index[("plain", "1")]["state"] == "READY"
        assert [v for (n, v) in index if n == "all_versions"] == ["1", "2", "5"]
        assert [v for (n, v) in index if n == "specific"] == ["2"]
        broken = index[("broken", "1")]
        assert broken["state"] == "UNAVAILABLE" and "cannot load" in broken["reason"]
        bad = index[("bad_config", "")]
        assert bad["state"] == "UNAVAILABLE" and "max_batch_size" in bad["reason"]
        # A failed model does not take the server down, and asking for it says why.
        assert client.get("/v2/health/ready").status_code == 200
        response = client.post("/v2/models/broken/infer", json=infer_json("x", np.ones((1, 4), np.float32)))
        # By name and the class of the failure: no paths, no ONNX Runtime internals (the index has them).
        assert response.json() == {"error": "model 'broken' is not ready: the file is not a valid ONNX model"}
        assert response.status_code == 503 and str(repo) in broken["reason"]
        assert client.get("/v2/models/broken/ready").status_code == 503
        assert client.get("/v2/models/all_versions").json()["versions"] == ["1", "2", "5"]
        assert client.get("/v2/models/all_versions/versions/2/ready").status_code == 200
        ready_only = client.post("/v2/repository/index", headers=KEY, json={"ready": True}).json()
        assert all(row["state"] == "READY" for row in ready_only) and len(ready_only) == 5


def test_server_is_not_ready_before_start_up(repo):
    client = TestClient(create_app(ServerSettings(model_repository=repo, provider="cpu")))  # lifespan not run
    response = client.get("/v2/health/ready")
    assert response.status_code == 503 and response.json() == {"error": "server is not ready"}
    assert client.get("/v2/health/live").status_code == 200


def test_repository_api_needs_a_configured_key(repo):
    with serve(repo) as client:
        response = client.post("/v2/repository/index")
        assert response.status_code == 403 and "--api-key" in response.json()["error"]
        assert client.post("/v2/repository/models/plain/unload", headers=KEY).status_code == 403
    with serve(repo, api_key="s3cret") as client:
        assert client.post("/v2/repository/index").status_code == 401
        assert client.post("/v2/repository/index", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v2/repository/index", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v2/repository/models/plain/unload").status_code == 401
        assert client.get("/v2/models/plain/ready").status_code == 200


def test_load_unload_reload_with_config(repo):
    with serve(repo, api_key="s3cret") as client:
        assert client.post("/v2/repository/models/plain/unload", headers=KEY).status_code == 200
        assert client.get("/v2/models/plain/ready").status_code == 503
        assert _index(client)[("plain", "1")] == {
            "name": "plain",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        assert client.post("/v2/repository/models/plain/load", headers=KEY).status_code == 200
        assert client.get("/v2/models/plain/ready").status_code == 200
        # A model added to the directory after start-up, loaded with a config given in the request.
        write_repo(repo, {"late": relu_neg_model()})
        config = json.dumps({"max_batch_size": 2, "instance_count": 2})
        response = client.post("/v2/repository/models/late/load", headers=KEY, json={"parameters": {"config": config}})
        assert response.status_code == 200, response.text
        metadata = client.get("/v2/models/late").json()
        assert metadata["parameters"]["max_batch_size"] == 2 and metadata["parameters"]["instance_count"] == 2
        triton_config = client.get("/v2/models/late/config").json()
        assert triton_config["max_batch_size"] == 2 and triton_config["input"][0]["dims"] == [4]
        assert triton_config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        too_many = client.post("/v2/models/late/infer", json=infer_json("x", np.ones((3, 4), np.float32)))
        assert too_many.status_code == 400 and "max_batch_size" in too_many.json()["error"]
        # Mistakes in load requests are the client's: 404 for no such model, 400 for a bad config.
        assert client.post("/v2/repository/models/ghost/load", headers=KEY).status_code == 404
        assert client.post("/v2/repository/models/ghost/unload", headers=KEY).status_code == 404
        bad = client.post("/v2/repository/models/late/load", headers=KEY, json={"parameters": {"config": "{nope"}})
        assert bad.status_code == 400 and "invalid model config" in bad.json()["error"]
        assert _index(client)[("late", "1")]["state"] == "READY"
        assert client.post("/v2/repository/models/late/load", headers=KEY, content=b"[1]").status_code == 400
        no_batch = json.dumps({"dynamic_batching": {}})
        response = client.post(
            "/v2/repository/models/late/load", headers=KEY, json={"parameters": {"config": no_batch}}
        )
        assert response.status_code == 400 and "dynamic_batching needs max_batch_size > 0" in response.json()["error"]
        # A reload that fails keeps the loaded version serving.
        (repo / "plain.onnx").write_bytes(b"corrupted")
        failed = client.post("/v2/repository/models/plain/load", headers=KEY)
        assert failed.status_code == 400 and "keep serving" in failed.json()["error"]
        assert (
            client.post("/v2/models/plain/infer", json=infer_json("x", np.ones((1, 4), np.float32))).status_code == 200
        )
        assert _index(client)[("plain", "1")]["state"] == "READY"


def test_unload_lets_in_flight_requests_finish(tmp_path):
    root = write_repo(tmp_path / "repo", {"slow": slow_model(1024, 12)})

    async def scenario():
        async with serve_async(root, api_key="s3cret") as (app, client):
            x = np.array([[3.0], [4.0]], np.float32)
            request = asyncio.create_task(client.post("/v2/models/slow/infer", json=infer_json("x", x)))
            model = app.state.data_plane.repository.get("slow")
            while not model.inflight:
                await asyncio.sleep(0.001)
            unload = await client.post("/v2/repository/models/slow/unload", headers=KEY)
            assert request.done(), "unload returned before the in-flight request finished"
            response = await request
            assert unload.status_code == 200
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [3.0, 4.0]
            after = await client.post("/v2/models/slow/infer", json=infer_json("x", x))
            assert after.status_code == 503

    asyncio.run(scenario())


def test_load_and_unload_during_traffic(tmp_path):
    root = write_repo(tmp_path / "repo", {"busy": relu_neg_model(), "other": relu_neg_model()})

    async def scenario():
        async with serve_async(root, api_key="s3cret") as (app, client):
            stop = asyncio.Event()
            results = []

            async def traffic(seed: int):
                rng = np.random.default_rng(seed)
                while not stop.is_set():
                    x = rng.standard_normal((2, 4)).astype(np.float32)
                    response = await client.post(
                        "/v2/models/busy/infer", json=infer_json("x", x, outputs=[{"name": "neg"}])
                    )
                    got = (
                        np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 4)
                        if response.status_code == 200
                        else None
                    )
                    results.append((response.status_code, got is not None and np.array_equal(got, -x)))

            workers = [asyncio.create_task(traffic(seed)) for seed in range(4)]
            for _ in range(3):
                assert (await client.post("/v2/repository/models/busy/load", headers=KEY)).status_code == 200  # reload
                assert (await client.post("/v2/repository/models/other/unload", headers=KEY)).status_code == 200
                assert (await client.post("/v2/repository/models/other/load", headers=KEY)).status_code == 200
            stop.set()
            await asyncio.gather(*workers)
            assert len(results) > 10
            assert all(status == 200 and correct for status, correct in results), results[:5]

    asyncio.run(scenario())


def test_load_refuses_model_files_and_a_config_that_is_no_string(repo):
    """Models come from the repository: `file:` parameters are a 400, as over gRPC, not ignored."""
    with serve(repo, api_key="s3cret") as client:
        sent = client.post(
            "/v2/repository/models/plain/load", json={"parameters": {"file:1/model.onnx": "b25ueA=="}}, headers=KEY
        )
        assert sent.status_code == 400 and "not supported" in sent.json()["error"], sent.text
        typed = client.post(
            "/v2/repository/models/plain/load", json={"parameters": {"config": {"max_batch_size": 8}}}, headers=KEY
        )
        assert typed.status_code == 400 and "must be a string" in typed.json()["error"], typed.text


def test_odd_folders_and_names_fail_their_model_only(tmp_path):
    """Versions are ASCII decimal numbers: "¹" passes str.isdigit() but is none. A bad version
    folder, a name no response can carry, an unreadable folder: that model is UNAVAILABLE with the
    reason, its load is a 400, and the others load and serve."""
    root = write_repo(
        tmp_path / "repo",
        {"plain": relu_neg_model(), "good": (relu_neg_model(), {"version_policy": {"all": {}}}, [1, 2])},
    )
    model = (root / "plain.onnx").read_bytes()
    for folder in ("superscript/¹", "mixed/1", "mixed/٣", "duplicate/1", "duplicate/01", "huge/99999999999999999999"):
        (root / folder).mkdir(parents=True)
        (root / folder / "model.onnx").write_bytes(model)
    (root / "good" / "notes").mkdir()  # a folder that is no version is ignored, as in Triton
    (root / "control\x01char.onnx").write_bytes(model)
    with open(bytes(root) + b"/bytes\xff.onnx", "wb") as file:  # not UTF-8
        file.write(model)
    with serve(root, api_key="s3cret") as client:
        index = _index(client)
        assert index[("plain", "1")]["state"] == "READY"
        assert [v for (n, v) in index if n == "good"] == ["1", "2"]
        for name, fragment in [
            ("superscript", "version folder '¹' is not a version"),
            ("mixed", "version folder '٣' is not a version"),
            ("duplicate", "are the same version"),
            ("huge", "is not a version"),
            ("control\\x01char", "control characters"),
            ("bytes\\udcff", "control characters"),
        ]:
            row = index[(name, "")]
            assert row["state"] == "UNAVAILABLE" and fragment in row["reason"], row
            response = client.post(f"/v2/repository/models/{name}/load", headers=KEY)
            assert response.status_code == 400 and fragment in response.json()["error"], response.text
        assert client.get("/v2/models/superscript/ready").status_code == 503
        error = client.get("/v2/models/superscript").json()["error"]
        assert error == "model 'superscript' is not ready: its version folders are invalid"
        assert client.get("/v2/models/good/versions/¹/ready").status_code == 404
        assert client.post("/v2/repository/models/nothing/load", headers=KEY).status_code == 404
        assert client.get("/v2/health/ready").status_code == 200
        response = client.post("/v2/models/good/infer", json=infer_json("x", np.ones((1, 4), np.float32)))
        assert response.status_code == 200, response.text


def _until(condition, timeout: float = 30.0, what: str = "the condition"):
    """Poll `condition` until it is truthy (and return it), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def test_a_load_past_its_budget_fails_and_stops_its_warm_up(tmp_path, caplog):
    root = write_repo(
        tmp_path / "repo",
        {"plain": relu_neg_model(), "slow": (slow_model(size=1024, matmuls=2), {"warmup": 1000}, [1])},
    )
    caplog.set_level(logging.INFO, logger="service.model")
    with serve(root, api_key="s3cret", model_load_timeout=0.5) as client:
        index = _index(client)
        assert index[("plain", "1")]["state"] == "READY"
        slow = index[("slow", "1")]
        assert slow["state"] == "UNAVAILABLE" and "--model-load-timeout (0.5 s)" in slow["reason"], slow
        error = client.get("/v2/models/slow").json()["error"]
        assert error == "model 'slow' is not ready: it took longer to load than the server allows"
        # The warm-up thread notices the flag between two runs and frees its session.
        _until(lambda: any(r.getMessage() == "load stopped" for r in caplog.records), what="the load to stop")
        response = client.post("/v2/repository/models/slow/load", headers=KEY)
        assert response.status_code == 400 and "--model-load-timeout" in response.json()["error"], response.text


@pytest.mark.slow
def test_unload_and_sigterm_are_not_held_up_by_a_loading_model(tmp_path):
    """A warm-up of 1000 slow runs (a minute or more): unload stops it at once, and so does SIGTERM,
    even with a load request still waiting for it."""
    import threading

    import httpx

    root = write_repo(tmp_path / "repo", {"slow": (slow_model(size=1024, matmuls=2), {"warmup": 1000}, [1])})
    process, url = start_server(root, env={"SE_ONNX_API_KEY": "s3cret"}, wait="live")
    try:
        with httpx.Client(base_url=f"http://{url}", headers=KEY, timeout=60) as client:

            def state() -> str:
                rows = client.post("/v2/repository/index").json()
                return next((row["state"] for row in rows if row["name"] == "slow"), "")

            _until(lambda: state() == "LOADING", what="the load to start")
            started = time.monotonic()
            assert client.post("/v2/repository/models/slow/unload").status_code == 200
            assert time.monotonic() - started < 10
            assert state() == "UNAVAILABLE"
            _until(lambda: client.get("/v2/health/ready").status_code == 200, what="start-up to end")

            # A load request waiting on a long warm-up does not hold SIGTERM up.
            threading.Thread(target=lambda: client.post("/v2/repository/models/slow/load"), daemon=True).start()
            _until(lambda: state() == "LOADING", what="the load to start again")
            started = time.monotonic()
            assert stop_server(process) == 0
            assert time.monotonic() - started < 10, server_log(process)[-2000:]
    finally:
        stop_server(process)
