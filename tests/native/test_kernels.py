"""The engine's own fp16 conversions (native/reference/kernels.c), used by the
portable F16 kernels and wherever the CPU lacks F16C: bit for bit against
numpy's, which rounds to nearest even as IEEE 754 and F16C do."""

from __future__ import annotations

import numpy as np

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
