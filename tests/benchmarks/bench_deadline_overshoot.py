"""How late a timed-out call returns: the overshoot past its deadline.

    python tests/benchmarks/bench_deadline_overshoot.py [--runs 300]

Each row runs a call that needs far more than its timeout, `--runs` times,
and prints the overshoot (wall time from the call to its OperationTimeout,
minus the timeout) as p50 / p99 / max:

  tokenize   timeout 50 ms: a session tokenizing 10 MB of text (`a` * N:
             symbols and the merge queue, loops that used to run unchecked)
  evaluate   timeout 50 ms: a session evaluating 512 tokens of the 40 MB
             bench model (checked per layer, per token of the attention and
             per matmul chunk of at most 2^24 products)
  create     timeout 10 ms: loading the 40 MB bench model, ~30 ms untimed
             (checked per 4 MiB data chunk and while the metadata and the
             vocabulary are read)
  hang eval  timeout 200 ms: E44, `eval.step=hang` (the sleep ends at the
             deadline: what is left is the wake-up and the way back)
  hang tok   timeout 200 ms: E45, `tokenize.step=hang`

Wall times include Python's own call overhead; the machine's load shows up in
p99 and max, so the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from typing import Callable

from bench_session_vs_percall import BENCH_MODEL

import fault_inject as fi
import pytest_bitnet as bn


def overshoots(call: Callable[[float], object], timeout: float, runs: int) -> list[float]:
    late = []
    for _ in range(runs):
        start = time.monotonic()
        try:
            call(timeout)
        except bn.errors.OperationTimeout:
            late.append(time.monotonic() - start - timeout)
        else:
            raise SystemExit(f"a call finished within its {timeout} s timeout: give it more work")
    return late


def row(name: str, late: list[float]) -> str:
    q = statistics.quantiles(late, n=100, method="inclusive")
    return f"{name:9} p50 {q[49] * 1e3:7.2f} ms   p99 {q[98] * 1e3:7.2f} ms   max {max(late) * 1e3:7.2f} ms   ({len(late)} runs)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    path = bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    print(f"model {path.stat().st_size / 1e6:.1f} MB, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with bn.BitnetSession.create(path, n_ctx=512, timeout=math.inf) as s:
        text = "a" * 10_000_000
        tokens = s.tokenize("the quick brown fox " * 200)[:512]
        s.tokenize(text[:1000])
        print(row("tokenize", overshoots(lambda t: s.tokenize(text, timeout=t), 0.05, args.runs)))

        def evaluate(t: float) -> None:
            s.reset()
            s.evaluate(tokens, timeout=t)

        print(row("evaluate", overshoots(evaluate, 0.05, args.runs)))
    print(row("create", overshoots(lambda t: bn.BitnetSession.create(path, n_ctx=512, timeout=t), 0.01, args.runs)))
    with bn.BitnetSession.create(path, n_ctx=512) as s:
        tokens = s.tokenize("hang in the middle")
        with fi.inject("eval.step=hang"):
            print(row("hang eval", overshoots(lambda t: s.evaluate(tokens, timeout=t), 0.2, args.runs)))
        with fi.inject("tokenize.step=hang"):
            print(row("hang tok", overshoots(lambda t: s.tokenize("hang here", timeout=t), 0.2, args.runs)))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
