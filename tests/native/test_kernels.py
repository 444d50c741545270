"""The engine's own fp16 conversions (native/reference/kernels.c), used by the
portable F16 kernels and wherever the CPU lacks F16C: bit for bit against
numpy's, which rounds to nearest even as IEEE 754 and F16C do."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_bitnet.bridge.abi import lib

SPECIAL = np.array(
    [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e5, -1e30, np.inf, -np.inf,
     2.0**-14, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-26, 1e-30, -3e-8,
     5.960464477539063e-08, 6.097555160522461e-05, 1.0009765625, 1.00048828125, 1.00146484375],
    dtype=np.float32,
)


def _ours(x: np.ndarray) -> np.ndarray:
    return np.array([lib.bn_fp32_to_fp16(float(v)) for v in x], dtype=np.uint16)


def test_fp32_to_fp16_matches_numpy_bit_for_bit() -> None:
    rng = np.random.default_rng(16)
    # every exponent, random mantissas: overflow, normals, half subnormals, underflow, ties
    bits = rng.integers(0, 2**32, size=60_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([SPECIAL, bits.view(np.float32)])
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    got = _ours(x)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(float(x[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


def test_nan_stays_nan_and_the_way_back_is_exact() -> None:
    for payload in (0x7FC00000, 0x7F800001, 0xFFC12345, 0x7FFFFFFF):
        h = lib.bn_fp32_to_fp16(float(np.array([payload], dtype=np.uint32).view(np.float32)[0]))
        assert h & 0x7C00 == 0x7C00 and h & 0x3FF, hex(h)  # a NaN, never an infinity
        assert np.isnan(lib.bn_fp16_to_fp32(h))
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    finite = halves[~np.isnan(halves.view(np.float16))]
    back = np.array([lib.bn_fp16_to_fp32(int(h)) for h in finite], dtype=np.float32)
    np.testing.assert_array_equal(back, finite.view(np.float16).astype(np.float32))


# Every F32 / F16 kernel path against its portable twin, bit for bit (both
# follow tinyBLAS's or ggml_vec_dot's order exactly): 1..8 tokens (one
# token and ncols % 8 != 0 take the vdot rows, two at a time; the others the
# tiled rows), odd row counts (a last row on its own), ncols with and
# without a tail of ncols % 32 / % 8 columns.
def _matmul(W: np.ndarray, x: np.ndarray, r0: int = 0, r1: int | None = None) -> np.ndarray:
    from pytest_bitnet.bridge.abi import ffi

    nrows, ncols = W.shape
    w = ffi.new("bn_weight *")
    w.type, w.data, w.ncols, w.nrows = (1 if W.dtype == np.float16 else 0), ffi.cast("void *", W.ctypes.data), ncols, nrows
    w.row_bytes, w.scale = ncols * W.itemsize, 1.0
    n = x.shape[0]
    act = np.zeros(lib.bn_act_size(w, n) // 4 + 16, np.float32)
    lib.bn_act_prepare(w, ffi.cast("float *", x.ctypes.data), n, ffi.cast("void *", act.ctypes.data))
    y = np.full((n, nrows), np.nan, np.float32)
    lib.bn_matmul_rows(w, ffi.cast("void *", act.ctypes.data), n, ffi.cast("float *", y.ctypes.data), r0, nrows if r1 is None else r1)
    return y


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", [(37, 512), (33, 96), (5, 40), (9, 27), (1, 64)])
def test_float_kernels_match_portable_bit_for_bit(dtype: type, shape: tuple[int, int]) -> None:
    import pytest_bitnet as bn

    if not bn.capabilities().has_avx2:
        pytest.skip("no AVX2 on this CPU: only the portable kernels run")
    rng = np.random.default_rng(17)
    W = np.ascontiguousarray((rng.standard_normal(shape) * 0.1).astype(dtype))
    for n in range(1, 9):
        x = np.ascontiguousarray(rng.standard_normal((n, shape[1])).astype(np.float32))
        fast, part = _matmul(W, x), _matmul(W, x, 1, shape[0])  # an odd start row too
        lib.bn_kernels_force_portable(1)
        try:
            portable = _matmul(W, x)
        finally:
            lib.bn_kernels_force_portable(0)
        assert fast.tobytes() == portable.tobytes(), (n, np.flatnonzero(fast.view(np.uint32) != portable.view(np.uint32))[:5])
        assert part[:, 1:].tobytes() == portable[:, 1:].tobytes(), n
        assert np.isnan(part[:, 0]).all()  # nothing written outside [r0, r1)


# Where each result lands: scatter moves a rows function's (row, token)
# results into the token-major output (for four tokens by 4 x 4 and 2 x 4
# transposes), shared by every kernel path, so the bit-for-bit comparisons
# above cannot see a result put in the wrong place.  Against numpy's
# product in double: 1..8 tokens, row counts that leave 1, 2 or 3 rows
# after the last group of four, and a row range that starts mid-group.
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("nrows", [1, 2, 3, 5, 6, 7, 8, 13, 50])
def test_each_result_lands_at_its_token_and_row(dtype: type, nrows: int) -> None:
    rng = np.random.default_rng(nrows)
    W = np.ascontiguousarray((rng.standard_normal((nrows, 64)) * 0.1).astype(dtype))
    for n in range(1, 9):
        x = np.ascontiguousarray(rng.standard_normal((n, 64)).astype(np.float32))
        want = x.astype(np.float16).astype(np.float64) if dtype == np.float16 else x.astype(np.float64)
        want = want @ W.astype(np.float64).T
        for r0 in (0, 1) if nrows > 1 else (0,):
            got = _matmul(W, x, r0, nrows)
            np.testing.assert_allclose(got[:, r0:], want[:, r0:], rtol=1e-4, atol=1e-5, err_msg=f"n={n} r0={r0}")
            assert np.isnan(got[:, :r0]).all()
