"""E20-E26: the two-pass buffer protocol (a NULL buffer asks for the size).

E24 and E26 work at the C ABI through cffi: a Python caller never sees a
too-small buffer, but a C caller of bitnet.h does, and the bridge must not
write past what it was given.
"""

from __future__ import annotations


from pytest_bitnet.bridge.abi import ffi, lib

from ._core import Scenario, entry
from .cabi import CANARY, err_buffer, guarded, raise_for_code

@entry("E20", "buffers", "tokenize pass 1 fails → InferenceError \"QUERY PHASE\" with operation and parameters",
       expect="InferenceError", inject="tokenize.query=fail", fragments=("tokenize (QUERY PHASE) failed", "prompt_bytes=5"))
def e20(s: Scenario) -> None:
    """session.tokenize('hello') with the size query failing"""
    s.fails(s.session().tokenize, "hello")


@entry("E21", "buffers", "tokenize pass 2 fails → \"FILL PHASE\"",
       expect="InferenceError", inject="tokenize.fill=fail", fragments=("tokenize (FILL PHASE) failed", "prompt_bytes=5"))
def e21(s: Scenario) -> None:
    """session.tokenize('hello') with the fill pass failing"""
    s.fails(s.session().tokenize, "hello")


@entry("E22", "buffers", "eval pass 1 fails → \"QUERY PHASE\"",
       expect="InferenceError", inject="eval.query=fail", fragments=("evaluate (QUERY PHASE) failed", "n_tokens=2"))
def e22(s: Scenario) -> None:
    """session.evaluate([1, 2]) with the size query failing"""
    s.fails(s.session().evaluate, [1, 2])


@entry("E23", "buffers", "eval pass 2 fails → \"FILL PHASE\"",
       expect="InferenceError", inject="eval.fill=fail", fragments=("evaluate (FILL PHASE) failed", "n_tokens=2"))
def e23(s: Scenario) -> None:
    """session.evaluate([1, 2]) with the fill pass failing"""
    s.fails(s.session().evaluate, [1, 2])


@entry("E24", "buffers", "capacity below required at the C ABI → \"buffer too small (need N, got M)\", nothing written past capacity",
       expect="InvalidArgument", fragments=("buffer too small (need {need}, got {got})",),
       in_process="it calls the C ABI on the session's handle, which an isolated session does not have here")
def e24(s: Scenario) -> None:
    """bitnet_cpp_tokenize_with_context / eval_with_context with capacity one short of the query's answer"""
    ctx = s.session().handle
    err = err_buffer()
    prompt = b"hello world, once more"
    n = ffi.new("int32_t *")
    raise_for_code(lib.bitnet_cpp_tokenize_with_context(ctx, prompt, 1, 0, ffi.NULL, 0, n, err, len(err)), "tokenize", err)
    need = n[0]
    toks = guarded("int32_t", need - 1, 8, CANARY)
    s.values.update(need=need, got=need - 1)
    rc = lib.bitnet_cpp_tokenize_with_context(ctx, prompt, 1, 0, toks, need - 1, n, err, len(err))
    s.fails(raise_for_code, rc, "tokenize", err)
    s.check(all(toks[i] == CANARY for i in range(need + 7)), "tokenize wrote into a buffer it reported too small")

    rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
    tokens = ffi.new("int32_t[]", [1, 5, 7])
    raise_for_code(lib.bitnet_cpp_eval_with_context(ctx, tokens, 3, 0, ffi.NULL, 0, rows, cols, err, len(err)), "evaluate", err)
    need = rows[0] * cols[0]
    logits = guarded("float", need - 1, 64, 12345.0)
    s.values.update(need=need, got=need - 1)
    rc = lib.bitnet_cpp_eval_with_context(ctx, tokens, 3, 0, logits, need - 1, rows, cols, err, len(err))
    s.fails(raise_for_code, rc, "evaluate", err)
    s.check(all(logits[i] == 12345.0 for i in range(need + 63)), "evaluate wrote into a buffer it reported too small")
    past = ffi.new("int32_t *")
    lib.bitnet_cpp_get_n_past(ctx, 0, past)
    s.check(past[0] == 0, "a refused fill pass advanced the position")


@entry("E25", "buffers", "fill pass needs more than the query pass said (`grow`) → error with both sizes, no overflow",
       expect="InferenceError", inject="tokenize.fill=grow(3);eval.fill=grow(3)",
       fragments=("FILL PHASE", "the query pass said", "nothing was written"))
def e25(s: Scenario) -> None:
    """session.tokenize / session.evaluate while each fill pass needs 3 more than the query said"""
    sess = s.session()
    s.fails(sess.tokenize, "hello", fragments=("needs 8 tokens but the query pass said 5",))
    s.fails(sess.evaluate, [1, 2], fragments=("needs 2560 logits but the query pass said 1024",))
    s.check(sess.n_past() == 0, "a refused fill pass advanced the position")


@entry("E26", "buffers", "native message longer than the error buffer → truncation signalled, full text recoverable",
       expect="ModelLoadError", fragments=("x" * 200,))
def e26(s: Scenario) -> None:
    """init_context('<200-char name>', err_len=16) at the C ABI; then bitnet_cpp_get_last_error"""
    long_name = s.tmp / ("x" * 200 + ".gguf")
    out = ffi.new("bitnet_context_t **")
    small = guarded("char", 16, 8, b"#")
    rc = s.init_context(out, long_name, 64, small, 16)
    if rc == lib.BITNET_E_NOT_AVAILABLE:  # the stub column: nothing can load
        raise_for_code(rc, "create", None)  # None: the whole text, from get_last_error
    cut = ffi.string(small)
    s.check(rc != 0 and len(cut) == 15, f"expected the message cut to 15 bytes + NUL, got {len(cut)}")
    s.check(all(small[i] == b"#" for i in range(16, 24)), "the message was written past err_len")
    full_len = lib.bitnet_cpp_get_last_error(ffi.NULL, 0)
    s.check(full_len > 200, f"get_last_error(NULL, 0) says {full_len} bytes: truncation is not signalled")
    full = ffi.new("char[]", full_len + 1)
    s.check(lib.bitnet_cpp_get_last_error(full, full_len + 1) == full_len, "get_last_error returned a different length")
    s.check(ffi.string(full).startswith(cut), "the recovered text does not continue the truncated one")
    s.fails(raise_for_code, rc, "create", full)
