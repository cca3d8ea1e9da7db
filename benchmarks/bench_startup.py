"""Benchmarks what putting off sympy (`se_onnx.cli._deferred_imports`) saves at a command's start-up.

`se-onnx inspect` on a committed sample, each run a new process, timed wall to wall, interleaved
(the order alternating each round): as the command runs, and with sympy imported first, which
makes the deferral a no-op and so costs what onnx-ir's eager import of sympy costs. The figure is
the median of the run-by-run ratios (without / with), with the median of each.

    python benchmarks/bench_startup.py               # 20 rounds
    python benchmarks/bench_startup.py --runs 3      # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "models" / "resnet_tiny.onnx"
COMMAND = "import sys; from se_onnx.cli import main; sys.argv = ['se-onnx', 'inspect', {sample!r}]; sys.exit(main())"
CASES = {"deferred": COMMAND, "eager": "import sympy; " + COMMAND}


def _timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code.format(sample=str(SAMPLE))], cwd=REPO, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="interleaved rounds (default 20)")
    args = parser.parse_args()
    for code in CASES.values():  # warm-up: the page cache, bytecode
        _timed(code)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for index in range(args.runs):
        for name in list(CASES) if index % 2 == 0 else list(reversed(CASES)):
            times[name].append(_timed(CASES[name]))
    ratio = statistics.median(e / d for e, d in zip(times["eager"], times["deferred"]))
    print(
        f"se-onnx inspect: deferred {statistics.median(times['deferred']) * 1e3:.0f} ms, "
        f"eager {statistics.median(times['eager']) * 1e3:.0f} ms (medians of {args.runs}); eager/deferred {ratio:.2f}×"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
