"""E20-E26: the two-pass buffer protocol (a NULL buffer asks for the size).

A Python caller never sees a too-small buffer, but a C caller of bitnet.h
does: E24 and E26 work at the C ABI through cffi and check that the bridge
writes nothing past the capacity it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from fault_inject.catalog.cabi import (
    CANARY,
    err_buffer,
    guarded,
    native_context,
    raise_for_code,
)
from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.plugin.fixtures import Counters


@pytest.mark.bitnet_inject("tokenize.query=fail")
def test_e20_tokenize_query_pass_fails(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E20"]
    with bn.BitnetSession.create(bitnet_model) as s:
        with pytest.raises(entry.error_class) as exc:
            s.tokenize("hello")
        entry.check(exc.value)  # "tokenize (QUERY PHASE) failed", prompt_bytes=5
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("tokenize.fill=fail")
def test_e21_tokenize_fill_pass_fails(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E21"]
    with bn.BitnetSession.create(bitnet_model) as s:
        with pytest.raises(entry.error_class) as exc:
            s.tokenize("hello")
        entry.check(exc.value)  # "tokenize (FILL PHASE) failed"
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("eval.query=fail")
def test_e22_eval_query_pass_fails(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E22"]
    with bn.BitnetSession.create(bitnet_model) as s:
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([1, 2])
        entry.check(exc.value)  # "evaluate (QUERY PHASE) failed", n_tokens=2
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("eval.fill=fail")
def test_e23_eval_fill_pass_fails(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E23"]
    with bn.BitnetSession.create(bitnet_model) as s:
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([1, 2])
        entry.check(exc.value)  # "evaluate (FILL PHASE) failed"
    assert bitnet_counters.delta() == {}


def test_e24_capacity_below_required_writes_nothing(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E24"]
    err = err_buffer()
    with native_context(bitnet_model) as ctx:
        # tokenize: ask for the size (NULL buffer), then offer one slot less.
        prompt = b"hello world, once more"
        n = ffi.new("int32_t *")
        raise_for_code(lib.bitnet_cpp_tokenize_with_context(ctx, prompt, 1, 0, ffi.NULL, 0, n, err, len(err)), "tokenize", err)
        need = n[0]
        tokens = guarded("int32_t", need - 1, 8, CANARY)
        rc = lib.bitnet_cpp_tokenize_with_context(ctx, prompt, 1, 0, tokens, need - 1, n, err, len(err))
        with pytest.raises(entry.error_class) as exc:
            raise_for_code(rc, "tokenize", err)
        entry.check(exc.value, values={"need": need, "got": need - 1})
        assert all(tokens[i] == CANARY for i in range(need - 1 + 8)), "tokenize wrote into a buffer it reported too small"

        # evaluate: the same with rows x cols logits.
        ids = ffi.new("int32_t[]", [1, 5, 7])
        rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
        raise_for_code(lib.bitnet_cpp_eval_with_context(ctx, ids, 3, 0, ffi.NULL, 0, rows, cols, err, len(err)), "evaluate", err)
        need = rows[0] * cols[0]
        logits = guarded("float", need - 1, 64, 12345.0)
        rc = lib.bitnet_cpp_eval_with_context(ctx, ids, 3, 0, logits, need - 1, rows, cols, err, len(err))
        with pytest.raises(entry.error_class) as exc:
            raise_for_code(rc, "evaluate", err)
        entry.check(exc.value, values={"need": need, "got": need - 1})
        assert all(logits[i] == 12345.0 for i in range(need - 1 + 64)), "evaluate wrote into a buffer it reported too small"
        past = ffi.new("int32_t *")
        assert lib.bitnet_cpp_get_n_past(ctx, 0, past) == 0
        assert past[0] == 0  # the refused fill pass did not advance the position
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("tokenize.fill=grow(3);eval.fill=grow(3)")
def test_e25_fill_pass_needs_more_than_the_query_said(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E25"]
    with bn.BitnetSession.create(bitnet_model) as s:
        with pytest.raises(entry.error_class) as exc:
            s.tokenize("hello")
        entry.check(exc.value)
        assert "needs 8 tokens but the query pass said 5" in str(exc.value)
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([1, 2])
        entry.check(exc.value)
        assert "needs 2560 logits but the query pass said 1024" in str(exc.value)
        assert s.n_past() == 0
    assert bitnet_counters.delta() == {}


def test_e26_long_native_message_is_truncated_and_recoverable(tmp_path: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E26"]
    long_name = tmp_path / ("x" * 200 + ".gguf")
    out = ffi.new("bitnet_context_t **")
    small = guarded("char", 16, 8, b"#")  # err_len 16, then 8 guard bytes
    rc = lib.bitnet_cpp_init_context(out, str(long_name).encode(), 64, 0, small, 16)
    assert rc == lib.BITNET_E_MODEL_NOT_FOUND
    cut = ffi.string(small)
    assert len(cut) == 15  # cut to the buffer, NUL-terminated
    assert all(small[i] == b"#" for i in range(16, 24)), "the message was written past err_len"
    # The whole text: ask for its length, then fetch it.
    full_len = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
    assert full_len > 200  # longer than what was shown: truncation is signalled
    full = ffi.new("char[]", full_len + 1)
    assert lib.bitnet_cpp_get_last_error(full, full_len + 1) == full_len
    assert ffi.string(full).startswith(cut)
    with pytest.raises(entry.error_class) as exc:
        raise_for_code(rc, "create", full)
    entry.check(exc.value)  # the 200 x's of the name survive
    assert bitnet_counters.delta() == {}
