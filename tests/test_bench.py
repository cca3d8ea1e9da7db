"""Tests of `se-onnx bench`: the interleaved timing loop, ratios, the report, SE cost, the chart, errors."""

from __future__ import annotations

import json
import re
import struct
from collections import Counter

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from models import build_samples
from se_onnx import InsertOptions, SeOnnxError, insert_se, save_model
from se_onnx.cli import main
from se_onnx.cli.bench import _print_se_cost
from se_onnx.runtime.bench import BenchOptions, benchmark
from se_onnx.runtime.profile import (
    BETWEEN_ROLE,
    LAYOUT_ROLE,
    MODEL_ROLE,
    SE_ROLE,
    OpTime,
    SeCost,
    _cost_report,
    _role_classifier,
    _times_per_run,
    op_differences,
    se_cost,
)
from se_onnx.runtime.stats import Difference, Spread, median_interval, pairwise_ratio
from se_onnx.runtime.timing import time_interleaved

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
    other = folder / "fixed_batch.onnx"
    onnx.save(build_samples.resnet_like(opset=13, batch=2), other)
    return {
        "plain": str(plain),
        "se": str(folder / "resnet_se.onnx"),
        "other": str(other),
        "blocks": len(report.blocks),
    }


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


def test_rotated_rounds_alternate_the_order_and_keep_the_pairs():
    clock = FakeClock()
    a = clock.task("A", [1.0, 2.0, 3.0, 4.0])
    b = clock.task("B", [10.0, 20.0, 30.0, 40.0])
    seconds = time_interleaved([a, b], runs=4, warmup=0, clock=clock, rotate=True)
    assert clock.calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert seconds == [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]]


def test_ratio_is_taken_pair_by_pair():
    # The machine slows down 4× mid-run; pairwise ratios see B as 1.25× A throughout.
    a = [1.0, 1.0, 1.0, 4.0, 4.0]
    b = [1.25, 1.25, 1.25, 5.0, 5.0]
    ratio = pairwise_ratio(a, b)
    assert ratio.median == pytest.approx(1.25) and ratio.p10 == pytest.approx(1.25) and ratio.p90 == pytest.approx(1.25)
    spread = pairwise_ratio([1.0] * 10, [1.0 + i / 10 for i in range(10)])
    assert (
        spread.p10 == pytest.approx(1.09) and spread.median == pytest.approx(1.45) and spread.p90 == pytest.approx(1.81)
    )
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


def test_se_cost_breaks_the_blocks_down_by_role_and_op_type(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ONNX Runtime writes its traces into the working directory
    report = se_cost(models["se"], BenchOptions(runs=4, warmup=1))
    assert list(tmp_path.iterdir()) == []  # traces deleted, no stripped model left on disk
    cost = report.se_cost
    assert cost.blocks == models["blocks"] and cost.profiled_runs == 4  # as many as the timed runs
    assert report.ratio == cost.ratio and report.models[1].name == models["se"]
    ops = {(op.role, op.op_type): op for op in cost.ops}
    se_ops = {op_type for role, op_type in ops if role == SE_ROLE}
    # ONNX Runtime fuses each Gemm with the activation after it (FusedGemm), so Sigmoid may not show.
    assert {"ReduceMean", "Mul"} <= se_ops and se_ops & {"Gemm", "FusedGemm"}
    for op_type in se_ops:
        op = ops[SE_ROLE, op_type]
        assert op.se_ms > 0 and op.stripped_ms == 0 and not op.diff.within_noise, op_type
    assert ops[MODEL_ROLE, "Conv"].stripped_ms > 0 and (MODEL_ROLE, "Mul") not in ops
    assert ops[BETWEEN_ROLE, ""].stripped_ms > 0
    assert [op.diff_ms for op in cost.ops] == sorted((op.diff_ms for op in cost.ops), reverse=True)
    assert cost.accounted_ms == pytest.approx(sum(op.diff_ms for op in cost.ops))


def test_se_cost_of_each_kind_names_its_blocks(tmp_path, monkeypatch, capsys):
    """--block eca costs the ECA blocks alone, their nodes a role of their own; --block all costs
    every kind at once, each under its own role."""
    monkeypatch.chdir(tmp_path)
    original = ir.from_proto(build_samples.resnet_like(opset=13))
    with_eca, _ = insert_se(original, InsertOptions(block="eca"))
    both, _ = insert_se(with_eca, InsertOptions(where="conv", nodes=("conv_0",)))
    save_model(both, tmp_path / "both.onnx")
    report = se_cost(tmp_path / "both.onnx", BenchOptions(runs=3, warmup=1), block="eca")
    assert report.se_cost.kinds == {"eca": 2} and report.models[0].name.endswith("without ECA blocks")
    roles = {op.role for op in report.se_cost.ops}
    assert "ECA block" in roles and SE_ROLE not in roles
    report = se_cost(tmp_path / "both.onnx", BenchOptions(runs=3, warmup=1), block="all")
    assert report.se_cost.kinds == {"eca": 2, "se": 1}
    assert {"ECA block", SE_ROLE} <= {op.role for op in report.se_cost.ops}
    assert main(["bench", str(tmp_path / "both.onnx"), "--se-cost", "--block", "all", *FAST]) == 0
    assert "3 blocks (2 ECA, 1 SE) cost" in capsys.readouterr().out
    assert main(["bench", str(tmp_path / "both.onnx"), "--se-cost", "--block", "cbam", *FAST]) == 2
    assert "needs a model with CBAM blocks" in capsys.readouterr().err


def test_se_cost_json(models, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", models["se"], "--se-cost", "--json", *FAST]) == 0
    cost = json.loads(capsys.readouterr().out)["se_cost"]
    assert set(cost) == {
        "blocks",
        "kinds",
        "ratio",
        "ms_per_batch",
        "profiled_runs",
        "profiled_ms_per_batch",
        "accounted_ms",
        "tolerance_ms",
        "adds_up",
        "within_noise",
        "ops",
    }
    difference_keys = {"median", "p10", "p90", "ci_low", "ci_high", "within_noise"}
    assert set(cost["ms_per_batch"]) == set(cost["profiled_ms_per_batch"]) == difference_keys
    assert all(set(op) == {"role", "op_type", "se_ms", "stripped_ms", "diff_ms", "diff"} for op in cost["ops"])
    assert all(set(op["diff"]) == difference_keys for op in cost["ops"])
    assert cost["accounted_ms"] == pytest.approx(sum(op["diff_ms"] for op in cost["ops"]))
    assert list(tmp_path.iterdir()) == []


def _trace(kernels: list[tuple[str, str, float]], between_us: list[float]) -> list[dict]:
    """An ONNX Runtime profile of one run per entry of `between_us`: each run executes `kernels`
    ((node, op type, µs)) back to back, plus that run's time outside them."""
    events, clock = [], 0.0
    for between in between_us:
        start = clock
        for node, op_type, duration in kernels:
            events.append(
                {
                    "cat": "Node",
                    "name": f"{node}_kernel_time",
                    "ts": clock,
                    "dur": duration,
                    "args": {"op_name": op_type},
                }
            )
            clock += duration
        clock += between
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": clock - start})
        clock += 1000.0  # idle between runs: in no run
    return events


def test_breakdown_adds_up_to_the_measured_difference(capsys):
    # Recorded-style traces with known kernel times, so the arithmetic is checked, not the machine:
    # the SE model runs the stripped model's kernels plus its blocks' (0.3 ms), and both vary
    # outside kernels run to run.
    model = [("conv", "Conv", 800.0), ("relu", "Relu", 50.0)]
    se = [("se/pool", "ReduceMean", 100.0), ("se/fc", "Gemm", 120.0), ("se/scale", "Mul", 80.0)]
    role_of = _role_classifier(dict.fromkeys(("se/pool", "se/fc", "se/scale"), SE_ROLE))
    between = [20.0, 35.0, 25.0, 30.0, 22.0, 28.0, 40.0, 26.0]
    stripped_runs = _times_per_run(_trace(model, [0.0, *between]), skip_runs=1, role_of=role_of)
    se_runs = _times_per_run(_trace(model + se, [0.0, *between[::-1]]), skip_runs=1, role_of=role_of)
    assert len(se_runs) == len(between)
    for run, gap in zip(se_runs, between[::-1]):  # each run's entries add up to its duration
        assert sum(run.values()) == pytest.approx((850.0 + 300.0 + gap) / 1e3)
    ops = op_differences(stripped_runs, se_runs)
    by_key = {(op.role, op.op_type): op for op in ops}
    assert by_key[SE_ROLE, "Gemm"].diff_ms == pytest.approx(0.12) and by_key[MODEL_ROLE, "Conv"].diff_ms == 0
    # The timed runs (no profiler) measured the blocks' 0.3 ms with a little noise either way.
    measured = Difference.of([0.3 + noise for noise in (-0.02, 0.01, 0.0, 0.015, -0.01, 0.005, -0.005, 0.02)])
    profiled = Difference.of([sum(b.values()) - sum(a.values()) for a, b in zip(stripped_runs, se_runs)])
    cost = SeCost(
        blocks=1,
        ratio=Spread(1.35, 1.3, 1.4),
        ms_per_batch=measured,
        profiled_runs=len(se_runs),
        profiled_ms_per_batch=profiled,
        ops=ops,
    )
    assert cost.accounted_ms == pytest.approx(0.3 + by_key[BETWEEN_ROLE, ""].diff_ms)
    tolerance = (measured.ci_high - measured.ci_low) / 2 + (profiled.ci_high - profiled.ci_low) / 2
    assert cost.tolerance_ms == pytest.approx(tolerance)
    assert abs(cost.accounted_ms - measured.median) <= tolerance and cost.adds_up
    _print_se_cost(cost)
    assert "so the breakdown adds up" in capsys.readouterr().out
    # The same breakdown against a measured difference it cannot explain does not add up.
    cost.ms_per_batch = Difference.of([0.9 + noise for noise in (-0.01, 0.0, 0.01)])
    assert not cost.adds_up
    _print_se_cost(cost)
    assert "does not add up" in capsys.readouterr().out


def test_a_model_against_itself_is_within_noise(models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = ir.to_proto(ir.load(models["se"])).SerializeToString()
    # A 95 % interval misses a true difference of zero one time in twenty: three tries.
    for _ in range(3):
        report = _cost_report([model, model], ["a", "b"], BenchOptions(runs=15, warmup=2, threads=1), {}, Counter())
        if report.se_cost.within_noise:
            break
    cost = report.se_cost
    assert cost.within_noise and cost.ms_per_batch.ci_low <= 0 <= cost.ms_per_batch.ci_high
    assert all(op.role != SE_ROLE and op.se_ms > 0 for op in cost.ops if op.role != BETWEEN_ROLE)
    _print_se_cost(cost)
    assert "within noise: the runs cannot tell" in capsys.readouterr().out


def test_a_breakdown_the_profiler_swamps_says_so(capsys):
    def difference(median: float, half_width: float) -> Difference:
        return Difference(
            median, median - 2 * half_width, median + 2 * half_width, median - half_width, median + half_width
        )

    cost = SeCost(
        blocks=2,
        ratio=Spread(1.2, 1.1, 1.3),
        ms_per_batch=difference(0.03, 0.01),
        profiled_runs=50,
        profiled_ms_per_batch=difference(0.25, 0.02),
        ops=[
            OpTime(BETWEEN_ROLE, "", 0.1, 0.03, difference(0.07, 0.01)),
            OpTime(SE_ROLE, "Mul", 0.18, 0.0, difference(0.18, 0.01)),
        ],
    )
    assert cost.accounted_ms == pytest.approx(0.25) and cost.tolerance_ms == pytest.approx(0.03)
    assert not cost.adds_up and not cost.within_noise
    _print_se_cost(cost)
    out = capsys.readouterr().out
    assert "does not add up: more than ±0.030 ms off" in out and "profiler's own cost per node" in out
    assert "within noise:" not in out


def _run(ts: int, dur: int = 50) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _kernel(ts: int, op: str, dur: int, node: str | None = None) -> dict:
    return {"cat": "Node", "name": f"{node or f'n{ts}'}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_times_per_run_skip_warmup_attribute_roles_and_add_up_to_each_run():
    role = _role_classifier(dict.fromkeys(("blk/fc1", "blk/scale"), SE_ROLE))
    events = [
        _kernel(1, "Conv", 9000),
        _run(0, 10000),  # warm-up; ONNX Runtime lists a run after its kernels
        _run(20000, 3000),
        _kernel(20001, "Conv", 1000),
        _kernel(20002, "Mul", 500, "blk/scale"),
        _kernel(20003, "FusedGemm", 250, "fused blk/fc1"),
        _kernel(20004, "ReorderOutput", 100),
        {"cat": "Node", "name": "n20005_fence_before", "ts": 20005, "dur": 7000, "args": {"op_name": "Mul"}},
        _kernel(30001, "Conv", 2000),
        _run(30000, 2500),
    ]
    runs = _times_per_run(events, skip_runs=1, role_of=role)
    assert runs == [
        {
            (MODEL_ROLE, "Conv"): 1.0,
            (SE_ROLE, "Mul"): 0.5,
            (SE_ROLE, "FusedGemm"): 0.25,
            (LAYOUT_ROLE, "ReorderOutput"): 0.1,
            (BETWEEN_ROLE, ""): pytest.approx(1.15),
        },
        {(MODEL_ROLE, "Conv"): 2.0, (BETWEEN_ROLE, ""): pytest.approx(0.5)},
    ]
    assert [sum(run.values()) for run in runs] == [pytest.approx(3.0), pytest.approx(2.5)]
    assert _times_per_run(events, skip_runs=3, role_of=role) == []


def test_op_differences_are_medians_and_paired_runs():
    # One slow run of the baseline (the machine stalled) moves neither median nor difference,
    # where a mean of sums would put +3 ms on Conv; an op only one model runs counts as 0 in the other.
    baseline = [{(MODEL_ROLE, "Conv"): t} for t in (1.0, 1.1, 16.0, 0.9, 1.0)]
    candidate = [{(MODEL_ROLE, "Conv"): t, (SE_ROLE, "Mul"): 0.2} for t in (1.0, 1.1, 1.0, 0.9, 1.0)]
    ops = {(op.role, op.op_type): op for op in op_differences(baseline, candidate)}
    conv, mul = ops[MODEL_ROLE, "Conv"], ops[SE_ROLE, "Mul"]
    assert (conv.se_ms, conv.stripped_ms, conv.diff_ms) == (1.0, 1.0, 0.0) and conv.diff.within_noise
    assert (mul.se_ms, mul.stripped_ms, mul.diff_ms) == (0.2, 0.0, 0.2) and not mul.diff.within_noise
    with pytest.raises(ValueError):
        op_differences(baseline, candidate[:2])


def test_median_interval_holds_the_median_and_widens_with_few_runs():
    values = list(range(100))
    low, high = median_interval(values)
    assert (low, high) == (40, 59)  # the sign test's order statistics for n = 100
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few runs: the whole range
    assert Difference.of([-1.0, 0.5, 1.0, 2.0]).within_noise
    assert not Difference.of([0.5 + i / 100 for i in range(30)]).within_noise
    with pytest.raises(ValueError):
        median_interval([])


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
        (["{plain}", "{other}"], "take different inputs: .*\\['N', 3, 32, 32\\] vs .*\\[2, 3, 32, 32\\]"),
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


def test_se_cost_of_a_model_with_external_data(models, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    build_samples.save_with_external_data(onnx.load(models["se"]), folder / "se.onnx")
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2  # the model and its weights file
    monkeypatch.chdir(tmp_path)
    report = se_cost(folder / "se.onnx", BenchOptions(runs=2, warmup=0))
    assert report.se_cost.blocks == models["blocks"]
    assert sorted(p.name for p in folder.iterdir()) == files and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_progress_bar_without_warmup_judges_from_the_first_round(capsys):
    clock = FakeClock()
    slow = clock.task("slow", [10.0] * 3)
    time_interleaved([slow], runs=3, warmup=0, clock=clock, progress=True, label="coldstart")
    assert "coldstart" in capsys.readouterr().err


def test_symbolic_dims_with_other_names_are_the_same_input(models, tmp_path):
    proto = onnx.load(models["se"])
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch_size"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(proto, renamed)
    report = benchmark([models["plain"], renamed], BenchOptions(runs=1, warmup=0, batch=3))
    assert report.batch == 3 and report.ratio is not None
