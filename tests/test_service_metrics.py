"""Triton's metric names and labels, process metrics, and the Grafana dashboard in deploy/ checked
against the series a real server exposes."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
from service_helpers import (
    ROOT,
    infer_json,
    relu_neg_model,
    serve,
    start_server,
    stop_server,
    write_repo,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "se-onnx-dashboard.json"
# A series name inside a PromQL expression (not a function, a label or a range).
SERIES = re.compile(r"\b((?:nv|se_onnx|process)_[a-z0-9_]+)\b")


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Series name → the label sets of its samples, from the text exposition format."""
    found: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', rest.rpartition("}")[0])) if rest else {}
            found.setdefault(name.split()[0], []).append(labels)
    return found


def _value(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    selector = f"{{{wanted}}}" if labels else ""
    match = re.search(rf"^{name}{re.escape(selector)} (\S+)$", text, re.M)
    assert match, f"{name}{{{wanted}}} not exposed"
    return float(match.group(1))


def test_triton_series_follow_the_statistics(tmp_path):
    root = write_repo(tmp_path, {"relu": relu_neg_model()})
    with serve(root) as client:
        for rows in (1, 2, 3):
            assert (
                client.post("/v2/models/relu/infer", json=infer_json("x", np.ones((rows, 4), np.float32))).status_code
                == 200
            )
        assert (
            client.post("/v2/models/relu/infer", json=infer_json("x", np.ones((1, 5), np.float32))).status_code == 400
        )
        text = client.get("/metrics").text
        (stats,) = client.get("/v2/models/relu/stats").json()["model_stats"]
    labels = {"model": "relu", "version": "1"}
    assert _value(text, "nv_inference_request_success", **labels) == 3
    assert _value(text, "nv_inference_request_failure", **labels) == 1
    assert _value(text, "nv_inference_count", **labels) == 6 == stats["inference_count"]
    assert _value(text, "nv_inference_exec_count", **labels) == 3 == stats["execution_count"]
    assert (
        _value(text, "nv_inference_request_duration_us", **labels) == stats["inference_stats"]["success"]["ns"] / 1000
    )
    assert _value(text, "nv_inference_compute_infer_duration_us", **labels) > 0
    assert _value(text, "nv_inference_pending_request_count", **labels) == 0
    for name in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "nv_cpu_memory_used_bytes",
    ):
        assert _value(text, name) > 0


@pytest.mark.slow
def test_the_grafana_dashboard_queries_what_a_real_server_exposes(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions.append(next(v for v in dashboard["templating"]["list"] if v["name"] == "model")["definition"])
    wanted = {name for expression in expressions for name in SERIES.findall(expression)}
    assert {"nv_inference_request_success", "nv_inference_queue_duration_us", "process_open_fds"} <= wanted
    process, url = start_server(write_repo(tmp_path, {"relu": relu_neg_model()}))
    try:
        httpx.post(
            f"http://{url}/v2/models/relu/infer", json=infer_json("x", np.ones((1, 4), np.float32))
        ).raise_for_status()
        exposed = _samples(httpx.get(f"http://{url}/metrics").text)
    finally:
        assert stop_server(process) == 0
    missing = sorted(name for name in wanted if name not in exposed)
    assert not missing, f"the dashboard queries series the server does not expose: {missing}"
    # Panels split and filter by model and version; every per-model series carries both labels.
    for expression in expressions:
        for name in SERIES.findall(expression):
            if "model" in expression and name.startswith(("nv_inference", "se_onnx")):
                assert all({"model", "version"} <= set(labels) for labels in exposed[name]), name
