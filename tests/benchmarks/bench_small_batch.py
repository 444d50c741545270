"""Small batches: ms per evaluation of 1, 2, 4 and 8 tokens, side by side.

    python tests/benchmarks/bench_small_batch.py [--model PATH] [--rounds N]

A session evaluates a batch reading each weight once, so n tokens should
cost much less than n one-token evaluations.  Rounds alternate the batch
sizes (drift hits them alike); prints medians, the cost per token, and each
batch's cost relative to one token.  Run with BITNET_NUM_THREADS=1 and =2
to see both thread counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_session_vs_percall import BENCH_MODEL

import pytest_bitnet as bn
from pytest_bitnet.bridge.abi import ffi, lib

SIZES = (1, 2, 4, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    path = args.model or bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    print(f"model: {path.name}  {path.stat().st_size / 1e6:.1f} MB  kernels: {ffi.string(lib.bn_kernels_impl()).decode()}  threads: {os.environ.get('BITNET_NUM_THREADS', 'default')}")
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    with bn.BitnetSession.create(path, n_ctx=512) as s:
        toks = s.tokenize("the quick brown fox jumps over the lazy dog while seven wizards quietly judge")
        assert len(toks) >= max(SIZES)
        for _ in range(args.rounds):
            for n in SIZES:
                one = []
                for _ in range(args.repeat):
                    s.reset()
                    t0 = time.perf_counter()
                    s.evaluate(toks[:n])
                    one.append(time.perf_counter() - t0)
                times[n].append(statistics.median(one))
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"{'tokens':>6} {'ms/eval':>9} {'ms/token':>9} {'vs 1 token':>11}")
    for n in SIZES:
        print(f"{n:6d} {med[n] * 1e3:9.3f} {med[n] * 1e3 / n:9.3f} {med[n] / med[1]:10.2f}x")


if __name__ == "__main__":
    main()
