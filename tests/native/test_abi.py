"""The socket ABI contract (bitnet.h), exercised at the C level through cffi.

These are the guarantees a C caller relies on: size queries change
nothing, capacities are checked before anything is written, error text is
NUL-terminated within the caller's buffer and recoverable in full, and bad
handles are errors rather than crashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_bitnet.bridge.abi import ffi, lib

CANARY = 0x7EADBEEF


def err_buf(n: int = 512) -> Any:
    return ffi.new("char[]", n)


@pytest.fixture
def ctx(tiny_model: Path) -> Iterator[Any]:
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 64, 0, e, len(e)) == 0, ffi.string(e)
    yield out[0]
    assert lib.bitnet_cpp_free_context(out[0]) == 0


def test_tokenize_query_then_fill(ctx: Any) -> None:
    n = ffi.new("int32_t *")
    e = err_buf()
    assert lib.bitnet_cpp_tokenize_with_context(ctx, b"hello world", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0
    need = n[0]
    assert need >= 2
    buf = ffi.new("int32_t[]", need + 1)
    buf[need] = CANARY
    assert lib.bitnet_cpp_tokenize_with_context(ctx, b"hello world", 1, 0, buf, need, n, e, len(e)) == 0
    assert n[0] == need and buf[0] == 1 and buf[need] == CANARY


def test_tokenize_capacity_too_small_writes_nothing(ctx: Any) -> None:
    n = ffi.new("int32_t *")
    e = err_buf()
    lib.bitnet_cpp_tokenize_with_context(ctx, b"hello world again", 1, 0, ffi.NULL, 0, n, e, len(e))
    need = n[0]
    buf = ffi.new("int32_t[]", need)
    for i in range(need):
        buf[i] = CANARY
    rc = lib.bitnet_cpp_tokenize_with_context(ctx, b"hello world again", 1, 0, buf, need - 1, n, e, len(e))
    assert rc == lib.BITNET_E_INVALID_ARG
    assert f"buffer too small (need {need}, got {need - 1})" in ffi.string(e).decode()
    assert all(buf[i] == CANARY for i in range(need))


def test_eval_query_changes_nothing_and_capacity_is_checked(ctx: Any) -> None:
    toks = ffi.new("int32_t[]", [1, 5, 7])
    rows, cols, past = ffi.new("int32_t *"), ffi.new("int32_t *"), ffi.new("int32_t *")
    e = err_buf()
    assert lib.bitnet_cpp_eval_with_context(ctx, toks, 3, 0, ffi.NULL, 0, rows, cols, e, len(e)) == 0
    assert rows[0] == 3 and cols[0] == 512
    lib.bitnet_cpp_get_n_past(ctx, 0, past)
    assert past[0] == 0  # the query pass evaluated nothing
    need = rows[0] * cols[0]
    out = ffi.new("float[]", need + 1)
    out[need - 1] = 12345.0
    rc = lib.bitnet_cpp_eval_with_context(ctx, toks, 3, 0, out, need - 1, rows, cols, e, len(e))
    assert rc == lib.BITNET_E_INVALID_ARG
    assert f"buffer too small (need {need}, got {need - 1})" in ffi.string(e).decode()
    assert out[need - 1] == 12345.0
    lib.bitnet_cpp_get_n_past(ctx, 0, past)
    assert past[0] == 0
    assert lib.bitnet_cpp_eval_with_context(ctx, toks, 3, 0, out, need, rows, cols, e, len(e)) == 0
    lib.bitnet_cpp_get_n_past(ctx, 0, past)
    assert past[0] == 3


def test_error_text_is_truncated_safely_and_recoverable(tmp_path: Path) -> None:
    long_name = tmp_path / ("x" * 200 + ".gguf")
    out = ffi.new("bitnet_context_t **")
    small = ffi.new("char[]", 24)
    for i in range(24):
        small[i] = b"#"
    rc = lib.bitnet_cpp_init_context(out, str(long_name).encode(), 64, 0, small, 16)
    assert rc == lib.BITNET_E_MODEL_NOT_FOUND
    text = ffi.string(small)
    assert len(text) == 15  # cut to the buffer, NUL-terminated
    assert small[16] == b"#"  # nothing past err_len
    full_len = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
    assert full_len > 200
    full = ffi.new("char[]", full_len + 1)
    assert lib.bitnet_cpp_get_last_error(full, full_len + 1) == full_len
    assert ffi.string(full).startswith(text) and b"x" * 200 in ffi.string(full)
    assert lib.bitnet_cpp_get_last_error_code() == lib.BITNET_E_MODEL_NOT_FOUND


def test_null_and_freed_handles_are_errors_not_crashes(tiny_model: Path) -> None:
    n = ffi.new("int32_t *")
    e = err_buf()
    assert lib.bitnet_cpp_tokenize_with_context(ffi.NULL, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
    assert b"invalid context handle" in ffi.string(e)
    out = ffi.new("bitnet_context_t **")
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 16, 0, e, len(e)) == 0
    assert lib.bitnet_cpp_free_context(out[0]) == 0
    assert lib.bitnet_cpp_tokenize_with_context(out[0], b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
    assert lib.bitnet_cpp_free_context(out[0]) == lib.BITNET_E_INVALID_HANDLE
    assert lib.bitnet_cpp_free_context(ffi.NULL) == 0  # NULL-safe


def test_null_arguments(ctx: Any) -> None:
    e = err_buf()
    assert lib.bitnet_cpp_init_context(ffi.NULL, b"m.gguf", 8, 0, e, len(e)) == lib.BITNET_E_INVALID_ARG
    out = ffi.new("bitnet_context_t **")
    assert lib.bitnet_cpp_init_context(out, ffi.NULL, 8, 0, e, len(e)) == lib.BITNET_E_INVALID_ARG
    assert out[0] == ffi.NULL
    assert lib.bitnet_cpp_tokenize_with_context(ctx, ffi.NULL, 1, 0, ffi.NULL, 0, ffi.new("int32_t *"), e, len(e)) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_cpp_tokenize_with_context(ctx, b"x", 1, 0, ffi.NULL, 0, ffi.NULL, e, len(e)) == lib.BITNET_E_INVALID_ARG
    rows = ffi.new("int32_t *")
    assert lib.bitnet_cpp_eval_with_context(ctx, ffi.NULL, 2, 0, ffi.NULL, 0, rows, rows, e, len(e)) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_cpp_eval_with_context(ctx, ffi.new("int32_t[]", [1]), 1, 99, ffi.NULL, 0, rows, rows, e, len(e)) == lib.BITNET_E_INVALID_ARG
    # no error buffer at all is allowed
    assert lib.bitnet_cpp_init_context(out, b"/nonexistent.gguf", 8, 0, ffi.NULL, 0) == lib.BITNET_E_MODEL_NOT_FOUND


def test_session_socket(tiny_model: Path) -> None:
    out = ffi.new("bitnet_session_t **")
    e = err_buf()
    assert lib.bitnet_cpp_session_create(out, str(tiny_model).encode(), ffi.NULL, 32, 0, e, len(e)) == 0
    sess = out[0]
    assert lib.bitnet_cpp_get_counters(c := ffi.new("bitnet_counters_t *")) == 0 and c.sessions >= 1
    n = ffi.new("int32_t *")
    assert lib.bitnet_cpp_session_tokenize(sess, b"abc", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0
    toks = ffi.new("int32_t[]", n[0])
    assert lib.bitnet_cpp_session_tokenize(sess, b"abc", 1, 0, toks, n[0], n, e, len(e)) == 0
    rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
    logits = ffi.new("float[]", n[0] * 512)
    assert lib.bitnet_cpp_session_eval(sess, toks, n[0], logits, n[0] * 512, rows, cols, e, len(e)) == 0
    assert (rows[0], cols[0]) == (n[0], 512)
    assert lib.bitnet_cpp_session_create(out, str(tiny_model).encode(), b"tok.model", 32, 0, e, len(e)) == lib.BITNET_E_UNSUPPORTED
    assert lib.bitnet_cpp_session_free(sess) == 0
    assert lib.bitnet_cpp_session_free(sess) == lib.BITNET_E_INVALID_HANDLE


def test_eval_gpu_is_unsupported_with_the_missing_capability(ctx: Any) -> None:
    e = err_buf()
    rows = ffi.new("int32_t *")
    rc = lib.bitnet_cpp_eval_gpu(ctx, ffi.new("int32_t[]", [1]), 1, ffi.NULL, 0, rows, rows, e, len(e))
    assert rc == lib.BITNET_E_UNSUPPORTED
    assert b"has_cuda=0" in ffi.string(e)


def test_version_and_abi() -> None:
    assert lib.bitnet_cpp_abi_version() == lib.BITNET_ABI_VERSION
    assert ffi.string(lib.bitnet_cpp_version()).startswith(b"pytest-bitnet")


def test_per_call_functions(tiny_model: Path) -> None:
    n = ffi.new("int32_t *")
    e = err_buf()
    assert lib.crossval_bitnet_tokenize(str(tiny_model).encode(), b"hi there", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0
    toks = ffi.new("int32_t[]", n[0])
    assert lib.crossval_bitnet_tokenize(str(tiny_model).encode(), b"hi there", 1, 0, toks, n[0], n, e, len(e)) == 0
    rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
    assert lib.crossval_bitnet_eval_with_tokens(str(tiny_model).encode(), toks, n[0], 64, ffi.NULL, 0, rows, cols, e, len(e)) == 0
    assert (rows[0], cols[0]) == (n[0], 512)
    out = ffi.new("float[]", rows[0] * cols[0])
    assert lib.crossval_bitnet_eval_with_tokens(str(tiny_model).encode(), toks, n[0], 64, out, rows[0] * cols[0] - 1, rows, cols, e, len(e)) == lib.BITNET_E_INVALID_ARG
    assert lib.crossval_bitnet_eval_with_tokens(str(tiny_model).encode(), toks, n[0], 64, out, rows[0] * cols[0], rows, cols, e, len(e)) == 0
