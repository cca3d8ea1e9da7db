"""The PNG figures of `bench --plot`, `evaluate --plot` and `train --plot` (matplotlib, imported only
when a figure is drawn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from se_onnx.ir.model_io import atomic_output

if TYPE_CHECKING:
    from se_onnx.runtime.bench import BenchReport
    from se_onnx.runtime.evaluate import Comparison


def plot_report(report: BenchReport, path: str | os.PathLike) -> None:
    """A PNG a person can read at a glance: latency distributions side by side, the run-by-run
    ratio for two models, and for --se-cost the per-op-type cost of the SE blocks."""
    plt = pyplot()

    panels = 1 + (report.ratio is not None) + (report.se_cost is not None)
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    names = [Path(model.name).name for model in report.models]

    latency = axes.pop(0)
    series = [np.asarray(model.seconds) * 1e3 for model in report.models]
    latency.boxplot(series, whis=(5, 95), showfliers=False)
    latency.set_xticks(range(1, len(names) + 1), [_shorten(name, 36) for name in names])
    latency.set_ylabel("latency per batch (ms)")
    latency.set_title("latency per run (box p25–p75, whiskers p5–p95)")
    for index, model in enumerate(report.models, start=1):
        latency.annotate(
            f"median {model.latency_ms.median:.3g} ms",
            (index, model.latency_ms.median),
            xytext=(12, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )

    if report.ratio is not None:
        ratio_axis = axes.pop(0)
        ratios = series[1] / series[0]
        ratio_axis.plot(np.arange(1, len(ratios) + 1), ratios, ".", alpha=0.6, label="run by run")
        ratio_axis.axhline(report.ratio.median, color="C3", label=f"median {report.ratio.median:.3f}")
        ratio_axis.axhspan(report.ratio.p10, report.ratio.p90, color="C3", alpha=0.15, label="p10–p90")
        ratio_axis.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        # Outliers of a noisy machine would squash the band; they stay counted in the figures.
        low, high = np.percentile(ratios, [2, 98])
        margin = 0.1 * max(high - low, 0.02)
        ratio_axis.set_ylim(min(low, 1.0) - margin, max(high, 1.0) + margin)
        ratio_axis.set_xlabel("run")
        ratio_axis.set_ylabel("B / A")
        ratio_axis.set_title(
            f"latency ratio B/A\nA = {_shorten(names[0], 40)}, B = {_shorten(names[1], 40)}", fontsize=9
        )
        ratio_axis.legend(fontsize=8)

    if report.se_cost is not None:
        ops_axis = axes.pop(0)
        ops = [op for op in report.se_cost.ops if abs(op.diff_ms) > 0][:12][::-1]
        medians = np.array([op.diff_ms for op in ops])
        interval = np.array([[op.diff_ms - op.diff.ci_low for op in ops], [op.diff.ci_high - op.diff_ms for op in ops]])
        ops_axis.barh(
            [f"{op.role}: {op.op_type}" if op.op_type else op.role for op in ops],
            medians,
            xerr=interval.reshape(2, -1),
            color=["C3" if op.diff_ms > 0 else "C2" for op in ops],
            capsize=2,
        )
        ops_axis.axvline(0, color="grey", linewidth=1)
        ops_axis.set_xlabel("ms per batch, SE model − stripped (profiler; bars: 95 % interval)")
        cost = report.se_cost
        ops_axis.set_title(
            f"cost of {cost.blocks} SE blocks by role and op type\n"
            f"sum {cost.accounted_ms:+.3g} ms, measured {cost.ms_per_batch.median:+.3g} ms",
            fontsize=9,
        )

    figure.suptitle(f"{' vs '.join(names)} — {report.provider}, batch {report.batch}, {report.runs} runs", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def _shorten(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def plot_comparison(comparison: Comparison, path: str | os.PathLike) -> None:
    """A PNG of the models side by side: accuracy, latency, parameters and FLOPs."""
    plt = pyplot()

    models = comparison.evaluations
    names = [Path(model.model).name for model in models]
    panels: tuple[tuple[str, list[tuple[float, ...]], tuple[str, ...] | None], ...] = (
        ("top-1 / top-5 accuracy", [(m.top1, m.top5) for m in models], ("top-1", "top-5")),
        ("latency per sample (ms, median)", [(m.latency_ms,) for m in models], None),
        ("parameters", [(m.parameters,) for m in models], None),
        ("FLOPs per sample", [(m.flops,) for m in models], None),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(max(4.2, 1.4 * len(models)) * len(panels), 4))
    for axis, (title, values, labels) in zip(axes, panels):
        width = 0.8 / len(values[0])
        for series in range(len(values[0])):
            positions = np.arange(len(models)) + (series - (len(values[0]) - 1) / 2) * width
            bars = axis.bar(positions, [v[series] for v in values], width, label=labels[series] if labels else None)
            axis.bar_label(bars, fmt="%.4g", fontsize=8)
        axis.set_xticks(range(len(models)), names, fontsize=8, rotation=10)
        axis.set_title(title, fontsize=10)
        if labels:  # accuracy: zoomed in, since the differences worth seeing are small
            low = min(min(v) for v in values)
            bottom = max(0.0, low - 0.1 * (1 - low) - 0.01)
            axis.set_ylim(bottom, 1.0 + 0.08 * (1.0 - bottom))  # room for the bars' labels
            axis.legend(fontsize=8, loc="lower right")
    if len(models) == 2:
        ratio = comparison.ratios[0]
        title = (
            f"{names[1]} vs {names[0]}: Δtop-1 {100 * (models[1].top1 - models[0].top1):+.2f} points, "
            f"latency ×{ratio.median:.3f} (p10–p90 {ratio.p10:.3f}–{ratio.p90:.3f}), "
        )
    else:
        title = f"{len(models) - 1} models against {names[0]} (latency run by run, interleaved), "
    figure.suptitle(f"{title}{comparison.a.samples} samples, {comparison.a.provider}", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def pyplot():
    """matplotlib's pyplot on the Agg backend, which draws PNGs without a display."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike) -> None:
    """Write `figure` to `path` as a PNG, atomically, and free it."""
    with atomic_output(path) as staging:
        figure.savefig(staging, format="png", dpi=110)
    figure.clear()
    pyplot().close(figure)
