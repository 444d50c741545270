"""The AVX2 build of ggml_ops.c's operations against its portable build, bit for bit.

swiglu_avx2 is written with intrinsics (ggml_v_silu's form) rather than
compiled from the scalar body the portable build runs, so the two are
compared here: ggml_ops.c built as is (dispatching to AVX2 on this CPU)
and with -DBN_NO_SIMD (portable only), on the same inputs, including the
wide-range cases of the exp (|x| / ln 2 above 126 and 192), infinities,
NaN, zeros and subnormals, and row lengths with a tail.
"""

from __future__ import annotations

import shutil
import subprocess

import cffi
import numpy as np
import pytest

from tests.native_builds import ROOT
from tools.error_sites import cpu_flags

_CDEF = """
void bn_ggml_swiglu(float *y, const float *x, const float *g, int64_t n);
void bn_ggml_rope(float *x, int64_t n_heads, int64_t hd, int32_t n_rot, const float *cs, int neox);
void bn_ggml_scores(float *att, const float *q, const float *k, int64_t stride, int64_t n, int64_t hd, float scale);
void bn_ggml_weighted_sum(float *out, const float *v, int64_t stride, const float *p, int64_t n, int64_t m);
"""


def _build(tmp_path, name: str, defines: list[str]):  # type: ignore[no-untyped-def]
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = ROOT / "native"
    out = tmp_path / f"lib{name}.so"
    cmd = [cc, "-shared", "-fPIC", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *defines,
           f"-I{src / 'include'}", f"-I{src / 'common'}", f"-I{src / 'reference'}",
           str(src / "reference" / "ggml_ops.c"), str(src / "common" / "bn_cpu.c"), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    f = cffi.FFI()
    f.cdef(_CDEF)
    return f, f.dlopen(str(out))


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(5)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, 87.0, -87.0, 88.8, -88.8,
                        100.0, -100.0, 130.0, -130.0, 140.0, -140.0, 1e30, -1e30, 3.4e38, -3.4e38],
                       dtype=np.float32)
    wide = np.linspace(-150, 150, 20011, dtype=np.float32)
    normal = (rng.standard_normal(30000) * 4).astype(np.float32)
    x = np.concatenate([special, wide, normal])
    return np.concatenate([x, rng.permutation(x)])


def test_swiglu_avx2_matches_portable_bit_for_bit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not {"avx2", "fma", "f16c"} <= cpu_flags():
        pytest.skip("the AVX2 build needs AVX2, FMA and F16C on this CPU")
    (fa, la), (fp, lp) = _build(tmp_path, "ops_avx2", []), _build(tmp_path, "ops_portable", ["-DBN_NO_SIMD"])
    x = _inputs()
    g = np.random.default_rng(6).standard_normal(x.size).astype(np.float32)
    g[:40] = np.array([1.0, -1.0, 0.0, np.inf] * 10, dtype=np.float32)
    for n in (x.size, 1, 7, 8, 9, 1537):  # whole groups of 8 and tails
        ya = np.zeros(n, dtype=np.float32)
        yp = np.ones(n, dtype=np.float32)
        la.bn_ggml_swiglu(fa.from_buffer("float[]", ya), fa.from_buffer("float[]", x[:n]),
                          fa.from_buffer("float[]", g[:n]), n)
        lp.bn_ggml_swiglu(fp.from_buffer("float[]", yp), fp.from_buffer("float[]", x[:n]),
                          fp.from_buffer("float[]", g[:n]), n)
        diff = np.flatnonzero(ya.view(np.uint32) != yp.view(np.uint32))
        assert diff.size == 0, f"n={n}: {diff.size} differ, first x={x[diff[0]]!r} avx2={ya[diff[0]]!r} portable={yp[diff[0]]!r}"
    # in place (y is x), as the forward pass calls it
    ya, yp = x.copy(), x.copy()
    la.bn_ggml_swiglu(fa.from_buffer("float[]", ya), fa.from_buffer("float[]", ya), fa.from_buffer("float[]", g), x.size)
    lp.bn_ggml_swiglu(fp.from_buffer("float[]", yp), fp.from_buffer("float[]", yp), fp.from_buffer("float[]", g), x.size)
    assert np.array_equal(ya.view(np.uint32), yp.view(np.uint32))


def _rope_numpy(x: np.ndarray, cs: np.ndarray, n_rot: int, neox: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rotation in double, and a bound on the fused form's error: two
    roundings of a float each, relative to the terms' magnitudes (a sum
    that cancels is not small relative to itself)."""
    half = n_rot // 2
    y, bound = x.astype(np.float64), np.zeros(x.shape)
    a = np.arange(half) if neox else 2 * np.arange(half)
    b = a + half if neox else a + 1
    c, s = cs[:half].astype(np.float64), cs[half:n_rot].astype(np.float64)
    x0, x1 = y[:, a].copy(), y[:, b].copy()
    y[:, a], y[:, b] = x0 * c - x1 * s, x0 * s + x1 * c
    bound[:, a] = bound[:, b] = 2.0**-22 * (np.abs(x0) + np.abs(x1))
    return y, bound


@pytest.mark.parametrize("neox", [0, 1])
@pytest.mark.parametrize(("hd", "n_rot"), [(64, 64), (128, 128), (64, 32), (10, 6)])
def test_rope_fma_build_matches_portable_bit_for_bit(tmp_path, neox: int, hd: int, n_rot: int) -> None:  # type: ignore[no-untyped-def]
    """Both builds compute fma(x0, c, -(x1 s)) and fma(x0, s, x1 c), one
    rounding each whether fmaf is an instruction or libm's; the values
    past n_rot are left as they are."""
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("the FMA build needs AVX2 and FMA on this CPU")
    (fa, la), (fp, lp) = _build(tmp_path, "rope_fma", []), _build(tmp_path, "rope_portable", ["-DBN_NO_SIMD"])
    rng = np.random.default_rng(hd + n_rot + neox)
    heads = 5
    theta = rng.uniform(-50, 50, n_rot // 2).astype(np.float32)
    cs = np.concatenate([np.cos(theta), np.sin(theta)]).astype(np.float32)
    x = (rng.standard_normal((heads, hd)) * 3).astype(np.float32)
    x[0, :4] = [0.0, -0.0, 1e-40, 3e38]
    ya, yp = x.copy(), x.copy()
    la.bn_ggml_rope(fa.from_buffer("float[]", ya), heads, hd, n_rot, fa.from_buffer("float[]", cs), neox)
    lp.bn_ggml_rope(fp.from_buffer("float[]", yp), heads, hd, n_rot, fp.from_buffer("float[]", cs), neox)
    assert np.array_equal(ya.view(np.uint32), yp.view(np.uint32))
    assert np.array_equal(ya[:, n_rot:].view(np.uint32), x[:, n_rot:].view(np.uint32))
    want, bound = _rope_numpy(x, cs, n_rot, bool(neox))
    assert (np.abs(ya - want) <= bound).all(), np.abs(ya - want).max()


@pytest.mark.parametrize("hd", [64, 128, 96, 40, 7, 1])
def test_attention_ops_fma_build_matches_portable_bit_for_bit(tmp_path, hd: int) -> None:  # type: ignore[no-untyped-def]
    """Scores (a dot per key) and the weighted sum of values: head sizes
    with and without a tail past 32 (the dot) or 64 (a whole block of the
    weighted sum, whose loops the FMA build vectorizes), up to 300 keys;
    against numpy in double too."""
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("the FMA build needs AVX2 and FMA on this CPU")
    (fa, la), (fp, lp) = _build(tmp_path, "attn_fma", []), _build(tmp_path, "attn_portable", ["-DBN_NO_SIMD"])
    rng = np.random.default_rng(hd)
    stride = hd + 3  # keys and values of one head inside wider rows
    for n in (1, 5, 8, 9, 300):
        q = rng.standard_normal(hd).astype(np.float32)
        kv = rng.standard_normal((n, stride)).astype(np.float32)
        p = rng.random(n).astype(np.float32)
        out = {}
        for tag, f, lib in (("fma", fa, la), ("portable", fp, lp)):
            att = np.zeros(n, np.float32)
            lib.bn_ggml_scores(f.from_buffer("float[]", att), f.from_buffer("float[]", q), f.from_buffer("float[]", kv),
                               stride, n, hd, 0.125)
            ws = np.zeros(hd, np.float32)
            lib.bn_ggml_weighted_sum(f.from_buffer("float[]", ws), f.from_buffer("float[]", kv), stride,
                                     f.from_buffer("float[]", p), n, hd)
            out[tag] = (att, ws)
        for a, b in zip(out["fma"], out["portable"]):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (n, np.flatnonzero(a != b)[:5])
        k64, q64 = kv[:, :hd].astype(np.float64), q.astype(np.float64)
        np.testing.assert_allclose(out["fma"][0], (k64 @ q64) * 0.125, rtol=1e-4, atol=1e-5 * np.sqrt(hd))
        np.testing.assert_allclose(out["fma"][1], p.astype(np.float64) @ k64, rtol=1e-4, atol=1e-4 * np.sqrt(n))
