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


def interleaved(a: Callable[[], object], b: Callable[[], object], *, rounds: int, repeat: int,
                repeat_b: int | None = None, warmup: int = 0) -> tuple[float, float]:
    """Median times of a and b, alternating rounds so drift hits both alike.

    `repeat` runs of a per round, and `repeat_b` of b (default `repeat`):
    a cheap b needs more runs for a steady median than a costly a.  Each
    round first runs its function `warmup` times untimed, so that it is
    timed in its own steady state (caches, sleeping worker threads), not
    in the state the other one left.
    """
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(median_time(a, repeat=repeat, warmup=warmup))
        tb.append(median_time(b, repeat=repeat if repeat_b is None else repeat_b, warmup=warmup))
    return statistics.median(ta), statistics.median(tb)


def fmt_time(s: float) -> str:
    return f"{s * 1e3:9.3f} ms" if s >= 1e-3 else f"{s * 1e6:9.1f} us"


def read_bandwidth(threads: int, *, mib: int = 1024, repeat: int = 5) -> float:
    """Measured streaming-read bandwidth of this machine in bytes/s, now.

    Each of `threads` Python threads reduces its own slice of a buffer far
    larger than any cache (1 GiB: the 480 MiB L3 of some machines here
    must not hold it) with numpy's max over uint64, a native SIMD loop that
    releases the GIL and does one compare per 8 bytes, so it runs at the
    memory's pace.  Median of `repeat` passes after one warm-up (which
    also faults the pages in).  Measured in the same run as the figures it
    is compared with, because other processes share the memory bus.
    """
    import threading

    import numpy as np

    buf = np.ones(mib * 2**20 // 8, dtype=np.uint64)
    parts = np.array_split(buf, threads)

    def one_pass() -> None:
        workers = [threading.Thread(target=p.max) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return buf.nbytes / median_time(one_pass, repeat=repeat)


def weight_bytes(path: object) -> int:
    """Bytes of tensor data in a GGUF file: what one evaluation must read
    at least once (every projection, and the tied output projection reads
    all of token_embd; the embedding lookup's few rows are not counted
    twice)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def fmt_share(n_bytes: float, seconds: float, bandwidth: float) -> str:
    """`n_bytes` read in `seconds` as GB/s and as a share of `bandwidth`."""
    rate = n_bytes / seconds
    return f"{rate / 1e9:5.1f} GB/s {100 * rate / bandwidth:4.0f}%"


def what_ran() -> str:
    """The CPU, the reference engine's kernels, the llama.cpp build (its
    SIMD features: a -march=native wheel on an AVX-512 CPU is not the AVX2
    build .ci/run makes for bit-exact parity) and the load: what a figure
    printed beside it means."""
    import os

    from pytest_bitnet.bridge.abi import ffi, lib
    from pytest_bitnet.testing.crossval import ggml_build

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
        cpu = f"{info['model name']} (family {info['cpu family']}, model {info['model']})"
    except (OSError, KeyError):
        pass
    build = ggml_build()
    llama = "llama.cpp not available" if build is None else build.describe()
    return (f"cpu: {cpu}; reference kernels: {ffi.string(lib.bn_kernels_impl()).decode()}\n"
            f"{llama}\nload average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
