"""The fallback chain's refusals (native/bridge/routing.c, and the per-call
chain of native/bridge/percall.c) at the C ABI: a fallback that is the
backend itself, a fallback library without the socket it must serve, and a
per-call function no tier can serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet.bridge.abi import Options, ffi, lib
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
from pytest_bitnet.bridge.llama import configured

from ..native_builds import build_library


def err_buf(n: int = 1024) -> Any:
    return ffi.new("char[]", n)


def counters() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)


def options(backend: str, fallback: str, force: int = 1, library_path: Path | None = None) -> Options:
    opts = Options(backend=backend, library_path=library_path)
    opts.cdata.force_fallback = force
    opts.cdata.fallback = opts._str(fallback.encode())
    return opts


def create(model: Path, opts: Options) -> tuple[int, str]:
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    rc = lib.bitnet_bridge_init_context(out, str(model).encode(), 64, 0, opts.cdata, e, len(e))
    if rc == 0:
        lib.bitnet_cpp_free_context(out[0])
    assert rc != 0 or out[0] != ffi.NULL
    return rc, ffi.string(e).decode()


def test_llama_cannot_be_its_own_fallback(tiny_model: Path) -> None:
    llama = configured()
    if not llama.available:
        pytest.skip(f"llama.cpp backend unavailable: {llama.reason}")
    base = counters()
    rc, msg = create(tiny_model, options("llama", "llama"))
    assert rc == lib.BITNET_E_NOT_AVAILABLE
    assert "BITNET_FALLBACK=llama, but llama.cpp is the backend itself: it cannot be its own fallback" in msg
    assert counters() == base


@pytest.fixture
def tokenize_less_adapter(tmp_path: Path) -> Iterator[Path]:
    """The llama.cpp adapter slot pointed at a library without Socket 2 (a
    C caller of bitnet_bridge_set_llama_library may do that); restored after."""
    adapter = build_library(tmp_path / "adapter", hide=["bitnet_cpp_tokenize_with_context", "crossval_bitnet_tokenize"])
    was = configured()
    lib.bitnet_bridge_set_llama_library(str(adapter).encode(), b"/nowhere/libllama.so", ffi.NULL)
    try:
        yield adapter
    finally:
        if was.available:
            lib.bitnet_bridge_set_llama_library(str(was.adapter).encode(), str(was.libllama).encode(), ffi.NULL)
        else:
            lib.bitnet_bridge_set_llama_library(ffi.NULL, ffi.NULL, str(was.reason).encode())


def test_a_fallback_library_without_the_socket_is_refused_naming_both_tiers(tokenize_less_adapter: Path, tiny_model: Path) -> None:
    base = counters()
    rc, msg = create(tiny_model, options("reference", "llama"))
    assert rc == lib.BITNET_E_NOT_AVAILABLE
    assert (
        "no tier can serve tokenize: the native tier (reference) is bypassed (BITNET_FORCE_LLAMA_FALLBACK=1) and the "
        "fallback tier (llama.cpp) lacks it too; install a library that exports bitnet_cpp_tokenize_with_context, or "
        "choose another fallback with BITNET_FALLBACK=reference"
    ) in msg
    assert counters() == base


def test_a_per_call_function_no_tier_can_serve_is_not_available(tiny_model: Path) -> None:
    opts = options("dlopen", "none", force=0)
    n = ffi.new("int32_t *")
    e = err_buf()
    with fi.inject("dlsym.crossval_bitnet_tokenize=missing"):
        rc = lib.bitnet_bridge_percall_tokenize(opts.cdata, str(tiny_model).encode(), b"hi", 1, 0, ffi.NULL, 0, n, e, len(e))
    assert rc == lib.BITNET_E_NOT_AVAILABLE
    msg = ffi.string(e).decode()
    assert msg.startswith("no tier can serve the per-call function: dlopen:")
    assert msg.endswith("lacks it and the fallback tier is disabled (BITNET_FALLBACK=none)")
    # with the fallback allowed, the reference engine serves it
    opts = options("dlopen", "reference", force=0)
    with fi.inject("dlsym.crossval_bitnet_tokenize=missing"):
        assert lib.bitnet_bridge_percall_tokenize(opts.cdata, str(tiny_model).encode(), b"hi", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0
    assert n[0] > 1


def test_an_unknown_fallback_is_refused_naming_the_valid_ones(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # native/bridge/options.c: from the options, and from the environment
    rc, msg = create(tiny_model, options("reference", "sideways", force=0))
    assert rc == lib.BITNET_E_INVALID_ARG
    assert msg == "unknown fallback 'sideways' (valid: auto, llama, reference, none); check BITNET_FALLBACK"
    monkeypatch.setenv("BITNET_FALLBACK", "elsewhere")
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 64, 0, e, len(e)) == lib.BITNET_E_INVALID_ARG
    assert b"unknown fallback 'elsewhere'" in ffi.string(e) and out[0] == ffi.NULL
