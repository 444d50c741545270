"""AVX-512 kernels vs AVX2 kernels, the same products side by side in one run.

    python tests/benchmarks/bench_kernels_x512.py [--rounds N]

One kernel thread (bn_matmul_rows over every row), activations prepared
once outside the timing.  Each row times the engine's own choice (AVX-512,
VNNI where present) and the same call with the engine held to AVX2
(bn_kernels_force_portable(2)) in alternating rounds, and prints
AVX2 time / AVX-512 time.  Both give the same bits (test_kernels_avx512.py);
this says what the wider kernels buy.  On a CPU without AVX-512 both columns
are AVX2 and it says so.  The last column: weight bytes read per second by
the AVX-512 kernel as a share of the read bandwidth measured in this run.

Then the same for whole evaluations of the 40 MB benchmark model (prompt
and generation as bench_llama_vs_reference.py runs them) at 1 and 2
threads: tokens per second with the engine's kernels and held to AVX2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Callable

import gguf
import numpy as np
from _common import fmt_share, fmt_time, interleaved, read_bandwidth

import pytest_bitnet as bn
from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.models import I2_S_TYPE, pack_i2_s

TQ2_0 = int(gguf.GGMLQuantizationType.TQ2_0)

# (name, type, rows, cols): the 40 MB benchmark model's F16 tied output
# projection (and its F32 form), a 2B-shaped FFN projection in both
# ternary formats, and the 2B shape's F16 output
SHAPES = [
    ("output f16", "F16", 32000, 512),
    ("output f32", "F32", 32000, 512),
    ("ffn tq2_0", "TQ2_0", 6912, 2560),
    ("ffn i2_s", "I2_S", 6912, 2560),
    # from memory: the 2B shape's tied output (657 MB) and ten 2B FFN
    # projections' worth of TQ2_0 (46 MB, beyond a 32 MB L3): the rows above
    # are served from cache when run alone, these say how a kernel streams
    ("2B output f16", "F16", 128256, 2560),
    ("10x ffn tq2_0", "TQ2_0", 69120, 2560),
]
TOKENS = (1, 4, 16)


def weights(kind: str, rows: int, cols: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """(bn_weight, the arrays it points into)."""
    if kind in ("F16", "F32"):
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16 if kind == "F16" else np.float32)
        wtype, row_bytes, scale = (1 if kind == "F16" else 0), cols * data.itemsize, 1.0
    else:
        tern = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
        if kind == "TQ2_0":
            data = np.ascontiguousarray(gguf.quants.quantize(tern.astype(np.float32) * np.float32(0.02), gguf.GGMLQuantizationType.TQ2_0))
            wtype, row_bytes = TQ2_0, data.shape[1]
        else:
            data = pack_i2_s(tern, 0.02)
            wtype, row_bytes = I2_S_TYPE, cols // 4
        scale = 0.02
    w = ffi.new("bn_weight *")
    buf = ffi.from_buffer(data)
    w.type, w.data, w.ncols, w.nrows, w.row_bytes, w.scale = wtype, buf, cols, rows, row_bytes, scale
    return w, (data, buf)


def product(w, n: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """A closure running the n-token product, and the buffers it uses."""
    x = rng.standard_normal((n, w.ncols)).astype(np.float32)
    act = np.zeros(lib.bn_act_size(w, n) + 64, dtype=np.uint8)
    pa = ffi.cast("char *", ffi.from_buffer(act)) + (-act.ctypes.data) % 64
    lib.bn_act_prepare(w, ffi.from_buffer("float[]", x), n, pa)
    y = np.zeros(n * w.nrows, dtype=np.float32)
    py = ffi.from_buffer("float[]", y)

    def run() -> None:
        lib.bn_matmul_rows(w, pa, n, py, 0, w.nrows)

    return run, (x, act, y)


def held(level: int, run: Callable[[], None]) -> Callable[[], None]:
    def go() -> None:
        lib.bn_kernels_force_portable(level)
        run()

    return go


def products(rounds: int, only: str | None) -> None:
    bw = read_bandwidth(1)
    print(f"products, one thread; read bandwidth: {bw / 1e9:.1f} GB/s 1 thread; load average {os.getloadavg()[0]:.2f}")
    print(f"{'product':>11} {'shape':>11} {'tokens':>6} {'avx512':>12} {'avx2':>12} {'speed-up':>8}  avx512 weights read, share")
    rng = np.random.default_rng(0)
    for name, kind, rows, cols in SHAPES:
        if only and only not in name:
            continue
        w, _keep = weights(kind, rows, cols, rng)
        nbytes = rows * int(w.row_bytes)
        for n in TOKENS:
            run, _bufs = product(w, n, rng)
            run()
            ta, tb = interleaved(held(0, run), held(2, run), rounds=rounds, repeat=5 if n < 16 else 2)
            print(f"{name:>11} {rows:>5}x{cols:<5} {n:>6} {fmt_time(ta):>12} {fmt_time(tb):>12} {tb / ta:7.2f}x  "
                  f"{fmt_share(nbytes, ta, bw)}")


def model(rounds: int) -> None:
    from bench_llama_vs_reference import GEN_STEPS, prompt_tokens, workloads
    from bench_session_vs_percall import BENCH_MODEL

    path = bn.models.cached_tiny_model(tempfile.mkdtemp(), **BENCH_MODEL)
    print(f"model: {path.name}  {path.stat().st_size / 1e6:.1f} MB, n_ctx 512; load average {os.getloadavg()[0]:.2f}")
    print(f"{'threads':>7}  {'row':18} {'avx512':>12} {'avx2':>12} {'speed-up':>8}")
    saved = os.environ.get("BITNET_NUM_THREADS")
    try:
        for threads in (1, 2):
            os.environ["BITNET_NUM_THREADS"] = str(threads)
            with bn.BitnetSession.create(path, n_ctx=512, backend="reference") as s:
                toks = prompt_tokens(s)
                prompt, gen = workloads(s, toks)
                prompt()
                for name, n_tok, fn, repeat in (("prompt eval", toks.size, prompt, 5), ("generation", GEN_STEPS, gen, 1)):
                    ta, tb = interleaved(held(0, fn), held(2, fn), rounds=rounds, repeat=repeat)
                    print(f"{threads:>7}  {name:18} {n_tok / ta:8.1f} t/s {n_tok / tb:8.1f} t/s {tb / ta:7.2f}x")
    finally:
        lib.bn_kernels_force_portable(0)
        if saved is None:
            os.environ.pop("BITNET_NUM_THREADS", None)
        else:
            os.environ["BITNET_NUM_THREADS"] = saved
    print(f"prompt: {toks.size} tokens; generation: {GEN_STEPS} single-token steps after a 4-token prompt")


def cpu_name() -> str:
    """Model name, family and model of the first CPU (/proc/cpuinfo)."""
    try:
        lines = open("/proc/cpuinfo").read().split("\n\n")[0].splitlines()
    except OSError:
        return "unknown CPU"
    info = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return f"{info.get('model name', '?')}, family {info.get('cpu family', '?')} model {info.get('model', '?')}, {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", help="products whose name contains this")
    args = ap.parse_args()
    impl = ffi.string(lib.bn_kernels_impl()).decode()
    lib.bn_kernels_force_portable(2)
    held_impl = ffi.string(lib.bn_kernels_impl()).decode()
    lib.bn_kernels_force_portable(0)
    print(f"cpu: {cpu_name()}")
    print(f"kernels: {impl}  vs  {held_impl}")
    if not impl.startswith("avx512"):
        print("this CPU has no AVX-512 (or no AVX2): both columns run the same kernels")
    try:
        products(args.rounds, args.only)
        if not args.only:
            model(args.rounds)
    finally:
        lib.bn_kernels_force_portable(0)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
