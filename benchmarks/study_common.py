"""What the studies in benchmarks/ share: running se-onnx commands in this process for their JSON
reports, and the statistics of a handful of seeds (spread, and a t-interval of paired differences,
without SciPy). Imported by the study scripts as `benchmarks.study_common`; the repository root is on
sys.path for them, as for every benchmark."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from collections.abc import Sequence

import numpy as np

from se_onnx.cli import main as se_onnx


def run_cli(command: list[str]) -> dict:
    """One se-onnx command in this process, its JSON report parsed (progress and tables silenced);
    a failing command ends the study with its exit status and the last of what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = se_onnx([*command, "--json"])
    if code != 0:
        said = " | ".join(err.getvalue().strip().splitlines()[-3:])
        raise SystemExit(f"se-onnx {' '.join(command)} exited {code}: {said}")
    return json.loads(out.getvalue())


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def t_quantile(probability: float, df: int) -> float:
    """Student's t quantile for `probability` in (0.5, 1) with `df` degrees of freedom: bisection on
    its CDF, the density integrated by Simpson's rule (1e-6 or better against tables; no SciPy)."""
    if not 0.5 < probability < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < probability < 1 and df ≥ 1, not {probability}, {df}")
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # P(T ≤ t) for t ≥ 0
        x = np.linspace(0.0, t, 4001)
        f = np.exp(log_scale - (df + 1) / 2 * np.log1p(x * x / df))
        return 0.5 + t / 4000 / 3 * float(f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of paired differences (one per seed) with its t-interval: mean ± t(n − 1) · sd / √n; the
    interval is None for fewer than two values. Also how many differences are above and below 0."""
    n = len(differences)
    mean = statistics.mean(differences)
    result = {
        "n": n,
        "mean": mean,
        "std": statistics.stdev(differences) if n > 1 else 0.0,
        "low": None,
        "high": None,
        "confidence": confidence,
        "positive": sum(d > 0 for d in differences),
        "negative": sum(d < 0 for d in differences),
    }
    if n > 1:
        half = t_quantile((1 + confidence) / 2, n - 1) * result["std"] / math.sqrt(n)
        result["low"], result["high"] = mean - half, mean + half
    return result
