"""E14-E19: bad calls on a working model."""

from __future__ import annotations


import numpy as np

from pytest_bitnet.bridge.abi import ffi, lib

from ._core import Scenario, engine_point, entry
from .cabi import err_buffer, raise_for_code, tokenize_on_handle


@entry("E14", "inference", "call on a closed session / failed create → InferenceError (\"closed\", \"create\"), never a crash",
       expect="InferenceError", fragments=("closed", "create"))
def e14(s: Scenario) -> None:
    """tokenize/evaluate after close(); tokenize through the handle a failed create left (NULL)"""
    sess = s.session()
    sess.close()
    s.fails(sess.tokenize, "hello")
    s.fails(sess.evaluate, [1, 2])
    # At the C ABI: a failed create leaves the handle NULL; using it is an
    # InvalidHandle error (an InferenceError) naming the create, not a crash.
    out = ffi.new("bitnet_context_t **")
    err = err_buffer()
    rc = s.init_context(out, s.tmp / "absent.gguf", 64, err, len(err))
    s.check(rc != 0 and out[0] == ffi.NULL, "a failed create must leave the handle NULL")
    s.fails(tokenize_on_handle, out[0], fragments=("invalid context handle", "create"))


@entry("E15", "inference", "empty prompt (defined result) and empty token list → InferenceError naming the empty input",
       expect="InferenceError", fragments=("empty token list", "at least one token"))
def e15(s: Scenario) -> None:
    """tokenize('') -> [BOS]; evaluate([])"""
    sess = s.session()
    tokens = sess.tokenize("")
    s.check(list(tokens) == [1], f"tokenize('') must be [BOS], got {list(tokens)}")
    s.check(len(sess.tokenize("", add_bos=False)) == 0, "tokenize('', add_bos=False) must be empty")
    s.fails(sess.evaluate, np.array([], dtype=np.int32))
    s.fails(s.evaluate, [])


@entry("E16", "inference", "token id < 0 or ≥ n_vocab → InferenceError naming id and position",
       expect="InferenceError", fragments=("invalid token id", "at position", "ids must be in [0, 512)"))
def e16(s: Scenario) -> None:
    """evaluate([1, 5, 512]) and evaluate([1, -3]) on a 512-token vocabulary"""
    sess = s.session()
    s.fails(sess.evaluate, [1, 5, 512], fragments=("invalid token id 512 at position 2",))
    s.fails(sess.evaluate, [1, -3], fragments=("invalid token id -3 at position 1",))
    s.check(sess.n_past() == 0, "a refused evaluation must not advance the position")


@entry("E17", "inference", "tokens beyond n_ctx (one call or accumulated) → ContextOverflow with both numbers and n_ctx guidance",
       expect="ContextOverflow", fragments=("n_ctx",))
def e17(s: Scenario) -> None:
    """n_ctx=16: evaluate 20 tokens at once; then 10 + 10 tokens"""
    sess = s.session(n_ctx=16)
    s.fails(sess.evaluate, [1] + [5] * 19, fragments=("20", "16", "n_ctx"))
    sess.evaluate([1] + [5] * 9)
    s.fails(sess.evaluate, [5] * 10, fragments=("10", "16", "n_ctx"))
    s.check(sess.n_past() == 10, f"the overflowing call moved the position to {sess.n_past()}")


@entry("E18", "inference", "non-finite logits → InferenceError naming NaN/Inf and position",
       expect="InferenceError", inject="eval.logits=nan", fragments=("non-finite logit (NaN)", "at token position"),
       not_for=engine_point("eval.logits"))
def e18(s: Scenario) -> None:
    """evaluate(tokens) with the logits poisoned before the finiteness check"""
    sess = s.session()
    s.fails(sess.evaluate, sess.tokenize("hello"))


@entry("E19", "inference", "GPU eval / n_gpu_layers > 0 without GPU support → error naming the missing capability",
       expect="Unsupported", fragments=("GPU", "has_cuda=0", "n_gpu_layers=0"),
       in_process="it calls bitnet_cpp_eval_gpu on the session's handle, which an isolated session does not have here")
def e19(s: Scenario) -> None:
    """create(n_gpu_layers=4); bitnet_cpp_eval_gpu on a CPU context"""
    s.fails(s.session, n_gpu_layers=4)
    sess = s.session()
    rows = ffi.new("int32_t *")
    err = err_buffer()
    ctx = sess.handle
    rc = lib.bitnet_cpp_eval_gpu(ctx, ffi.new("int32_t[]", [1]), 1, ffi.NULL, 0, rows, rows, err, len(err))
    s.fails(raise_for_code, rc, "eval_gpu", err, fragments=("has_cuda=0",))
