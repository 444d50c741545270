"""The AVX-512 kernels (native/reference/kernels_avx512.h) bit for bit against
the AVX2 ones, whose bits are ggml's (kernels.c).

Two variants.  SIMDe: the same kernel source compiled with SIMDe's portable
AVX-512 intrinsics (libsimde-dev; .ci/run installs it) into a test library,
so it runs on any CPU; the AVX2 reference is the installed engine forced to
AVX2 at most.  Native: the installed engine's own AVX-512 path, where the CPU
has AVX-512 F/BW/VL/DQ; elsewhere it says so and skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cffi
import numpy as np
import pytest

from pytest_bitnet.bridge.abi import ffi, lib
from tests.native_builds import ROOT
from tools.error_sites import cpu_flags

TQ2_0 = 35  # gguf.h BN_TYPE_TQ2_0
SIMDE_HEADER = Path("/usr/include/simde/x86/avx512.h")
X512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}

_CDEF = """
typedef struct { uint32_t type; const void *data; int64_t ncols; int64_t nrows;
                 size_t row_bytes; float scale; } bn_weight;
size_t bn_act_size(const bn_weight *w, int64_t n_tokens);
void bn_act_prepare(const bn_weight *w, const float *x, int64_t n_tokens, void *act);
void bn_matmul_rows(const bn_weight *w, const void *act, int64_t n_tokens, float *y, int64_t r0, int64_t r1);
void bn_kernels_force_portable(int on);
void bn_kernels_simde_level(int level);
const char *bn_kernels_impl(void);
"""


@pytest.fixture(scope="module")
def simde_lib(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not {"avx2", "fma", "f16c"} <= cpu_flags():
        pytest.skip("the SIMDe build and the AVX2 reference need AVX2, FMA and F16C on this CPU")
    if not SIMDE_HEADER.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SIMDE_HEADER} missing: .ci/run installs libsimde-dev")
        pytest.skip("SIMDe not installed (apt-get install libsimde-dev)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("simde") / "libkernels_simde.so"
    src = ROOT / "native"
    # -mavx2 -mfma: SIMDe's own _mm512_fmadd_ps is a*b + c, two roundings,
    # unless it can split it into native 256-bit FMAs; -ffp-contract=off keeps
    # the compiler from fusing anything else
    cmd = [cc, "-shared", "-fPIC", "-O1", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-psabi",
           "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off",
           "-DBN_NO_SIMD", "-DBN_SIMDE_AVX512", f"-I{src / 'include'}", f"-I{src / 'common'}",
           f"-I{src / 'reference'}", str(src / "reference" / "kernels.c"), str(src / "common" / "bn_cpu.c"),
           "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sffi = cffi.FFI()
    sffi.cdef(_CDEF)
    return sffi, sffi.dlopen(str(out))


def _tq2_weights(rng: np.random.Generator, nrows: int, ncols: int) -> np.ndarray:
    nb = ncols // 256
    blocks = np.empty((nrows, nb, 66), dtype=np.uint8)
    blocks[..., :64] = rng.integers(0, 256, size=(nrows, nb, 64), dtype=np.uint8)  # codes 0..3, 3 included
    d = (rng.standard_normal((nrows, nb)) * 0.05).astype(np.float16)
    blocks[..., 64:] = d.view(np.uint8).reshape(nrows, nb, 2)
    return blocks.reshape(nrows, nb * 66)


def _run(f, l, data: np.ndarray, ncols: int, nrows: int, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    w = f.new("bn_weight *")
    w.type, w.ncols, w.nrows, w.row_bytes, w.scale = TQ2_0, ncols, nrows, data.shape[1], 1.0
    buf = f.from_buffer(data)
    w.data = buf
    n = x.shape[0]
    act = np.zeros(l.bn_act_size(w, n) + 64, dtype=np.uint8)
    off = (-act.ctypes.data) % 64
    pa = f.cast("void *", f.cast("char *", f.from_buffer(act)) + off)
    l.bn_act_prepare(w, f.cast("const float *", f.from_buffer(x)), n, pa)
    y = np.full(n * nrows, np.nan, dtype=np.float32)
    # two row ranges: results must not depend on where a range starts
    half = nrows // 2
    l.bn_matmul_rows(w, pa, n, f.cast("float *", f.from_buffer(y)), 0, half)
    l.bn_matmul_rows(w, pa, n, f.cast("float *", f.from_buffer(y)), half, nrows)
    return y.reshape(n, nrows)


CASES = [(nrows, ncols) for nrows in (1, 2, 7, 9, 17) for ncols in (256, 768)]


def _cases():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(512)
    for nrows, ncols in CASES:
        data = _tq2_weights(rng, nrows, ncols)
        for n in range(1, 9):
            x = (rng.standard_normal((n, ncols)) * rng.uniform(0.1, 10)).astype(np.float32)
            yield nrows, ncols, n, data, x


def _avx2_reference(data: np.ndarray, ncols: int, nrows: int, x: np.ndarray) -> np.ndarray:
    lib.bn_kernels_force_portable(2)
    try:
        return _run(ffi, lib, data, ncols, nrows, x)
    finally:
        lib.bn_kernels_force_portable(0)


@pytest.mark.parametrize("level", [1, 2], ids=["avx512", "vnni"])
def test_tq2_0_simde_matches_avx2_bit_for_bit(simde_lib, level: int) -> None:  # type: ignore[no-untyped-def]
    if "avx2" not in cpu_flags():
        pytest.skip("the AVX2 reference needs AVX2 on this CPU")
    sffi, slib = simde_lib
    slib.bn_kernels_simde_level(level)
    assert "tq2_0" in sffi.string(slib.bn_kernels_impl()).decode()
    for nrows, ncols, n, data, x in _cases():
        want = _avx2_reference(data, ncols, nrows, x)
        got = _run(sffi, slib, data, ncols, nrows, x)
        bad = np.argwhere(want.view(np.uint32) != got.view(np.uint32))
        assert bad.size == 0, (nrows, ncols, n, bad[:4].tolist(), got[tuple(bad[0])], want[tuple(bad[0])])


def test_tq2_0_native_avx512_matches_avx2_bit_for_bit() -> None:
    missing = X512_FLAGS - cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}: the native AVX-512 kernels cannot run here "
                    "(the SIMDe variant checks the same source)")
    assert "avx512" in ffi.string(lib.bn_kernels_impl()).decode()
    for nrows, ncols, n, data, x in _cases():
        want = _avx2_reference(data, ncols, nrows, x)
        got = _run(ffi, lib, data, ncols, nrows, x)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
