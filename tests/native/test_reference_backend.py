"""The reference backend's own argument checks (native/bridge/reference_backend.c).

The bridge passes a C caller's arguments to the backend as they are, so
what the backend refuses is what a C caller of bitnet.h sees: each call here
goes through the raw ABI (cffi, ffi.NULL and negative sizes a Python caller
never sends) and checks the code, the message, that nothing was created or
written, and that the last error agrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import pytest_bitnet as bn
from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
from pytest_bitnet.testing.malformed import Gguf

CANARY = 0x7EADBEEF
INT32_MAX = 2**31 - 1


def err_buf(n: int = 512) -> Any:
    return ffi.new("char[]", n)


def counters() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def refused(rc: int, e: Any, code: int, fragment: str) -> str:
    """The call failed with code, its buffer and the last error say fragment."""
    msg = ffi.string(e).decode()
    assert rc == code, msg
    assert fragment in msg
    assert lib.bitnet_cpp_get_last_error_code() == code
    return msg


@pytest.fixture
def ctx(tiny_model: Path) -> Iterator[Any]:
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    assert lib.bitnet_cpp_init_context(out, str(tiny_model).encode(), 64, 0, e, len(e)) == 0, ffi.string(e)
    yield out[0]
    assert lib.bitnet_cpp_free_context(out[0]) == 0


# ---- create ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_model", "n_ctx", "n_gpu_layers", "code", "fragment"),
    [
        (False, 64, 0, "BITNET_E_MODEL_NOT_FOUND", "model path is empty: pass the path of a .gguf file"),
        (True, 64, -1, "BITNET_E_INVALID_ARG", "n_gpu_layers=-1 is negative; use 0 for CPU only"),
        (True, -1, 0, "BITNET_E_INVALID_ARG", "n_ctx=-1 is negative; pass a positive context size, or 0 for the model's own"),
    ],
    ids=["empty-path", "negative-gpu-layers", "negative-n_ctx"],
)
def test_create_refuses_bad_arguments_and_creates_nothing(
    tiny_model: Path, use_model: bool, n_ctx: int, n_gpu_layers: int, code: str, fragment: str
) -> None:
    base = counters()
    out = ffi.new("bitnet_context_t **")
    out[0] = ffi.cast("bitnet_context_t *", 1)  # overwritten with NULL on failure
    e = err_buf()
    path = str(tiny_model).encode() if use_model else b""
    refused(lib.bitnet_cpp_init_context(out, path, n_ctx, n_gpu_layers, e, len(e)), e, getattr(lib, code), fragment)
    assert out[0] == ffi.NULL
    assert counters() == base


def test_per_call_functions_refuse_an_empty_path(tiny_model: Path) -> None:
    n = ffi.new("int32_t *")
    e = err_buf()
    rc = lib.crossval_bitnet_tokenize(b"", b"hi", 1, 0, ffi.NULL, 0, n, e, len(e))
    refused(rc, e, lib.BITNET_E_MODEL_NOT_FOUND, "model path is empty")


# ---- tokenize / detokenize / eval on a context -------------------------------------------------


def test_tokenize_fill_refuses_a_negative_capacity_and_writes_nothing(ctx: Any) -> None:
    n = ffi.new("int32_t *", -7)
    buf = ffi.new("int32_t[]", [CANARY] * 4)
    e = err_buf()
    rc = lib.bitnet_cpp_tokenize_with_context(ctx, b"hello", 1, 0, buf, -1, n, e, len(e))
    refused(rc, e, lib.BITNET_E_INVALID_ARG, "out_capacity=-1 is negative")
    assert list(buf) == [CANARY] * 4 and n[0] == -7


def test_detokenize_refuses_bad_arguments_and_writes_nothing(ctx: Any) -> None:
    toks = ffi.new("int32_t[]", [1, 5, 7])
    n = ffi.new("int32_t *", -7)
    text = ffi.new("char[]", b"#" * 8)
    e = err_buf()
    rc = lib.bitnet_cpp_detokenize_with_context(ctx, toks, 3, 0, 0, ffi.NULL, 0, ffi.NULL, e, len(e))
    refused(rc, e, lib.BITNET_E_INVALID_ARG, "out_len is NULL")
    rc = lib.bitnet_cpp_detokenize_with_context(ctx, toks, -1, 0, 0, ffi.NULL, 0, n, e, len(e))
    refused(rc, e, lib.BITNET_E_INVALID_ARG, "n_tokens=-1 is negative")
    rc = lib.bitnet_cpp_detokenize_with_context(ctx, toks, 3, 0, 0, text, -1, n, e, len(e))
    refused(rc, e, lib.BITNET_E_INVALID_ARG, "out_capacity=-1 is negative")
    assert ffi.buffer(text)[:8] == b"#" * 8 and n[0] == -7
    # the context still serves a well-formed call
    assert lib.bitnet_cpp_detokenize_with_context(ctx, toks, 3, 0, 0, ffi.NULL, 0, n, e, len(e)) == 0 and n[0] > 0


@pytest.mark.parametrize("fill", [False, True], ids=["query", "fill"])
def test_eval_refuses_null_shape_pointers_and_evaluates_nothing(ctx: Any, fill: bool) -> None:
    toks = ffi.new("int32_t[]", [1, 5, 7])
    rows = ffi.new("int32_t *", -7)
    logits = ffi.new("float[]", 3 * 512) if fill else ffi.NULL
    e = err_buf()
    for r, c in ((ffi.NULL, rows), (rows, ffi.NULL)):
        rc = lib.bitnet_cpp_eval_with_context(ctx, toks, 3, 0, logits, 3 * 512 if fill else 0, r, c, e, len(e))
        refused(rc, e, lib.BITNET_E_INVALID_ARG, "out_rows/out_cols is NULL")
    assert rows[0] == -7
    past = ffi.new("int32_t *")
    assert lib.bitnet_cpp_get_n_past(ctx, 0, past) == 0 and past[0] == 0


# ---- per-call eval -----------------------------------------------------------------------------


def test_per_call_eval_refuses_a_negative_n_ctx(tiny_model: Path) -> None:
    toks = ffi.new("int32_t[]", [1, 5])
    rows, cols = ffi.new("int32_t *", -7), ffi.new("int32_t *", -7)
    e = err_buf()
    rc = lib.crossval_bitnet_eval_with_tokens(str(tiny_model).encode(), toks, 2, -1, ffi.NULL, 0, rows, cols, e, len(e))
    refused(rc, e, lib.BITNET_E_INVALID_ARG, "n_ctx=-1 is negative")
    assert (rows[0], cols[0]) == (-7, -7)


def test_per_call_eval_query_refuses_null_shape_pointers(tiny_model: Path) -> None:
    toks = ffi.new("int32_t[]", [1, 5])
    rows = ffi.new("int32_t *", -7)
    e = err_buf()
    rc = lib.crossval_bitnet_eval_with_tokens(str(tiny_model).encode(), toks, 2, 0, ffi.NULL, 0, rows, ffi.NULL, e, len(e))
    refused(rc, e, lib.BITNET_E_INVALID_ARG, "out_rows/out_cols is NULL")
    assert rows[0] == -7


# ---- a text longer than an int32_t can count -----------------------------------------------------


@pytest.fixture
def long_token_model(tiny_model: Path, tmp_path: Path) -> tuple[Path, int]:
    """The tiny model with one ordinary token's text made 1 MiB long: 2048 of
    them detokenize to 2^31 bytes, one more than out_len can hold."""
    g = Gguf.read(tiny_model)
    tokens = list(g.kvs["tokenizer.ggml.tokens"].value)  # type: ignore[call-overload]
    types = list(g.kvs["tokenizer.ggml.token_type"].value)  # type: ignore[call-overload]
    tid = next(i for i in range(len(tokens) - 1, 0, -1) if types[i] == 1)  # a normal token
    tokens[tid] = "q" * 2**20
    g.set("tokenizer.ggml.tokens", tokens)
    path = tmp_path / "long-token.gguf"
    g.write(path)
    return path, tid


def test_detokenize_refuses_a_text_longer_than_int32_max(long_token_model: tuple[Path, int]) -> None:
    path, tid = long_token_model
    out = ffi.new("bitnet_context_t **")
    e = err_buf()
    assert lib.bitnet_cpp_init_context(out, str(path).encode(), 64, 0, e, len(e)) == 0, ffi.string(e)
    try:
        toks = ffi.new("int32_t[]", [tid] * 2048)
        n = ffi.new("int32_t *")
        # the query pass only counts: 2048 x 2^20 bytes = 2^31, one too many
        rc = lib.bitnet_cpp_detokenize_with_context(out[0], toks, 2048, 0, 0, ffi.NULL, 0, n, e, len(e))
        refused(rc, e, lib.BITNET_E_INFERENCE, "the text of 2048 tokens is longer than 2^31-1 bytes")
        assert n[0] == INT32_MAX  # clamped, never a negative size
        assert lib.bitnet_cpp_detokenize_with_context(out[0], toks, 2047, 0, 0, ffi.NULL, 0, n, e, len(e)) == 0
        assert n[0] == 2047 * 2**20
    finally:
        assert lib.bitnet_cpp_free_context(out[0]) == 0
