"""E14-E19: bad calls on a working model.

E14 and E19 also show the C ABI (bitnet.h) through cffi: a C caller gets
an error code and message where a Python caller gets an exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from fault_inject.catalog.cabi import err_buffer, native_context, raise_for_code
from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.plugin.fixtures import Counters


def test_e14_call_on_closed_session_or_failed_create(bitnet_model: Path, tmp_path: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E14"]
    s = bn.BitnetSession.create(bitnet_model)
    s.close()
    with pytest.raises(entry.error_class) as exc:
        s.tokenize("hello")
    entry.check(exc.value)
    with pytest.raises(entry.error_class) as exc:
        s.evaluate([1, 2])
    entry.check(exc.value)

    # At the C ABI a failed create leaves the handle NULL; using it is an
    # error code (InvalidHandle, an InferenceError), not a crash.
    out = ffi.new("bitnet_context_t **")
    err = err_buffer()
    rc = lib.bitnet_cpp_init_context(out, str(tmp_path / "absent.gguf").encode(), 64, 0, err, len(err))
    assert rc != 0 and out[0] == ffi.NULL
    n = ffi.new("int32_t *")
    rc = lib.bitnet_cpp_tokenize_with_context(out[0], b"x", 1, 0, ffi.NULL, 0, n, err, len(err))
    assert rc == lib.BITNET_E_INVALID_HANDLE
    with pytest.raises(entry.error_class) as exc:
        raise_for_code(rc, "tokenize", err)
    entry.check(exc.value, fragments=("invalid context handle", "create"))
    assert bitnet_counters.delta() == {}


def test_e15_empty_prompt_and_empty_token_list(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E15"]
    with bn.BitnetSession.create(bitnet_model) as s:
        assert list(s.tokenize("")) == [1]  # an empty prompt is defined: just BOS
        assert len(s.tokenize("", add_bos=False)) == 0
        with pytest.raises(entry.error_class) as exc:
            s.evaluate(np.array([], dtype=np.int32))
        entry.check(exc.value)
    with pytest.raises(entry.error_class) as exc:
        bn.evaluate(bitnet_model, [])
    entry.check(exc.value)
    assert bitnet_counters.delta() == {}


def test_e16_token_id_out_of_range(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E16"]
    with bn.BitnetSession.create(bitnet_model) as s:  # 512-token vocabulary
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([1, 5, 512])
        entry.check(exc.value)
        assert "invalid token id 512 at position 2" in str(exc.value)
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([1, -3])
        entry.check(exc.value)
        assert "invalid token id -3 at position 1" in str(exc.value)
        assert s.n_past() == 0  # a refused evaluation does not advance the position
    assert bitnet_counters.delta() == {}


def test_e17_tokens_beyond_n_ctx(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E17"]
    with bn.BitnetSession.create(bitnet_model, n_ctx=16) as s:
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([1] + [5] * 19)  # 20 tokens at once
        entry.check(exc.value, fragments=("20", "16", "n_ctx"))
        s.evaluate([1] + [5] * 9)
        with pytest.raises(entry.error_class) as exc:
            s.evaluate([5] * 10)  # 10 + 10 accumulated
        entry.check(exc.value, fragments=("10", "16", "n_ctx"))
        assert s.n_past() == 10  # the overflowing call did not move the position
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("eval.logits=nan")
def test_e18_non_finite_logits(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E18"]
    with bn.BitnetSession.create(bitnet_model) as s:
        tokens = s.tokenize("hello")
        with pytest.raises(entry.error_class) as exc:
            s.evaluate(tokens)
        entry.check(exc.value)
    assert bitnet_counters.delta() == {}


def test_e19_gpu_requested_without_gpu_support(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E19"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, n_gpu_layers=4)
    entry.check(exc.value)
    # At the C ABI: bitnet_cpp_eval_gpu on a CPU-only context.
    with native_context(bitnet_model) as ctx:
        rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
        err = err_buffer()
        rc = lib.bitnet_cpp_eval_gpu(ctx, ffi.new("int32_t[]", [1]), 1, ffi.NULL, 0, rows, cols, err, len(err))
    assert rc == lib.BITNET_E_UNSUPPORTED
    with pytest.raises(entry.error_class) as exc:
        raise_for_code(rc, "eval_gpu", err)
    entry.check(exc.value, fragments=("has_cuda=0",))
    assert bitnet_counters.delta() == {}
