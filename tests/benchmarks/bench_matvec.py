"""Single-token ternary matvec vs numpy float32 matvec of the same shape.

    python tests/benchmarks/bench_matvec.py

The ternary weights are 16x smaller than float32 (2 bits + a scale per
block), and one-token inference is bound by memory bandwidth, so the
kernels should beat a float32 GEMV.  Each row times the native kernel
(activation quantization included) and numpy side by side and prints
numpy_time / kernel_time.  numpy runs with its BLAS threads as configured
(OPENBLAS_NUM_THREADS etc.); the kernels use one thread.
"""

from __future__ import annotations

import gguf
import numpy as np
from _common import fmt_time, interleaved

from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.models import I2_S_TYPE, pack_i2_s

TQ2_0 = int(gguf.GGMLQuantizationType.TQ2_0)


def kernel_matvec(kind: str, ternary: np.ndarray, scale: float):  # type: ignore[no-untyped-def]
    rows, cols = ternary.shape
    if kind == "TQ2_0":
        data = np.ascontiguousarray(gguf.quants.quantize(ternary.astype(np.float32) * np.float32(scale), gguf.GGMLQuantizationType.TQ2_0))
        wtype, row_bytes = TQ2_0, data.shape[1]
    else:
        data = pack_i2_s(ternary, scale)
        wtype, row_bytes = I2_S_TYPE, cols // 4
    w = ffi.new("bn_weight *")
    w.type, w.data, w.ncols, w.nrows, w.row_bytes, w.scale = wtype, ffi.from_buffer(data), cols, rows, row_bytes, scale
    act = np.zeros(lib.bn_act_size(w, 1), dtype=np.uint8)
    x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    y = np.zeros(rows, dtype=np.float32)
    px, pa, py = ffi.from_buffer("float[]", x), ffi.from_buffer(act), ffi.from_buffer("float[]", y)

    def run() -> None:
        lib.bn_act_prepare(w, px, 1, pa)
        lib.bn_matmul_rows(w, pa, 1, py, 0, rows)

    keep = (data, act, x, y)  # buffers must outlive the closure's pointers
    return run, keep


def main() -> None:
    print(f"kernels: {ffi.string(lib.bn_kernels_impl()).decode()}")
    print(f"{'shape':>11} {'type':>6} {'kernel':>12} {'numpy f32':>12} {'speed-up':>9}")
    rng = np.random.default_rng(0)
    for n in (2048, 4096):
        tern = rng.integers(-1, 2, size=(n, n), dtype=np.int8)
        wf = tern.astype(np.float32) * np.float32(0.02)
        x = rng.standard_normal(n).astype(np.float32)
        for kind in ("TQ2_0", "I2_S"):
            run, _keep = kernel_matvec(kind, tern, 0.02)
            tk, tn = interleaved(run, lambda: wf @ x, rounds=5, repeat=20)
            print(f"{n:>5}x{n:<5} {kind:>6} {fmt_time(tk):>12} {fmt_time(tn):>12} {tn / tk:8.2f}x")


if __name__ == "__main__":
    main()
