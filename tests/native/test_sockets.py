"""The sockets' own checks (native/bridge/sockets.c) at the C ABI: NULL
outputs a C caller may pass, the context helpers a tier lacks, and a
context whose free failed halfway.

Each call goes through the raw ABI (cffi) and checks the code, the
message, and that nothing was created or left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.abi import Options, bundled_library, ffi, lib, raise_for_code
from pytest_bitnet.bridge.counters import LEAK_COUNTERS

from ..native_builds import build_broken_backend


def err_buf(n: int = 512) -> Any:
    return ffi.new("char[]", n)


def counters() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def last_error() -> str:
    n = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
    buf = ffi.new("char[]", n + 1)
    lib.bitnet_cpp_get_last_error(buf, n + 1)
    return ffi.string(buf).decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def ctx(tiny_model: Path) -> Iterator[Any]:
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 64, 0, e, len(e)) == 0, ffi.string(e)
    yield out[0]
    assert lib.bitnet_cpp_free_context(out[0]) == 0


@pytest.fixture(scope="module")
def real_library() -> Path:
    real = bundled_library()
    if real is None:
        pytest.skip("the standalone library is not built")
    return Path(real)


# ---- NULL outputs ------------------------------------------------------------------------------


def test_null_outputs_are_invalid_arguments(ctx: Any, tiny_model: Path) -> None:
    base = counters()
    assert lib.bitnet_cpp_get_n_past(ctx, 0, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert last_error() == "out_n_past is NULL"
    e = err_buf()
    rc = lib.bitnet_cpp_session_create(ffi.NULL, str(tiny_model).encode(), ffi.NULL, 64, 0, e, len(e))
    assert rc == lib.BITNET_E_INVALID_ARG and ffi.string(e) == b"out_session is NULL"
    assert lib.bitnet_cpp_get_capabilities(ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert last_error() == "out_caps is NULL"
    assert lib.bitnet_bridge_context_capabilities(ctx, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert last_error() == "out_caps is NULL"
    assert lib.bitnet_cpp_get_counters(ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert counters() == base  # nothing was created by any of them
    # and the context still answers
    past = ffi.new("int32_t *", -1)
    assert lib.bitnet_cpp_get_n_past(ctx, 0, past) == 0 and past[0] == 0


# ---- a tier without the helper -----------------------------------------------------------------


def test_reset_on_a_tier_without_the_helper_is_unsupported(tiny_model: Path) -> None:
    # Socket 1 removed: the library's Socket 4 serves the context, and the
    # session API has no reset (native/bridge/session_tier.c)
    with fi.inject("dlsym.bitnet_cpp_init_context=missing"):
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            rc = lib.bitnet_cpp_reset_context(s.handle, 0)
            assert rc == lib.BITNET_E_UNSUPPORTED
            msg = last_error()
            assert msg.startswith("backend 'dlopen:") and msg.endswith("does not export bitnet_cpp_reset_context")
            assert len(s.tokenize("still served")) > 1


# ---- a free that fails halfway -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fail_free_once(tmp_path_factory: pytest.TempPathFactory, real_library: Path) -> Path:
    return build_broken_backend(tmp_path_factory.mktemp("fail_free_once"), "FAIL_FREE_ONCE", real_library)


def test_a_context_whose_free_failed_after_the_fallback_was_freed_serves_nothing_until_the_retry(
    fail_free_once: Path, tiny_model: Path
) -> None:
    # The library serves the context, the (forced) fallback tier tokenize
    # and eval: the free releases the fallback's context first, then the
    # library's fails.  The tiers now name freed memory, so every call is
    # refused with CLEANUP until a retry frees the rest.
    base = counters()
    opts = Options(backend="dlopen", library_path=fail_free_once)
    opts.cdata.force_fallback = 1
    opts.cdata.fallback = opts._str(b"reference")
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    rc = lib.bitnet_bridge_init_context(out, str(tiny_model).encode(), 64, 0, opts.cdata, e, len(e))
    assert rc == 0, ffi.string(e)
    ctx = out[0]
    try:
        n = ffi.new("int32_t *")
        assert lib.bitnet_cpp_tokenize_with_context(ctx, b"hello", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0

        assert lib.bitnet_cpp_free_context(ctx) == lib.BITNET_E_CLEANUP
        # still counted, the bridge's context and the library's (its
        # counters are summed in): the retry owns both
        assert bn.live_counters()["contexts"] == base["contexts"] + 2
        rc = lib.bitnet_cpp_tokenize_with_context(ctx, b"hello", 1, 0, ffi.NULL, 0, n, e, len(e))
        assert rc == lib.BITNET_E_CLEANUP
        msg = ffi.string(e).decode()
        assert "this context is half freed" in msg and "retry free_context" in msg
        with pytest.raises(errors.CleanupFailed, match="half freed"):
            raise_for_code(rc, "tokenize", e)
    finally:
        assert lib.bitnet_cpp_free_context(ctx) == 0  # the retry frees the library's context
    assert lib.bitnet_cpp_free_context(ctx) == lib.BITNET_E_INVALID_HANDLE
    assert counters() == base
