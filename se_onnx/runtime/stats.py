"""Statistics of timed runs: latency summaries, run-by-run ratios and differences, and a
distribution-free confidence interval of the median."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Latency:
    """Latency of one run (one batch), in milliseconds."""

    median: float
    p90: float
    mean: float
    min: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.mean()), float(ms.min()))


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of pair-by-pair values, with their 10th and 90th percentiles."""

    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        array = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(array)), float(np.percentile(array, 10)), float(np.percentile(array, 90)))


def pairwise_ratio(a: Sequence[float], b: Sequence[float]) -> Spread:
    """B/A run by run (run i of B over run i of A), summarized."""
    if len(a) != len(b) or not a:
        raise ValueError("pairwise_ratio needs two equally long, non-empty series")
    return Spread.of([tb / ta for ta, tb in zip(a, b)])


@dataclasses.dataclass(frozen=True)
class Difference:
    """A difference taken run by run (B − A, paired runs): its median, the p10–p90 spread of single
    runs, and a 95 % confidence interval of the median (`ci_low`–`ci_high`)."""

    median: float
    p10: float
    p90: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Difference:
        array = np.sort(np.asarray(values, dtype=np.float64))
        low, high = median_interval(array)
        return cls(float(np.median(array)), float(np.percentile(array, 10)), float(np.percentile(array, 90)), low, high)

    @property
    def within_noise(self) -> bool:
        """Whether the runs cannot tell this difference from zero (its interval holds 0)."""
        return self.ci_low <= 0.0 <= self.ci_high

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"within_noise": self.within_noise}


def median_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the order statistics that the sign
    test puts around it (normal approximation of the binomial; the whole range for a few values)."""
    array = np.sort(np.asarray(values, dtype=np.float64))
    if not array.size:
        raise ValueError("median_interval needs at least one value")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    lowest = max(int(np.floor((array.size - z * np.sqrt(array.size)) / 2)), 0)
    return float(array[lowest]), float(array[array.size - 1 - lowest])
