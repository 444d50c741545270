"""Helpers shared by the benchmark scripts (not a test module).

Benchmarks print ratios of two things measured side by side in one run:
the machines are noisy, so absolute times mean little and nothing here is
asserted by the test suite.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], *, repeat: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds over `repeat` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(a: Callable[[], object], b: Callable[[], object], *, rounds: int, repeat: int) -> tuple[float, float]:
    """Median times of a and b, alternating rounds so drift hits both alike."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(median_time(a, repeat=repeat, warmup=0))
        tb.append(median_time(b, repeat=repeat, warmup=0))
    return statistics.median(ta), statistics.median(tb)


def fmt_time(s: float) -> str:
    return f"{s * 1e3:9.3f} ms" if s >= 1e-3 else f"{s * 1e6:9.1f} us"
