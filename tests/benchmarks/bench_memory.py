"""Session memory: resident size against model size + KV cache.

    python tests/benchmarks/bench_memory.py

Reads VmRSS from /proc/self/status before and after creating a session and
after evaluating, and compares the growth with what must be held: the
model's tensor data (read into memory, not mapped) plus the KV cache of
sequence 0 (2 x n_layer x n_ctx x kv_dim x 4 bytes).
"""

from __future__ import annotations

import gc
import tempfile

from bench_session_vs_percall import BENCH_MODEL

import pytest_bitnet as bn


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    path = bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    size = path.stat().st_size
    kv_dim = BENCH_MODEL["n_embd"] // BENCH_MODEL["n_head"] * BENCH_MODEL["n_head_kv"]
    print(f"{'n_ctx':>6} {'model MB':>9} {'KV MB':>7} {'expected MB':>12} {'RSS growth MB':>14} {'counted MB':>11} {'ratio':>6}")
    for n_ctx in (512, 2048, 4096):
        gc.collect()
        base = rss()
        with bn.BitnetSession.create(path, n_ctx=n_ctx) as s:
            s.evaluate(s.tokenize("warm the scratch buffers up"))
            grown = rss() - base
            counted = bn.live_counters()["bytes"]
        kv = 2 * BENCH_MODEL["n_layer"] * n_ctx * kv_dim * 4
        expected = size + kv
        print(f"{n_ctx:>6} {size / 1e6:9.1f} {kv / 1e6:7.1f} {expected / 1e6:12.1f} {grown / 1e6:14.1f} {counted / 1e6:11.1f} {grown / expected:6.2f}")
    print("RSS growth counts only touched pages: the KV cache of unused positions is not resident.")


if __name__ == "__main__":
    main()
