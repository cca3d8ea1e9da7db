"""Tests of `se-onnx bench`: the interleaved timing loop, ratios, the report, SE cost, the chart, errors."""

from __future__ import annotations

import json
import re
import struct

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from models import build_samples
from se_onnx import InsertOptions, SeOnnxError, insert_se, save_model
from se_onnx.bench import (
    BenchOptions,
    _kernel_ms_per_op,
    benchmark,
    pairwise_ratio,
    se_cost,
    time_interleaved,
)
from se_onnx.cli import main

FAST = ["--runs", "3", "--warmup", "1"]
LATENCY_KEYS = {"median", "p90", "mean", "min"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain model, the same with random-init SE blocks, and a model with other inputs."""
    folder = tmp_path_factory.mktemp("bench")
    plain = folder / "resnet.onnx"
    onnx.save(build_samples.resnet_like(opset=13), plain)
    with_se, report = insert_se(ir.load(plain), InsertOptions(where="residual", init="random"))
    save_model(with_se, folder / "resnet_se.onnx")
    other = folder / "vgg.onnx"
    onnx.save(build_samples.vgg_like(opset=13), other)
    return {"plain": str(plain), "se": str(folder / "resnet_se.onnx"), "other": str(other), "blocks": len(report.blocks)}


class FakeClock:
    """perf_counter's stand-in: tasks advance it by the durations they are given."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def task(self, name: str, durations: list[float]):
        def run() -> None:
            self.calls.append(name)
            self.now += durations.pop(0)

        return run


def test_interleaved_runs_alternate_and_time_each_call():
    clock = FakeClock()
    a = clock.task("A", [9.0, 1.0, 2.0, 4.0])  # the first call is the warm-up, never timed
    b = clock.task("B", [9.0, 1.5, 2.5, 5.0])
    seconds = time_interleaved([a, b], runs=3, warmup=1, clock=clock)
    assert clock.calls == ["A", "B"] * 4
    assert seconds == [[1.0, 2.0, 4.0], [1.5, 2.5, 5.0]]


def test_ratio_is_taken_pair_by_pair():
    # The machine slows down 4× mid-run; pairwise ratios see B as 1.25× A throughout.
    a = [1.0, 1.0, 1.0, 4.0, 4.0]
    b = [1.25, 1.25, 1.25, 5.0, 5.0]
    ratio = pairwise_ratio(a, b)
    assert ratio.median == pytest.approx(1.25) and ratio.p10 == pytest.approx(1.25) and ratio.p90 == pytest.approx(1.25)
    spread = pairwise_ratio([1.0] * 10, [1.0 + i / 10 for i in range(10)])
    assert spread.p10 == pytest.approx(1.09) and spread.median == pytest.approx(1.45) and spread.p90 == pytest.approx(1.81)
    with pytest.raises(ValueError):
        pairwise_ratio([1.0], [1.0, 2.0])


def test_progress_bar_only_on_long_runs(capsys):
    clock = FakeClock()
    slow = clock.task("slow", [10.0] * 4)
    time_interleaved([slow], runs=3, warmup=1, clock=clock, progress=True, label="slowmodel")
    assert "slowmodel" in capsys.readouterr().err
    fast = clock.task("fast", [0.001] * 4)
    time_interleaved([fast], runs=3, warmup=1, clock=clock, progress=True, label="fastmodel")
    slow = clock.task("slow", [10.0] * 4)
    time_interleaved([slow], runs=3, warmup=1, clock=clock, progress=False, label="quiet")
    assert capsys.readouterr().err == ""


def test_json_report_of_one_model(models, capsys):
    assert main(["bench", models["plain"], "--batch", "2", "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"models", "provider", "batch", "runs", "warmup", "threads", "ratio", "se_cost"}
    assert (report["provider"], report["batch"], report["runs"], report["warmup"]) == ("cpu", 2, 3, 1)
    assert report["ratio"] is None and report["se_cost"] is None
    [model] = report["models"]
    assert set(model) == {"name", "latency_ms", "throughput"} and model["name"] == models["plain"]
    latency = model["latency_ms"]
    assert set(latency) == LATENCY_KEYS
    assert 0 < latency["min"] <= latency["median"] <= latency["p90"]
    assert model["throughput"] == pytest.approx(2 / (latency["median"] / 1e3))


def test_two_models_report_the_pairwise_ratio(models, capsys):
    assert main(["bench", models["plain"], models["se"], "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in report["models"]] == [models["plain"], models["se"]]
    ratio = report["ratio"]
    assert set(ratio) == {"median", "p10", "p90"}
    assert 0 < ratio["p10"] <= ratio["median"] <= ratio["p90"]


def test_text_report(models, capsys):
    assert main(["bench", models["plain"], models["se"], *FAST]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "items/s" in out and "B/A run by run: median" in out


def test_se_cost_breaks_the_blocks_down_by_op_type(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ONNX Runtime writes its trace into the working directory
    report = se_cost(models["se"], BenchOptions(runs=3, warmup=1))
    assert list(tmp_path.iterdir()) == []  # trace deleted, no stripped model left on disk
    cost = report.se_cost
    assert cost.blocks == models["blocks"] and cost.profiled_runs == 3
    assert report.ratio == cost.ratio and report.models[1].name == models["se"]
    ops = {op.op_type: op for op in cost.ops}
    # ONNX Runtime fuses each Gemm with the activation after it (FusedGemm), so Sigmoid may not show.
    se_ops = {"ReduceMean", "Mul"} | ({"Gemm", "FusedGemm"} & set(ops))
    assert {"ReduceMean", "Mul"} <= set(ops) and se_ops & {"Gemm", "FusedGemm"}
    for op_type in se_ops - {"Gemm"}:  # the head's Gemm runs in both models
        assert ops[op_type].se_ms > 0 and ops[op_type].stripped_ms == 0, op_type
    assert ops["Conv"].stripped_ms > 0
    assert [op.diff_ms for op in cost.ops] == sorted((op.diff_ms for op in cost.ops), reverse=True)


def test_se_cost_json(models, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", models["se"], "--se-cost", "--json", *FAST]) == 0
    cost = json.loads(capsys.readouterr().out)["se_cost"]
    assert set(cost) == {"blocks", "ratio", "ms_per_batch", "profiled_runs", "ops"}
    assert set(cost["ms_per_batch"]) == {"median", "p10", "p90"}
    assert all(set(op) == {"op_type", "se_ms", "stripped_ms", "diff_ms"} for op in cost["ops"])
    assert list(tmp_path.iterdir()) == []


def test_kernel_times_skip_the_warmup_runs():
    def run(ts: int) -> dict:
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 50}

    def kernel(ts: int, op: str, dur: int) -> dict:
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        run(0), kernel(1, "Conv", 9000),  # warm-up
        run(100), kernel(101, "Conv", 1000), kernel(102, "Mul", 500),
        {"cat": "Node", "name": "n103_fence_before", "ts": 103, "dur": 7000, "args": {"op_name": "Mul"}},
        run(200), kernel(201, "Conv", 3000),
    ]
    assert _kernel_ms_per_op(events, skip_runs=1) == {"Conv": 2.0, "Mul": 0.25}
    assert _kernel_ms_per_op(events, skip_runs=3) == {}


@pytest.mark.parametrize("extra", [[], ["--se-cost"]])
def test_plot_writes_a_png(models, tmp_path, monkeypatch, extra, capsys):
    monkeypatch.chdir(tmp_path)
    chart = tmp_path / "chart.png"
    args = [models["se"], *extra] if extra else [models["plain"], models["se"]]
    assert main(["bench", *args, "--plot", str(chart), *FAST]) == 0
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 800 and height > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png"]
    assert "chart written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.onnx"], "missing.onnx: no such file"),
        (["{plain}", "--runs", "0"], "--runs must be at least 1, not 0"),
        (["{plain}", "--warmup", "-1"], "--warmup must be 0 or more"),
        (["{plain}", "--batch", "0"], "--batch must be at least 1"),
        (["{plain}", "{other}"], "take different inputs: input tensor\\(float\\) \\['N', 3, 32, 32\\] vs"),
        (["{plain}", "--se-cost"], "--se-cost needs a model with SE blocks, and it has none"),
        (["{se}", "{plain}", "--se-cost"], "--se-cost takes one model"),
        (["{plain}", "--plot", "chart.svg"], "--plot writes a PNG"),
    ],
)
def test_errors_are_one_line(models, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *FAST, *(a.format(**models) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("se-onnx: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_refuses_another_batch(tmp_path):
    path = tmp_path / "fixed.onnx"
    onnx.save(build_samples.resnet_like(opset=13, batch=4), path)
    report = benchmark([path], BenchOptions(runs=1, warmup=0))
    assert report.batch == 4
    with pytest.raises(SeOnnxError, match="fixed batch of 4; --batch 2 does not apply"):
        benchmark([path], BenchOptions(runs=1, warmup=0, batch=2))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused(models, capsys):
    assert main(["bench", models["plain"], "--provider", "cuda", *FAST]) == 2
    assert "the cuda provider (CUDAExecutionProvider) is not available" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs CUDA")
def test_cuda_bench(models, capsys):
    assert main(["bench", models["plain"], models["se"], "--provider", "cuda", "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provider"] == "cuda" and report["ratio"]["median"] > 0
