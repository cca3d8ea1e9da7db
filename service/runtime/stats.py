"""Per-model counters in the form of Triton's statistics extension (GET /v2/models[/{m}]/stats)."""

from __future__ import annotations

import threading
import time


def _duration(count: int, ns: int) -> dict:
    return {"count": count, "ns": ns}


class ModelStats:
    """Updated from the event loop (requests) and the inference threads (runs), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = {key: [0, 0] for key in ("success", "fail", "queue", "compute_infer")}
        self._batches: dict[int, list[int]] = {}
        self._inferences = 0
        self._executions = 0
        self._last_ms = 0

    def _add(self, key: str, seconds: float) -> None:
        total = self._totals[key]
        total[0] += 1
        total[1] += int(seconds * 1e9)

    def request(self, ok: bool, seconds: float) -> None:
        with self._lock:
            self._add("success" if ok else "fail", seconds)
            self._last_ms = int(time.time() * 1000)

    def queued(self, seconds: float) -> None:
        with self._lock:
            self._add("queue", seconds)

    def computed(self, rows: int, seconds: float) -> None:
        with self._lock:
            self._add("compute_infer", seconds)
            self._inferences += rows
            self._executions += 1
            batch = self._batches.setdefault(rows, [0, 0])
            batch[0] += 1
            batch[1] += int(seconds * 1e9)

    def to_dict(self, name: str, version: str) -> dict:
        zero = _duration(0, 0)
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self._last_ms,
                "inference_count": self._inferences,
                "execution_count": self._executions,
                "inference_stats": {
                    **{key: _duration(*total) for key, total in self._totals.items()},
                    # Inputs and outputs are handed to ONNX Runtime without a separate copy step.
                    "compute_input": zero,
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },  # fmt: skip
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": zero,
                        "compute_infer": _duration(*total),
                        "compute_output": zero,
                    }
                    for size, total in sorted(self._batches.items())
                ],
            }
