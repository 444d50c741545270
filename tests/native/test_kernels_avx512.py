"""The AVX-512 kernels (native/reference/kernels_avx512.h) bit for bit against
the AVX2 ones, whose bits are ggml's (kernels.c): every weight type (F32, F16,
TQ2_0, I2_S), the multi-token (tinyBLAS order) and one-token (ggml_vec_dot
order) float paths, both VNNI levels.

Two variants.  SIMDe: the same kernel source compiled with SIMDe's portable
AVX-512 intrinsics (libsimde-dev; .ci/run installs it) into a test library,
so it runs on any CPU; the AVX2 reference is the installed engine forced to
AVX2 at most.  Native: the installed engine's own AVX-512 path, where the CPU
has AVX-512 F/BW/VL/DQ; elsewhere it says so and skips.

Both sides multiply the same prepared activations (prepared once, by the
installed engine: the layout is the same for every path), so a difference is
a kernel's, not the preparation's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, NamedTuple

import cffi
import numpy as np
import pytest

from pytest_bitnet.bridge.abi import ffi, lib
from tests.native_builds import ROOT
from tools.error_sites import cpu_flags

F32, F16, TQ2_0, I2_S = 0, 1, 35, 36  # gguf.h BN_TYPE_*
TYPE_NAMES = {F32: "f32", F16: "f16", TQ2_0: "tq2_0", I2_S: "i2_s"}
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


def _avx2_impl() -> str:
    """What the installed engine runs when held to AVX2 at most."""
    lib.bn_kernels_force_portable(2)
    try:
        return ffi.string(lib.bn_kernels_impl()).decode()
    finally:
        lib.bn_kernels_force_portable(0)


@pytest.fixture(scope="module")
def simde_lib(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not {"avx2", "fma", "f16c"} <= cpu_flags():
        pytest.skip("the SIMDe build and the AVX2 reference need AVX2, FMA and F16C on this CPU")
    if not SIMDE_HEADER.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SIMDE_HEADER} missing: .ci/run installs libsimde-dev")
        pytest.skip("SIMDe not installed (apt-get install libsimde-dev)")
    reference = _avx2_impl()
    if reference != "avx2":
        pytest.skip(f"the AVX2 reference is the installed engine held to AVX2, and it runs {reference} kernels")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("simde") / "libkernels_simde.so"
    src = ROOT / "native"
    # -mavx2 -mfma -mf16c: SIMDe's own _mm512_fmadd_ps is a*b + c, two
    # roundings, unless it can split it into native 256-bit FMAs (and its
    # _mm256_cvtph_ps is native with F16C); -ffp-contract=off keeps the
    # compiler from fusing anything else
    cmd = [cc, "-shared", "-fPIC", "-O1", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-psabi",
           "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", *os.environ.get("BITNET_SIMDE_CFLAGS", "").split(),
           "-DBN_NO_SIMD", "-DBN_SIMDE_AVX512", f"-I{src / 'include'}", f"-I{src / 'common'}",
           f"-I{src / 'reference'}", str(src / "reference" / "kernels.c"), str(src / "common" / "bn_cpu.c"),
           "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sffi = cffi.FFI()
    sffi.cdef(_CDEF)
    return sffi, sffi.dlopen(str(out))


class Weights(NamedTuple):
    type: int
    data: np.ndarray  # nrows x row_bytes, uint8
    ncols: int
    scale: float

    @property
    def nrows(self) -> int:
        return int(self.data.shape[0])


# fp16 edge values: subnormals (smallest, largest, one between), the
# smallest normal, the largest finite, signed zeros
F16_EDGES = np.array([0x0001, 0x03FF, 0x0155, 0x8001, 0x0400, 0x7BFF, 0xFBFF, 0x0000, 0x8000], dtype=np.uint16)


def _float_weights(rng: np.random.Generator, typ: int, nrows: int, ncols: int) -> Weights:
    w = (rng.standard_normal((nrows, ncols)) * 0.1).astype(np.float16 if typ == F16 else np.float32)
    if typ == F16:  # edge values sprinkled over every row
        bits = w.view(np.uint16)
        where = rng.random((nrows, ncols)) < 0.1
        bits[where] = rng.choice(F16_EDGES, size=int(where.sum()))
    else:  # F32 subnormals and large values
        where = rng.random((nrows, ncols)) < 0.05
        w[where] = rng.choice(np.array([1e-40, -3e-39, 1e30, -0.0], dtype=np.float32), size=int(where.sum()))
    return Weights(typ, np.ascontiguousarray(w).view(np.uint8).reshape(nrows, -1), ncols, 1.0)


def _tq2_weights(rng: np.random.Generator, nrows: int, ncols: int) -> Weights:
    nb = ncols // 256
    blocks = np.empty((nrows, nb, 66), dtype=np.uint8)
    blocks[..., :64] = rng.integers(0, 256, size=(nrows, nb, 64), dtype=np.uint8)  # codes 0..3, 3 included
    d = (rng.standard_normal((nrows, nb)) * 0.05).astype(np.float16)
    d.view(np.uint16)[rng.random((nrows, nb)) < 0.2] = 0x0201  # an fp16 subnormal scale
    blocks[..., 64:] = d.view(np.uint8).reshape(nrows, nb, 2)
    return Weights(TQ2_0, blocks.reshape(nrows, nb * 66), ncols, 1.0)


def _i2s_weights(rng: np.random.Generator, nrows: int, ncols: int) -> Weights:
    codes = rng.integers(0, 256, size=(nrows, ncols // 4), dtype=np.uint8)  # codes 0..3, 3 included
    return Weights(I2_S, codes, ncols, float(rng.uniform(0.1, 3.0)))


def _weights(rng: np.random.Generator, typ: int, nrows: int, ncols: int) -> Weights:
    if typ == TQ2_0:
        return _tq2_weights(rng, nrows, ncols)
    if typ == I2_S:
        return _i2s_weights(rng, nrows, ncols)
    return _float_weights(rng, typ, nrows, ncols)


# Row counts: 1 and 2 (shorter than any group), odd counts (a row of a pair
# alone), 17 and 37 (tails of the 8-, 4- and 2-row groups).  Columns: F32 /
# F16 with ncols % 32 == 0, % 8 == 0 only (a vdot tail), and % 8 != 0 (the
# vdot order for every token count); TQ2_0 one and three 256-blocks; I2_S
# 1, 3 and 9 128-blocks (past the 8 that the 16-bit lanes take at once).
NROWS = (1, 2, 7, 9, 17, 37)
NCOLS = {F32: (64, 520, 40, 27), F16: (64, 520, 40, 27), TQ2_0: (256, 768), I2_S: (128, 384, 1152)}


def _activations(rng: np.random.Generator, typ: int, n: int, ncols: int, edges: bool) -> np.ndarray:
    x = (rng.standard_normal((n, ncols)) * rng.uniform(0.1, 10)).astype(np.float32)
    tiny = rng.random((n, ncols)) < 0.1  # F16: rounds to fp16 subnormals or 0
    x[tiny] *= np.float32(1e-6)
    if edges:  # inf and NaN, defined for every type (kernels.h, "Non-finite input")
        x[0, ncols // 3] = np.inf
        x[n - 1, ncols - 1] = np.nan
        if n > 2:
            x[1, 0] = -np.inf
    return x


class Case(NamedTuple):
    w: Weights
    x: np.ndarray


def _cases(typ: int) -> Iterator[Case]:
    rng = np.random.default_rng(512 + typ)
    for nrows in NROWS:
        for ncols in NCOLS[typ]:
            w = _weights(rng, typ, nrows, ncols)
            for n in range(1, 9):
                yield Case(w, _activations(rng, typ, n, ncols, edges=False))
            for n in (1, 3, 5):
                yield Case(w, _activations(rng, typ, n, ncols, edges=True))


def _weight(f, w: Weights, keep: list):  # type: ignore[no-untyped-def]
    p = f.new("bn_weight *")
    buf = f.from_buffer(w.data)
    keep.append(buf)
    p.type, p.data, p.ncols, p.nrows, p.row_bytes, p.scale = w.type, buf, w.ncols, w.nrows, w.data.shape[1], w.scale
    return p


def _prepare(w: Weights, x: np.ndarray) -> np.ndarray:
    """x prepared by the installed engine into a 64-byte aligned buffer."""
    keep: list = []
    pw = _weight(ffi, w, keep)
    size = lib.bn_act_size(pw, x.shape[0])
    raw = np.zeros(size + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    act = raw[off:off + size]
    lib.bn_act_prepare(pw, ffi.cast("const float *", ffi.from_buffer(x)), x.shape[0], ffi.from_buffer(act))
    return act


def _run(f, l, w: Weights, act: np.ndarray, n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    keep: list = []
    pw = _weight(f, w, keep)
    pa = f.from_buffer(act)
    y = np.full(n * w.nrows, np.nan, dtype=np.float32)
    py = f.cast("float *", f.from_buffer(y))
    # row ranges with an odd start: results must not depend on where one starts
    cut = w.nrows // 2 | 1 if w.nrows > 2 else w.nrows // 2
    l.bn_matmul_rows(pw, pa, n, py, 0, cut)
    l.bn_matmul_rows(pw, pa, n, py, cut, w.nrows)
    return y.reshape(n, w.nrows)


def _avx2_reference(w: Weights, act: np.ndarray, n: int, then: int = 0) -> np.ndarray:
    """The installed engine's AVX2 results; its forcing goes back to `then`."""
    lib.bn_kernels_force_portable(2)
    try:
        return _run(ffi, lib, w, act, n)
    finally:
        lib.bn_kernels_force_portable(then)


def _check(f, l, typ: int, level: int = 0) -> int:  # type: ignore[no-untyped-def]
    """Every case of typ through (f, l)'s kernels against the AVX2 ones;
    returns how many results were compared.  level 1 with the installed
    engine: it is held to AVX-512 without VNNI between the references."""
    compared = 0
    for case in _cases(typ):
        n = case.x.shape[0]
        act = _prepare(case.w, case.x)
        want = _avx2_reference(case.w, act, n, then=3 if level == 1 and l is lib else 0)
        got = _run(f, l, case.w, act, n)
        bad = np.argwhere(want.view(np.uint32) != got.view(np.uint32))
        assert bad.size == 0, (TYPE_NAMES[typ], case.w.nrows, case.w.ncols, n, bad[:4].tolist(),
                               got[tuple(bad[0])], want[tuple(bad[0])])
        compared += want.size
    return compared


TYPES = [F32, F16, TQ2_0, I2_S]


@pytest.mark.parametrize("typ", TYPES, ids=[TYPE_NAMES[t] for t in TYPES])
@pytest.mark.parametrize("level", [1, 2], ids=["avx512", "vnni"])
def test_simde_avx512_matches_avx2_bit_for_bit(simde_lib, level: int, typ: int) -> None:  # type: ignore[no-untyped-def]
    sffi, slib = simde_lib
    slib.bn_kernels_simde_level(level)
    try:
        impl = sffi.string(slib.bn_kernels_impl()).decode()
        assert impl.startswith("avx512-vnni (" if level == 2 else "avx512 (") and TYPE_NAMES[typ] in impl, impl
        assert _check(sffi, slib, typ) > 0
    finally:
        slib.bn_kernels_simde_level(0)


def test_simde_build_without_a_level_is_portable(simde_lib) -> None:  # type: ignore[no-untyped-def]
    sffi, slib = simde_lib
    assert sffi.string(slib.bn_kernels_impl()).decode() == "portable"


# level 2 (VNNI) is the engine's own choice on a VNNI CPU; level 1 is
# bn_kernels_force_portable(3), AVX-512 without VNNI at most
@pytest.mark.parametrize("typ", TYPES, ids=[TYPE_NAMES[t] for t in TYPES])
@pytest.mark.parametrize("level", [1, 2], ids=["avx512", "vnni"])
def test_native_avx512_matches_avx2_bit_for_bit(level: int, typ: int) -> None:
    missing = (X512_FLAGS | ({"avx512_vnni"} if level == 2 else set())) - cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}: these native AVX-512 kernels cannot run here "
                    "(the SIMDe variant checks the same source)")
    left_out = {"-DBN_NO_AVX512", "-DBN_NO_SIMD"} & set(os.environ.get("BITNET_CFLAGS", "").split())
    if left_out:
        pytest.skip(f"the engine is built without AVX-512 kernels (BITNET_CFLAGS has {sorted(left_out)})")
    lib.bn_kernels_force_portable(3 if level == 1 else 0)
    try:
        impl = ffi.string(lib.bn_kernels_impl()).decode()
        assert impl.startswith("avx512-vnni (" if level == 2 else "avx512 (") and TYPE_NAMES[typ] in impl, impl
        assert _check(ffi, lib, typ, level) > 0
    finally:
        lib.bn_kernels_force_portable(0)
