"""The timing loop every benchmark shares: tasks called in turn, round by round, so that slow drifts
of the machine hit each alike."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from se_onnx.errors import SeOnnxError

# A progress bar appears only on runs expected to take longer than this.
_LONG_RUN_S = 3.0


def time_interleaved(
    tasks: Sequence[Callable[[], object]],
    *,
    runs: int,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    progress: bool = False,
    label: str = "bench",
    rotate: bool = False,
) -> list[list[float]]:
    """Call the tasks in turn (A B A B …), `warmup` rounds untimed then `runs` timed rounds;
    each task's durations in seconds, round by round.

    `rotate` starts each round one task later (A B, B A, A B … for two), so that no task always
    runs right after the same other one, which would bias their ratio by whatever the earlier task
    leaves behind (caches, clock speed).
    """
    if runs < 1:
        raise SeOnnxError(f"--runs must be at least 1, not {runs}")
    started = clock()
    for _ in range(warmup):
        for task in tasks:
            task()
    warmup_round_s = (clock() - started) / warmup if warmup else None
    seconds: list[list[float]] = [[] for _ in tasks]
    bar = None
    try:
        for index in range(runs):
            first = index % len(tasks) if rotate else 0
            for position in [*range(first, len(tasks)), *range(first)]:
                start = clock()
                tasks[position]()
                seconds[position].append(clock() - start)
            if bar is not None:
                bar.update()
            elif index == 0 and progress:
                # Expected length from a warm-up round, or without warm-up from this first round.
                round_s = warmup_round_s if warmup_round_s is not None else sum(d[0] for d in seconds)
                if round_s * runs > _LONG_RUN_S:
                    bar = _progress_bar(runs, label)
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    return seconds


def _progress_bar(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="run", file=sys.stderr, leave=False)
