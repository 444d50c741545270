"""Socket 5 from Python (issue 20, item 18): evaluate(..., gpu=True).

No GPU is available where these run: the routing is tested with a real
library that implements bitnet_cpp_eval_gpu on the CPU and counts its calls
(tests/broken_backend.c, FAKE_GPU), and the refusals with libraries that
lack GPU support -- the reference engine, a library without the symbol, and
the CPU-only libllama of llama-cpp-python, whose error names llama.cpp's own
report.  What cannot be tested here: n_gpu_layers > 0 actually offloading
layers in a GPU build of llama.cpp, and bitnet_cpp_eval_gpu on one.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge._native import bundled_library
from pytest_bitnet.bridge.llama import configured

from ..native_builds import build_broken_backend, build_library

LLAMA = configured()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def gpu_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp("fake_gpu"), "FAKE_GPU", real)


def test_gpu_true_calls_the_librarys_socket5(gpu_library: Path, tiny_model: Path) -> None:
    counter = ctypes.CDLL(str(gpu_library)).broken_backend_gpu_calls  # the same loaded library
    toks = np.array([1, 5, 7], dtype=np.int32)
    with bn.BitnetSession.create(tiny_model) as ref:
        want = ref.evaluate(toks)
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=gpu_library) as s:
        calls = counter()
        np.testing.assert_array_equal(s.evaluate(toks, gpu=True), want)
        assert counter() == calls + 2  # its query and fill passes
        assert s.backend_info["evaluate_gpu"] == f"dlopen:{gpu_library}"
        s.evaluate(toks)  # the CPU path does not go there
        assert counter() == calls + 2
        with pytest.raises(errors.InvalidArgument, match="sequence 0 only"):
            s.evaluate(toks, seq_id=1, gpu=True)


def test_gpu_true_without_gpu_support_names_what_is_missing(tmp_path: Path, tiny_model: Path) -> None:
    toks = np.array([1, 5], dtype=np.int32)
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(errors.Unsupported, match=r"reference backend was built without GPU support \(has_cuda=0, has_metal=0, has_hip=0\)"):
            s.evaluate(toks, gpu=True)
        assert s.n_past() == 0
    lib = build_library(tmp_path / "no_gpu", hide=["bitnet_cpp_eval_gpu"])
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=lib) as s:
        with pytest.raises(errors.Unsupported) as exc:
            s.evaluate(toks, gpu=True)
        assert f"backend 'dlopen:{lib}' does not export bitnet_cpp_eval_gpu (Socket 5); it reports has_cuda=0, has_metal=0, has_hip=0" in str(exc.value)


@pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")
def test_cpu_only_llama_names_llama_cpps_own_report(tiny_model: Path) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this libllama supports GPU offload")
    before = bn.live_counters()["contexts"]
    with pytest.raises(errors.Unsupported) as exc:
        bn.BitnetSession.create(tiny_model, backend="llama", n_gpu_layers=4)
    assert "n_gpu_layers=4 asks for GPU offload, but llama.cpp" in str(exc.value)
    assert "reports no GPU offload support (llama_supports_gpu_offload() is false" in str(exc.value)
    assert bn.live_counters()["contexts"] == before
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        with pytest.raises(errors.Unsupported, match=r"llama_supports_gpu_offload\(\) is false"):
            s.evaluate(np.array([1, 5], dtype=np.int32), gpu=True)
        assert s.evaluate(np.array([1, 5], dtype=np.int32)).shape[0] == 2
