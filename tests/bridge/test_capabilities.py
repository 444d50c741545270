"""Socket 6 answers for the library that serves the calls (issue 20, item 16).

Before, bitnet_cpp_get_capabilities always answered from the reference
engine: a library reporting has_cuda=1 showed False, and llama.cpp's own
report was never asked.  The libraries here are real ones built by the
tests (tests/broken_backend.c), and llama.cpp's report is compared with
llama-cpp-python's own view of the same libllama.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge._native import bundled_library
from pytest_bitnet.bridge.llama import configured

from ..native_builds import build_broken_backend, build_library


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def cuda_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library that reports has_cuda=1 (and serves Socket 5 on the CPU)."""
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp("fake_gpu"), "FAKE_GPU", real)


@pytest.fixture(scope="module")
def no_socket6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("no_caps"), hide=["bitnet_cpp_get_capabilities"])


def test_capabilities_come_from_the_selected_library(cuda_library: Path) -> None:
    assert bn.capabilities(backend="dlopen", library_path=cuda_library).has_cuda is True
    assert bn.capabilities().has_cuda is False  # the reference engine: no GPU
    # the CPU part is the library's too (it forwards the real engine's)
    assert bn.capabilities(backend="dlopen", library_path=cuda_library).has_avx2 == bn.capabilities().has_avx2


def test_session_capabilities_are_those_of_its_library(cuda_library: Path, tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=cuda_library) as s:
        assert s.capabilities.has_cuda is True
    with bn.BitnetSession.create(tiny_model) as s:
        assert s.capabilities.has_cuda is False
    with pytest.raises(errors.InferenceError, match="closed"):
        s.capabilities


def test_diagnostics_show_the_capabilities_of_the_library_in_use(cuda_library: Path, no_socket6: Path) -> None:
    from pytest_bitnet.bridge.diagnostics import diagnostics, format_text

    report = diagnostics(backend="dlopen", library_path=str(cuda_library))
    assert report["capabilities"]["has_cuda"] is True
    assert "'has_cuda': True" in format_text(report)
    report = diagnostics(backend="dlopen", library_path=str(no_socket6))
    assert report["capabilities"] is None and "does not export bitnet_cpp_get_capabilities" in report["capabilities_error"]
    assert "capabilities    unknown:" in format_text(report)


def test_a_library_without_socket6_is_unknown_not_false(no_socket6: Path, tiny_model: Path) -> None:
    with pytest.raises(errors.Unsupported, match=rf"dlopen:{no_socket6} does not export bitnet_cpp_get_capabilities \(Socket 6\)"):
        bn.capabilities(backend="dlopen", library_path=no_socket6)
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=no_socket6) as s:
        with pytest.raises(errors.Unsupported, match="Socket 6"):
            s.capabilities


def test_stub_mode_has_no_capabilities() -> None:
    with pytest.raises(errors.CppNotAvailable, match="STUB mode"):
        bn.capabilities(backend="stub")


LLAMA = configured()


@pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")
def test_llama_answers_from_llama_cpps_own_report(tiny_model: Path) -> None:
    import llama_cpp  # llama-cpp-python's view of the same libllama

    caps = bn.capabilities(backend="llama")
    info = llama_cpp.llama_print_system_info().decode()
    assert caps.has_avx2 == ("AVX2 = 1" in info)
    assert caps.has_avx512 == ("AVX512 = 1" in info)
    if not llama_cpp.llama_supports_gpu_offload():
        assert not (caps.has_cuda or caps.has_metal or caps.has_hip)
    with bn.BitnetSession.create(tiny_model, backend="llama") as s:
        assert s.capabilities == caps
