"""Deadlines: per call, per session, BITNET_CPP_TIMEOUT; checked at native
step points, with no thread per call and the session left usable."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import abi

# A timed-out call must return well within this of its deadline (generous for
# a loaded machine: the point is that the deadline ends the call).
LATE = 2.0


def test_expired_deadline_on_evaluate_leaves_session_usable(tiny_model: Path) -> None:
    threads_before = threading.active_count()
    with bn.BitnetSession.create(tiny_model) as s:
        toks = s.tokenize("deadline")
        s.evaluate(toks[:2])
        with pytest.raises(errors.OperationTimeout, match="evaluate timed out") as exc:
            s.evaluate(toks[2:], timeout=0)
        assert exc.value.duration == 0
        assert exc.value.context.phase == "FILL PHASE"
        assert s.n_past() == 2  # the failed call left the KV state as it was
        whole = s.evaluate(toks[2:])
    with bn.BitnetSession.create(tiny_model) as fresh:
        np.testing.assert_array_equal(fresh.evaluate(toks)[2:], whole)
    assert threading.active_count() == threads_before


def test_expired_deadline_on_create_leaks_nothing(tiny_model: Path) -> None:
    before = bn.live_counters()
    with pytest.raises(errors.OperationTimeout, match="create timed out"):
        bn.BitnetSession.create(tiny_model, timeout=0)
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "models", "bytes")} == {k: before[k] for k in ("contexts", "models", "bytes")}


def test_expired_deadline_on_long_tokenize(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(errors.OperationTimeout, match="tokenize timed out"):
            s.tokenize("word " * 5000, timeout=0)
        assert len(s.tokenize("still works")) > 1


def test_session_default_and_environment(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with bn.BitnetSession.create(tiny_model, timeout=math.inf) as s:
        assert s.timeout == math.inf
        with pytest.raises(errors.OperationTimeout):
            s.evaluate([1, 2], timeout=0)  # the call's timeout wins
    monkeypatch.setenv("BITNET_CPP_TIMEOUT", "0")
    with pytest.raises(errors.OperationTimeout):
        bn.BitnetSession.create(tiny_model)
    with pytest.raises(errors.OperationTimeout):
        bn.evaluate(tiny_model, [1, 2])
    monkeypatch.setenv("BITNET_CPP_TIMEOUT", "none")
    with bn.BitnetSession.create(tiny_model) as s:
        assert s.timeout == math.inf
    monkeypatch.setenv("BITNET_CPP_TIMEOUT", "soon")
    with pytest.raises(errors.InvalidArgument, match="invalid timeout 'soon' from BITNET_CPP_TIMEOUT"):
        bn.BitnetSession.create(tiny_model)


def test_default_is_thirty_seconds(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITNET_CPP_TIMEOUT", raising=False)
    with bn.BitnetSession.create(tiny_model) as s:
        assert s.timeout == 30.0


@pytest.mark.parametrize("bad, fragment", [(float("nan"), "nan"), (-1, "invalid timeout -1 from timeout: expected seconds >= 0"), ("5", "must be a number"), (True, "must be a number")])
def test_bad_timeouts_are_refused(tiny_model: Path, bad: object, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=fragment):
        bn.BitnetSession.create(tiny_model, timeout=bad)  # type: ignore[arg-type]
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(errors.InvalidArgument, match=fragment):
            s.evaluate([1], timeout=bad)  # type: ignore[arg-type]


def test_e46_timed_work_equals_untimed(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model, timeout=math.inf) as s:
        toks = s.tokenize("same result with or without a deadline")
        untimed = s.evaluate(toks)
        s.reset()
        timed = s.evaluate(toks, timeout=5.0)
    np.testing.assert_array_equal(timed, untimed)
    np.testing.assert_array_equal(bn.evaluate(tiny_model, toks, timeout=5.0), untimed)


# ---- one deadline for the whole call ------------------------------------------------------------

TWO_PASS = {
    # operation: (the points of its two passes, the call)
    "session tokenize": ("tokenize", lambda s, path, t: s.tokenize("two passes", timeout=t)),
    "session evaluate": ("eval", lambda s, path, t: s.evaluate([1, 2, 3], timeout=t)),
    "per-call tokenize": ("tokenize", lambda s, path, t: bn.tokenize(path, "two passes", timeout=t)),
    "per-call evaluate": ("eval", lambda s, path, t: bn.evaluate(path, [1, 2, 3], timeout=t)),
}


@pytest.mark.parametrize("operation", list(TWO_PASS))
def test_one_deadline_covers_both_passes(tiny_model: Path, operation: str) -> None:
    # Each pass alone fits the budget (600 ms of 1 s), both together do not:
    # with a fresh budget per pass the call ran 1.2 s and succeeded.
    prefix, call = TWO_PASS[operation]
    timeout = 1.0
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
        with fi.inject(f"{prefix}.query=delay(600);{prefix}.fill=delay(600)"):
            start = time.monotonic()
            with pytest.raises(errors.OperationTimeout, match="timed out") as exc:
                call(s, tiny_model, timeout)
            elapsed = time.monotonic() - start
        assert exc.value.context.phase == "FILL PHASE"  # the query pass fit, the fill ran out
        assert elapsed < timeout + LATE
        assert s.n_past() == 0 and s.tokenize("usable").size > 1


def test_a_c_callers_timeout_still_restarts_with_each_call(tiny_model: Path) -> None:
    # bitnet_bridge_set_call_timeout keeps its meaning for C callers: measured
    # from the start of each call; bitnet_bridge_set_call_deadline is one time.
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s, fi.inject("tokenize.query=delay(600)"):
        n, err = abi.ffi.new("int32_t *"), abi.ffi.new("char[]", abi.ERR_LEN)

        def query() -> int:
            return int(abi.lib.bitnet_cpp_tokenize_with_context(s.handle, b"x", 1, 0, abi.ffi.NULL, 0, n, err, len(err)))

        try:
            abi.lib.bitnet_bridge_set_call_timeout(int(1e9))
            assert [query(), query()] == [0, 0]  # 600 ms each, 1 s each
            abi.lib.bitnet_bridge_set_call_deadline(abi.lib.bitnet_bridge_now_ns() + int(1e9))
            assert query() == 0
            assert query() == abi.lib.BITNET_E_TIMEOUT  # the same 1 s
            abi.lib.bitnet_bridge_set_call_deadline(abi.lib.bitnet_bridge_now_ns() - 1)
            assert query() == abi.lib.BITNET_E_TIMEOUT  # already past
            abi.lib.bitnet_bridge_set_call_deadline(0)  # none
            assert query() == 0
        finally:
            abi.lib.bitnet_bridge_set_call_timeout(0)


@pytest.mark.parametrize("backend", ["reference", "dlopen"])  # dlopen: the hang is inside the loaded library
def test_create_with_no_deadline_refuses_to_hang(tiny_model: Path, backend: str) -> None:
    # No session exists while create runs, so no thread can cancel it: a hang
    # with no deadline could never end, and must be refused at once.  Each
    # load step in turn, in a child the sweep kills if it hangs after all.
    def create() -> None:
        bn.BitnetSession.create(tiny_model, n_ctx=64, timeout=math.inf, backend=backend).close()

    report = fi.sweep("load.step", create, action="hang", fork=True, timeout=30.0, stop_on_failure=True)
    assert report.ok, report.describe()
    fired = [it for it in report.iterations if it.fired]
    assert len(fired) >= 3  # the header, kv pairs, tensor infos, data chunks
    for it in fired:
        assert it.error == "InternalError" and it.message, it.line()
        assert "refusing to hang in create" in it.message and "timeout=" in it.message, it.message
        assert it.seconds < LATE


def test_a_deadline_inside_a_long_matmul_ends_it(make_model: Callable[..., Path]) -> None:
    # The forward pass checked the deadline once per layer, so a long matmul
    # ran to its end: past the last layer's check, a deadline during the
    # output projection was never seen and the call returned late with
    # success.  A model whose evaluation is almost all output projection
    # (32000-token vocabulary, one small layer): a deadline at half an
    # untimed evaluation falls inside it, whatever this machine's speed.
    path = make_model(n_vocab=32000, n_layer=1, n_ff=256, embd_type="f16")
    with bn.BitnetSession.create(path, n_ctx=512, timeout=math.inf) as s:
        tokens = s.tokenize("the output projection dominates " * 40)[:256]
        start = time.monotonic()
        s.evaluate(tokens)
        full = time.monotonic() - start
        s.reset()
        start = time.monotonic()
        with pytest.raises(errors.OperationTimeout, match="evaluate timed out"):
            s.evaluate(tokens, timeout=full / 2)
        assert time.monotonic() - start < full / 2 + LATE
        assert s.n_past() == 0
        np.testing.assert_array_equal(s.evaluate(tokens[:4]), s.evaluate(tokens[:4], seq_id=1))


# ---- close() has a deadline too (issue 15) --------------------------------------------------
#
# A free is bounded up to where it can still be refused whole (before the
# backend releases anything): a free_context point that is slow or hangs
# ends at the deadline, the session stays open and counted, and a retry
# frees it.


def _live() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in ("contexts", "models", "bytes", "allocations")}


def test_close_hanging_in_free_ends_at_the_sessions_timeout(tiny_model: Path) -> None:
    base = _live()
    s = bn.BitnetSession.create(tiny_model, timeout=0.2)
    with fi.inject("free_context=hang") as armed:
        t0 = time.perf_counter()
        with pytest.raises(errors.CleanupFailed, match="free_context timed out") as info:
            s.close()
        took = time.perf_counter() - t0
        assert armed.fired("free_context") == 1
    assert 0.2 <= took < 0.2 + LATE
    ctx = info.value.context
    assert ctx.parameters["cause"] == "OperationTimeout" and ctx.parameters["timeout"] == 0.2
    assert "call close() again" in str(info.value)  # how to fix
    assert info.value.session is s and not s.closed  # still open and counted, nothing freed
    assert _live()["contexts"] == base["contexts"] + 1
    assert len(s.tokenize("still usable")) > 1
    s.close()  # the retry, nothing armed: freed
    assert s.closed and _live() == base


def test_close_timeout_argument_bounds_a_slow_free(tiny_model: Path) -> None:
    # the session's own timeout is none: close(timeout=) gives the free its own
    base = _live()
    s = bn.BitnetSession.create(tiny_model, timeout=math.inf)
    with fi.inject("free_context=delay(5000)"):
        t0 = time.perf_counter()
        with pytest.raises(errors.CleanupFailed, match="free_context timed out"):
            s.close(timeout=0.1)
        assert time.perf_counter() - t0 < 0.1 + LATE
        assert not s.closed
    with fi.inject("free_context=delay(50)"):
        s.close(timeout=10)  # a slow free within its budget frees
    assert s.closed and _live() == base


def test_close_with_no_deadline_refuses_to_hang(tiny_model: Path) -> None:
    # No cancel flag reaches a free (a finalizer's free has nobody left to
    # cancel it): with no deadline a hang is refused at once, never waited
    # for.  In a child the sweep kills if it hangs after all.
    def create_and_close() -> None:
        s = bn.BitnetSession.create(tiny_model, n_ctx=64, timeout=math.inf)
        try:
            s.close()
        except errors.CleanupFailed:
            s.close()  # the retry (the hang was for one hit only): nothing leaked
            raise

    report = fi.sweep("free_context", create_and_close, action="hang", fork=True, timeout=30.0, stop_on_failure=True)
    assert report.ok, report.describe()
    fired = [it for it in report.iterations if it.fired]
    assert len(fired) == 1
    assert fired[0].error == "CleanupFailed" and "refusing to hang in free_context" in fired[0].message, fired[0].line()
    assert fired[0].seconds < LATE
